"""The score ledger: one entry per rule applied to an event, enough to rebuild every score.

Fit entries carry the change of fit points (a band replaced by another yields a removal and an
addition). Behaviour entries carry the points credited after caps, the anchor they decay from
and the half-life; :func:`score_from_ledger` sums them with the same decay arithmetic the engine
uses, so a lead's ledger reproduces its scores (to float rounding, ~1e-12).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Literal, NamedTuple

from scoring.decay import factor
from scoring.rules import RuleSet


class LedgerEntry(NamedTuple):
    """Why a score changed: one rule, one event, one lead."""

    #: ``<lead id>:<event id>:<rule id>``: unique and stable across replays and stitching.
    entry_id: str
    lead_id: str
    event_id: str
    rule_id: str
    rules_version: str
    kind: Literal["fit", "behaviour"]
    occurred_at: datetime
    #: Points the rule gives (for a fit removal: minus the points it used to give).
    raw_points: float
    #: Points credited after caps (behaviour) or the change in fit points (fit).
    points: float
    #: ``points`` decayed to the decision's ``now``.
    decayed_points: float
    #: The fit score, or the raw (unfloored) behaviour score at ``now``, around this entry.
    score_before: float
    score_after: float
    #: Behaviour only: the time ``points`` decay from (event time, or cap window start).
    anchor: datetime | None = None
    half_life_days: float | None = None


def entry_id(lead_id: str, event_id: str, rule_id: str) -> str:
    """The ledger entry id of ``rule_id`` applied to ``event_id`` for ``lead_id``."""
    return f"{lead_id}:{event_id}:{rule_id}"


def fit_entry(
    lead_id: str,
    event_id: str,
    rule_id: str,
    rules_version: str,
    *,
    at: datetime,
    raw: float,
    delta: float,
    before: float,
) -> LedgerEntry:
    """The entry of a fit rule whose contribution changed by ``delta`` (fit does not decay)."""
    return LedgerEntry(
        entry_id=entry_id(lead_id, event_id, rule_id),
        lead_id=lead_id,
        event_id=event_id,
        rule_id=rule_id,
        rules_version=rules_version,
        kind="fit",
        occurred_at=at,
        raw_points=raw,
        points=delta,
        decayed_points=delta,
        score_before=before,
        score_after=before + delta,
    )


def score_from_ledger(
    entries: Iterable[LedgerEntry], *, at: datetime, rules: RuleSet | None = None
) -> tuple[float, float]:
    """Rebuild ``(fit, behaviour)`` from a lead's ledger, behaviour decayed to ``at``.

    Args:
        entries: every ledger entry of one lead, in any order.
        at: the time to read behaviour at.
        rules: when given, its ``behaviour.floor`` is applied, as ``behaviour_score`` does;
            without it the raw behaviour score is returned.
    """
    fit: list[float] = []
    groups: dict[float, list[tuple[float, datetime]]] = defaultdict(list)
    for entry in entries:
        if entry.kind == "fit":
            fit.append(entry.points)
        elif entry.points != 0 and entry.anchor is not None and entry.half_life_days:
            groups[entry.half_life_days].append((entry.points, entry.anchor))
    parts = []
    for half_life, items in groups.items():
        ref = max(anchor for _, anchor in items)
        at_ref = math.fsum(p * factor(ref, anchor, half_life) for p, anchor in items)
        parts.append(at_ref * factor(at, ref, half_life))
    behaviour = math.fsum(parts)
    if rules is not None and rules.behaviour.floor is not None:
        behaviour = max(rules.behaviour.floor, behaviour)
    return math.fsum(fit), behaviour
