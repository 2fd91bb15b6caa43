"""What the engine decided: the new state and the value objects the worker publishes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from scoring.ledger import LedgerEntry
from scoring.rules import RecycleReason, RuleSet, Stage
from scoring.state import Activity, LeadState

WhyNow = Literal["new_mql", "re_engaged", "revisit_due", "sla_breach"]


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StageTransition(_Value):
    """A stage change, or an attempted one (``accepted=False``) and why it was refused."""

    from_stage: Stage
    to_stage: Stage
    at: datetime
    reason: str
    event_id: str | None = None
    accepted: bool = True


class RecycleDecision(_Value):
    """The lead was recycled: enroll it on ``track``."""

    lead_id: str
    reason: RecycleReason
    since: datetime
    revisit_on: date | None = None
    track: str


class FollowupContext(_Value):
    """What a rep needs to know before calling."""

    lead_id: str
    email: str | None = None
    company: str | None = None
    job_title: str | None = None
    grade: str
    fit_score: float
    behaviour_score: float
    source: str | None = None
    owner: str | None = None
    recent_activities: tuple[Activity, ...] = ()
    previous_lost_reason: RecycleReason | None = None
    unknown_bant: tuple[str, ...] = ()
    unknown_attributes: tuple[str, ...] = ()


class FollowupDecision(_Value):
    """Put the lead on the call list: why now, how urgent, due when, with what context."""

    lead_id: str
    why_now: WhyNow
    reason: str
    priority: float
    created_at: datetime
    due_at: datetime
    context: FollowupContext


@dataclass(slots=True)
class Decision:
    """The outcome of applying one event (or a sweep) to a lead's state.

    Attributes:
        state: the lead's state, changed in place (the fold's working object).
        ledger: one entry per rule that scored the event.
        transitions: stage changes, including refused ones (``accepted=False``).
        recycle: set when the lead was recycled: publish a nurture enrollment.
        followup: set when the lead should be (re)queued on the call list.
        close_followup: the lead's open follow-up should be closed (a sales touch was recorded,
            or the lead left the call list: recycled, disqualified).
        excluded: the lead is excluded for good: remove it from every list.
        duplicate: the event was applied before; nothing changed.
        changed: the state changed (else nothing needs writing).
        stage: the lead's stage right after this decision.
    """

    state: LeadState
    ledger: list[LedgerEntry] = field(default_factory=list)
    transitions: list[StageTransition] = field(default_factory=list)
    recycle: RecycleDecision | None = None
    followup: FollowupDecision | None = None
    close_followup: bool = False
    excluded: bool = False
    duplicate: bool = False
    changed: bool = False
    stage: str = ""
    #: Why the open follow-up closes, when not for the usual reasons (a merge).
    closed_reason: str | None = None

    def __post_init__(self) -> None:
        if not self.stage:
            self.stage = self.state.stage


class Draft:
    """A decision being built: the working state (changed in place) plus what was decided."""

    __slots__ = (
        "changed",
        "close_followup",
        "event_id",
        "followup",
        "ledger",
        "now",
        "recycle",
        "rules",
        "state",
        "transitions",
    )

    def __init__(
        self, state: LeadState, rules: RuleSet, now: datetime, *, event_id: str | None = None
    ) -> None:
        self.state = state
        self.rules = rules
        self.now = now
        self.event_id = event_id
        self.ledger: list[LedgerEntry] = []
        self.transitions: list[StageTransition] = []
        self.recycle: RecycleDecision | None = None
        self.followup: FollowupDecision | None = None
        self.close_followup = False
        self.changed = False

    def update(self, **changes: Any) -> None:
        """Set fields of the working state (noting whether any value changed)."""
        state = self.state
        for key, value in changes.items():
            if getattr(state, key) != value:
                setattr(state, key, value)
                self.changed = True

    def move(self, to: Stage, *, at: datetime, reason: str) -> None:
        """Move the lead to stage ``to`` (recorded as an accepted transition)."""
        self._record(to, at=at, reason=reason, accepted=True)
        self.update(stage=to, stage_since=at, stage_touched=False, sla_escalated=False)
        self.changed = True

    def refuse(self, to: Stage, *, at: datetime, reason: str) -> None:
        """Record a transition to ``to`` that was refused; the lead stays where it is."""
        self._record(to, at=at, reason=reason, accepted=False)

    def _record(self, to: Stage, *, at: datetime, reason: str, accepted: bool) -> None:
        self.transitions.append(
            StageTransition(
                from_stage=self.state.stage,
                to_stage=to,
                at=at,
                reason=reason,
                event_id=self.event_id,
                accepted=accepted,
            )
        )

    def finish(self) -> Decision:
        """The decision; a changed state is stamped with the rule-set version and ``now``.

        When nothing changed, the decision says so (``changed=False``) and carries nothing
        else, so the worker can skip writing the lead.
        """
        state = self.state
        if not self.changed and not (self.followup or self.recycle):
            return Decision(state=state, excluded=state.excluded)
        state.rules_version = self.rules.version
        state.updated_at = self.now
        return Decision(
            state=state,
            ledger=self.ledger,
            transitions=self.transitions,
            recycle=self.recycle,
            followup=None if state.excluded else self.followup,
            close_followup=self.close_followup,
            excluded=state.excluded,
            changed=True,
        )
