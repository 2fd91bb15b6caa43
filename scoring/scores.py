"""Reading a lead's scores at a given time."""

from __future__ import annotations

from datetime import datetime

from scoring.decay import read
from scoring.rules import RuleSet
from scoring.state import LeadState


def raw_behaviour_score(state: LeadState, at: datetime) -> float:
    """The behaviour score at ``at`` before the floor (negative rules may take it below 0).

    The last reading is kept on the working state: one event's ledger, thresholds and stored
    scores read the same accumulators at the same ``now`` (the very same object: equal times
    in other zones are read afresh).
    """
    last = state.reading
    if last is not None and last[0] is at:
        return last[1]
    value = read(state.decay, at)
    state.reading = (at, value)
    return value


def behaviour_score(state: LeadState, at: datetime, rules: RuleSet) -> float:
    """The behaviour score at ``at``: decayed credits, floored at ``behaviour.floor`` if set.

    The floor is applied when reading, never while accumulating, so it cannot make the score
    depend on the order events arrive in.
    """
    raw = raw_behaviour_score(state, at)
    floor = rules.behaviour.floor
    return raw if floor is None else max(floor, raw)


def fit_score(state: LeadState) -> float:
    """The attribute (fit) score."""
    return state.fit_score


def priority(state: LeadState, at: datetime, rules: RuleSet) -> float:
    """``fit_weight * fit + behaviour_weight * behaviour`` at ``at``."""
    return weigh(state.fit_score, behaviour_score(state, at, rules), rules)


def weigh(fit: float, behaviour: float, rules: RuleSet) -> float:
    """The priority of a fit score and a (floored) behaviour score already read."""
    weights = rules.priority
    return weights.fit_weight * fit + weights.behaviour_weight * behaviour
