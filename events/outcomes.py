"""``leadcycle.outcomes``: what inside sales (or the CRM) recorded about a lead."""

from __future__ import annotations

from datetime import date
from typing import Literal, Self

from pydantic import Field, model_validator

from events.common import EventId, EventTime, InputModel, LeadId, RepId

Outcome = Literal[
    "contacted",
    "no_answer",
    "appointment_set",
    "opportunity_opened",
    "won",
    "lost",
    "disqualified",
    "nurture",
]
OUTCOMES: tuple[str, ...] = Outcome.__args__  # type: ignore[attr-defined]

OutcomeReason = Literal[
    "uncontacted",
    "timing",
    "no_budget",
    "no_need",
    "competitor_chosen",
    "partner",
    "competitor",
    "student",
    "invalid",
]
#: Reasons a lead is lost or parked and later recycled.
RECYCLE_REASONS = ("uncontacted", "timing", "no_budget", "no_need", "competitor_chosen")
#: Reasons a lead leaves every list for good.
EXCLUSION_REASONS = ("partner", "competitor", "student", "invalid")


class Bant(InputModel):
    """Qualification facts: ``true``/``false`` when the rep learned them, ``null`` when unknown."""

    budget: bool | None = None
    authority: bool | None = None
    need: bool | None = None
    timeline: bool | None = None


class OutcomeRecorded(InputModel):
    """Inside sales recorded the result of a touch on a lead."""

    event_id: EventId
    type: Literal["sales_outcome"]
    lead_id: LeadId
    occurred_at: EventTime
    outcome: Outcome
    reason: OutcomeReason | None = None
    revisit_on: date | None = None
    rep: RepId | None = None
    bant: Bant = Field(default_factory=Bant)

    @model_validator(mode="after")
    def _reason_fits_outcome(self) -> Self:
        if self.outcome in ("lost", "nurture"):
            if self.reason is not None and self.reason not in RECYCLE_REASONS:
                raise ValueError(
                    f"reason {self.reason!r} does not fit outcome {self.outcome!r}; "
                    f"use one of {', '.join(RECYCLE_REASONS)}"
                )
        elif self.outcome == "disqualified":
            if self.reason is not None and self.reason not in EXCLUSION_REASONS:
                raise ValueError(
                    f"reason {self.reason!r} does not fit outcome 'disqualified'; "
                    f"use one of {', '.join(EXCLUSION_REASONS)}"
                )
        elif self.reason is not None:
            raise ValueError(f"reason must be null for outcome {self.outcome!r}")
        if self.revisit_on is not None and self.reason != "timing":
            raise ValueError("revisit_on is only allowed with reason 'timing'")
        return self


__all__ = [
    "EXCLUSION_REASONS",
    "OUTCOMES",
    "RECYCLE_REASONS",
    "Bant",
    "Outcome",
    "OutcomeReason",
    "OutcomeRecorded",
]
