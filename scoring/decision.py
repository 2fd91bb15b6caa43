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


@dataclass(frozen=True)
class Decision:
    """The outcome of applying one event (or a sweep) to a lead's state.

    Attributes:
        state: the new state (the same object when nothing changed).
        ledger: one entry per rule that scored the event.
        transitions: stage changes, including refused ones (``accepted=False``).
        recycle: set when the lead was recycled: publish a nurture enrollment.
        followup: set when the lead should be (re)queued on the call list.
        close_followup: the lead's open follow-up should be closed (a sales touch was recorded,
            or the lead left the call list: recycled, disqualified).
        excluded: the lead is excluded for good: remove it from every list.
        duplicate: the event was applied before; nothing changed.
    """

    state: LeadState
    ledger: tuple[LedgerEntry, ...] = ()
    transitions: tuple[StageTransition, ...] = ()
    recycle: RecycleDecision | None = None
    followup: FollowupDecision | None = None
    close_followup: bool = False
    excluded: bool = False
    duplicate: bool = False


@dataclass
class Draft:
    """A decision being built: the working state plus everything decided so far.

    Changes to the state are collected by :meth:`update` and applied when the state is next
    read, so that a run of updates costs one copy of the (frozen) state, not one each.
    """

    original: LeadState
    rules: RuleSet
    now: datetime
    event_id: str | None = None
    ledger: list[LedgerEntry] = field(default_factory=list)
    transitions: list[StageTransition] = field(default_factory=list)
    recycle: RecycleDecision | None = None
    followup: FollowupDecision | None = None
    close_followup: bool = False
    _state: LeadState = field(init=False)
    _pending: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._state = self.original

    @property
    def state(self) -> LeadState:
        """The working state, with every update so far."""
        if self._pending:
            self._state = self._state.replaced(self._pending)
            self._pending = {}
        return self._state

    def update(self, **changes: Any) -> None:
        """Replace fields of the working state."""
        self._pending.update(changes)

    def move(self, to: Stage, *, at: datetime, reason: str) -> None:
        """Move the lead to stage ``to`` (recorded as an accepted transition)."""
        self._record(to, at=at, reason=reason, accepted=True)
        self.update(stage=to, stage_since=at, stage_touched=False, sla_escalated=False)

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
        """The decision, with the state stamped with the rule-set version and ``now``.

        When nothing changed, the original state object is returned untouched, so the worker can
        skip writing it.
        """
        state = self.state
        if _same(state, self.original) and not (self.followup or self.recycle):
            return Decision(state=self.original, excluded=self.original.excluded)
        if state.rules_version != self.rules.version or state.updated_at is not self.now:
            self.update(rules_version=self.rules.version, updated_at=self.now)
        return Decision(
            state=self.state,
            ledger=tuple(self.ledger),
            transitions=tuple(self.transitions),
            recycle=self.recycle,
            followup=None if self.state.excluded else self.followup,
            close_followup=self.close_followup,
            excluded=self.state.excluded,
        )


def _same(a: LeadState, b: LeadState) -> bool:
    """``a == b``, cheaply: the fields a draft did not touch are the very same objects, which a
    dict comparison skips without comparing them; ``applied`` differs after every applied
    event and is the quickest field to tell so."""
    return a is b or (a.applied == b.applied and vars(a) == vars(b))
