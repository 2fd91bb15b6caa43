"""Exponential time decay, kept as a few accumulators per lead.

A contribution of ``p`` points anchored at time ``a`` with half-life ``h`` is worth
``p * 2 ** (-(t - a) / h)`` at time ``t``. Contributions sharing a half-life are summed in one
:class:`DecayGroup`: ``value`` is the group's worth at ``ref``, the newest anchor seen. Adding a
newer contribution moves ``ref`` forward (rescaling ``value``); an older one is added already
decayed to ``ref``. Exponents are therefore never positive, so nothing overflows however far
apart events are, and the result depends only on the set of contributions, not on their order
(up to float rounding, ~1e-15 relative).

Reading at ``t`` earlier than ``ref`` reads the group at ``ref``: contributions are never
extrapolated upwards. It does not happen in scoring: the engine never anchors a contribution
after the processing time it reads at (``scoring.engine``), and the worker scores an event
whose clock ran ahead at its receive time (``scoring.intake``). A ``ref`` in the future would
freeze the group there: every real contribution read decayed towards it, the future one never
decaying.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime

from scoring.state import DecayGroup

_SECONDS_PER_DAY = 86_400.0

__all__ = ["DecayGroup", "add", "factor", "newest", "newest_of", "read", "worth"]


def factor(later: datetime, earlier: datetime, half_life_days: float) -> float:
    """``2 ** (-(later - earlier) / half_life)``; 1.0 when ``later`` is not after ``earlier``."""
    seconds = (later - earlier).total_seconds()
    if seconds <= 0:
        return 1.0
    return math.pow(2.0, -seconds / (half_life_days * _SECONDS_PER_DAY))


def add(groups: list[DecayGroup], half_life_days: float, anchor: datetime, points: float) -> None:
    """Add ``points`` anchored at ``anchor`` to ``groups`` in place (kept sorted by half-life;
    zero points change nothing)."""
    if points == 0:
        return
    for group in groups:
        if group.half_life_days != half_life_days:
            continue
        if anchor > group.ref:
            group.value = group.value * factor(anchor, group.ref, half_life_days) + points
            group.ref = anchor
        else:
            group.value += points * factor(group.ref, anchor, half_life_days)
        return
    groups.append(DecayGroup(half_life_days, anchor, points))
    if len(groups) > 1:
        groups.sort(key=_half_life)


def _half_life(group: DecayGroup) -> float:
    return group.half_life_days


def read(groups: Iterable[DecayGroup], at: datetime) -> float:
    """The total worth of ``groups`` at ``at``."""
    return math.fsum(g.value * factor(at, g.ref, g.half_life_days) for g in groups)


def worth(
    points: float, anchor: datetime, half_life_days: float, at: datetime, ref: datetime
) -> float:
    """What one contribution adds to a reading at ``at`` of a group whose newest anchor is ref."""
    return points * factor(max(at, ref), anchor, half_life_days)


def newest_of(groups: Iterable[DecayGroup], half_life_days: float) -> datetime | None:
    """The newest anchor of the group with ``half_life_days`` (None when there is none)."""
    for group in groups:
        if group.half_life_days == half_life_days:
            return group.ref
    return None


def newest(groups: Iterable[DecayGroup]) -> datetime | None:
    """The newest anchor over ``groups`` (None when empty)."""
    found = None
    for g in groups:
        if found is None or g.ref > found:
            found = g.ref
    return found
