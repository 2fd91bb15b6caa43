"""The topics of the wire contract and the model each carries."""

from __future__ import annotations

from dataclasses import dataclass

from events.common import WireModel
from events.outcomes import OutcomeRecorded
from events.outputs import (
    DeadLetter,
    FollowupChanged,
    LeadMerged,
    NurtureEnrolled,
    ScoreChanged,
)
from events.profiles import ProfileUpdated
from events.tracking import BehaviourTracked

DEFAULT_PREFIX = "leadcycle."

#: Topic suffix -> (model, direction, description)
CONTRACT: dict[str, tuple[type[WireModel], str, str]] = {
    "events": (BehaviourTracked, "input", "behaviour from web trackers"),
    "profiles": (ProfileUpdated, "input", "CRM/form profile updates"),
    "outcomes": (OutcomeRecorded, "input", "inside-sales / CRM outcomes"),
    "score-changes": (ScoreChanged, "output", "per lead per batch: new scores + ledger entries"),
    "followups": (FollowupChanged, "output", "each new or changed follow-up"),
    "nurture": (NurtureEnrolled, "output", "nurture enrollments by recycle reason"),
    "lead-merges": (
        LeadMerged,
        "output",
        "two lead ids of one person merged into one",
    ),
    "dead-letters": (DeadLetter, "output", "rejected input, raw bytes prefix and the reason"),
}


@dataclass(frozen=True)
class TopicNames:
    """Full topic names under one prefix (``leadcycle.`` by default)."""

    prefix: str = DEFAULT_PREFIX

    def name(self, suffix: str) -> str:
        if suffix not in CONTRACT:
            raise KeyError(f"unknown topic {suffix!r}")
        return f"{self.prefix}{suffix}"

    @property
    def events(self) -> str:
        return self.name("events")

    @property
    def profiles(self) -> str:
        return self.name("profiles")

    @property
    def outcomes(self) -> str:
        return self.name("outcomes")

    @property
    def score_changes(self) -> str:
        return self.name("score-changes")

    @property
    def followups(self) -> str:
        return self.name("followups")

    @property
    def nurture(self) -> str:
        return self.name("nurture")

    @property
    def lead_merges(self) -> str:
        return self.name("lead-merges")

    @property
    def dead_letters(self) -> str:
        return self.name("dead-letters")

    def all(self) -> list[str]:
        return [self.name(s) for s in CONTRACT]

    def inputs(self) -> list[str]:
        return [self.name(s) for s, (_, d, _) in CONTRACT.items() if d == "input"]
