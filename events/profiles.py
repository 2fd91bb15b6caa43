"""``leadcycle.profiles``: profile updates from the CRM and from forms."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from events.common import Email, EventId, EventTime, InputModel, LeadId, RepId, ShortText

LeadSource = Literal[
    "demo_request",
    "webinar",
    "content",
    "exhibition",
    "referral",
    "ads",
    "organic",
    "partner",
]
LEAD_SOURCES: tuple[str, ...] = LeadSource.__args__  # type: ignore[attr-defined]

#: Fields of a profile a ``profile_updated`` event can set.
PROFILE_FIELDS = (
    "email",
    "company_name",
    "company_size",
    "industry",
    "job_title",
    "country",
    "source",
    "owner",
)


class ProfileUpdated(InputModel):
    """The CRM (or a form) changed what we know about a lead.

    A field that is absent leaves the stored value as it is; a field sent as ``null`` clears it.
    """

    event_id: EventId
    type: Literal["profile_updated"]
    lead_id: LeadId
    occurred_at: EventTime
    email: Email | None = None
    company_name: ShortText | None = None
    company_size: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    industry: Annotated[str, StringConstraints(max_length=128)] | None = None
    job_title: ShortText | None = None
    country: Annotated[str, StringConstraints(max_length=64)] | None = None
    source: LeadSource | None = None
    owner: RepId | None = None

    def changes(self) -> dict[str, object]:
        """The profile fields this event sets (present in the message), with their values."""
        return {
            name: getattr(self, name) for name in PROFILE_FIELDS if name in self.model_fields_set
        }


__all__ = ["LEAD_SOURCES", "PROFILE_FIELDS", "LeadSource", "ProfileUpdated"]
