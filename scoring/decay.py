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
from operator import attrgetter

from pydantic import BaseModel, ConfigDict

_SECONDS_PER_DAY = 86_400.0
_HALF_LIFE = attrgetter("half_life_days")


class DecayGroup(BaseModel):
    """All contributions with one half-life: worth ``value`` at ``ref``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    half_life_days: float
    ref: datetime
    value: float


def factor(later: datetime, earlier: datetime, half_life_days: float) -> float:
    """``2 ** (-(later - earlier) / half_life)``; 1.0 when ``later`` is not after ``earlier``."""
    seconds = (later - earlier).total_seconds()
    if seconds <= 0:
        return 1.0
    return math.pow(2.0, -seconds / (half_life_days * _SECONDS_PER_DAY))


def add(
    groups: tuple[DecayGroup, ...], half_life_days: float, anchor: datetime, points: float
) -> tuple[DecayGroup, ...]:
    """``groups`` with ``points`` anchored at ``anchor`` added (zero points change nothing)."""
    if points == 0:
        return groups
    out = []
    found = False
    for group in groups:
        if group.half_life_days != half_life_days:
            out.append(group)
            continue
        found = True
        if anchor > group.ref:
            value = group.value * factor(anchor, group.ref, half_life_days) + points
            out.append(DecayGroup(half_life_days=half_life_days, ref=anchor, value=value))
        else:
            value = group.value + points * factor(group.ref, anchor, half_life_days)
            out.append(DecayGroup(half_life_days=half_life_days, ref=group.ref, value=value))
    if not found:
        out.append(DecayGroup(half_life_days=half_life_days, ref=anchor, value=points))
    out.sort(key=_HALF_LIFE)
    return tuple(out)


def read(groups: Iterable[DecayGroup], at: datetime) -> float:
    """The total worth of ``groups`` at ``at``.

    Readings of tuples are remembered by the identity of the tuple and of ``at``: one event
    reads the same groups at the same ``now`` several times (its ledger entries, the MQL
    check, the worker's stored scores), and a lead's next event in the same batch starts from
    them again. Both are immutable and kept referenced while remembered, so an id is never
    reused; ``at`` must be the very same object, as equal datetimes in different time zones
    may subtract differently.
    """
    if not isinstance(groups, tuple):
        return _read(groups, at)
    key = id(groups)
    last = _READINGS.get(key)
    if last is not None and last[0] is groups and last[1] is at:
        return last[2]
    value = _read(groups, at)
    if len(_READINGS) >= _MAX_READINGS:
        _READINGS.clear()
    _READINGS[key] = (groups, at, value)
    return value


def _read(groups: Iterable[DecayGroup], at: datetime) -> float:
    return math.fsum(g.value * factor(at, g.ref, g.half_life_days) for g in groups)


_MAX_READINGS = 10_000
_READINGS: dict[int, tuple[tuple[DecayGroup, ...], datetime, float]] = {}


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
    return max((g.ref for g in groups), default=None)
