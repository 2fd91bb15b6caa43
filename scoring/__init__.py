"""The pure scoring core: rules as data, lead state, and the decisions the workers publish.

No I/O here (the rule loader aside): time is always passed in as ``now``. See docs/scoring.md.
"""

from scoring.assignment import assign
from scoring.calendar import due_at
from scoring.decision import (
    Decision,
    FollowupContext,
    FollowupDecision,
    RecycleDecision,
    StageTransition,
)
from scoring.engine import (
    apply,
    behaviour_score,
    fit_score,
    priority,
    raw_behaviour_score,
    stitch,
    sweep,
)
from scoring.errors import RulesError, ScoringError
from scoring.ledger import LedgerEntry, score_from_ledger
from scoring.rules import RuleSet, load_rules, parse_rules
from scoring.state import LeadState

__all__ = [
    "Decision",
    "FollowupContext",
    "FollowupDecision",
    "LeadState",
    "LedgerEntry",
    "RecycleDecision",
    "RuleSet",
    "RulesError",
    "ScoringError",
    "StageTransition",
    "apply",
    "assign",
    "behaviour_score",
    "due_at",
    "fit_score",
    "load_rules",
    "parse_rules",
    "priority",
    "raw_behaviour_score",
    "score_from_ledger",
    "stitch",
    "sweep",
]
