"""Messages leadcycle publishes. Consumers get them at least once and dedupe on ``message_id``."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import Field

from events.common import RejectReason, WireModel


class DeadLetter(WireModel):
    """An input message that could not be accepted, with why and where it came from."""

    message_id: str = Field(description="source topic:partition:offset:sha256-prefix of the value")
    source_topic: str
    partition: int
    offset: int
    received_at: datetime
    error: str = Field(description="what was wrong, naming the field (`field: message; ...`)")
    reason: RejectReason
    payload_size: int = Field(description="size of the original message value in bytes")
    payload_prefix: str = Field(description="the first bytes of the value, base64 (at most 4 KiB)")


class ScoreEntry(WireModel):
    """One ledger entry: one rule applied to one event."""

    entry_id: str
    event_id: str
    rule_id: str
    kind: Literal["fit", "behaviour"]
    occurred_at: datetime
    raw_points: float
    points: float = Field(description="points credited (after caps), at event time")


class ScoreChanged(WireModel):
    """A lead's scores after one batch changed them, with the ledger entries that did it."""

    message_id: str = Field(description="lead id + digest of the entry ids: stable on re-send")
    lead_id: str
    rules_version: str
    scored_at: datetime = Field(description="the time behaviour and priority are decayed to")
    fit_score: float
    grade: str
    behaviour_score: float
    priority: float
    stage: str
    entries: list[ScoreEntry]


class FollowupChanged(WireModel):
    """A call-list entry was created or changed."""

    message_id: str = Field(description="follow-up id + version")
    followup_id: str
    version: int
    lead_id: str
    status: Literal["open", "done", "expired"]
    why_now: str
    priority: float
    due_at: datetime
    assignee: str | None
    sla_breached: bool
    context: dict[str, object]


class NurtureEnrolled(WireModel):
    """A recycled lead was put on a nurture track."""

    message_id: str = Field(description="lead id + recycle time")
    lead_id: str
    reason: str
    track: str
    recycled_at: datetime
    revisit_on: date | None


class LeadMerged(WireModel):
    """Two lead ids turned out to be one person: ``absorbed`` now lives on as ``survivor``.

    Its history (ledger, stage history, follow-ups, linked visitors) moved to the survivor;
    events that still name the absorbed id are applied to the survivor.
    """

    message_id: str = Field(description="absorbed lead id + survivor lead id")
    survivor: str = Field(description="the lead that lives on (a CRM lead id survives)")
    absorbed: str = Field(description="the lead merged into it (e.g. email:<address>)")
    email: str | None = Field(description="the normalised email both leads share")
    merged_at: datetime = Field(description="when the worker merged them")
    event_id: str = Field(description="the event that revealed the match (source|event id)")
