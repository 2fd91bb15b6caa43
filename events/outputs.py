"""Messages leadcycle publishes. Consumers get them at least once and dedupe on ``message_id``."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import Field

from events.common import WireModel


class DeadLetter(WireModel):
    """An input message that could not be accepted, with why and where it came from."""

    message_id: str = Field(description="source topic, partition and offset: unique per input")
    source_topic: str
    partition: int
    offset: int
    received_at: datetime
    error: str = Field(description="what was wrong, naming the field (`field: message; ...`)")
    reason: Literal[
        "invalid_json", "invalid_utf8", "schema", "unknown_type", "too_large", "empty"
    ]
    payload_size: int = Field(description="size of the original message value in bytes")
    payload_prefix: str = Field(description="the first bytes of the value, base64 (at most 4 KiB)")


class ScoreChanged(WireModel):
    """One score ledger entry: one rule applied to one event for one lead."""

    message_id: str = Field(description="the ledger entry id (event id + rule id)")
    lead_id: str
    event_id: str
    rule_id: str
    rules_version: str
    kind: Literal["fit", "behaviour"]
    occurred_at: datetime
    raw_points: float
    points: float = Field(description="points credited at event time (after caps)")
    fit_score: float = Field(description="the lead's fit score after the batch")
    behaviour_score: float = Field(description="behaviour score after the batch, decayed to now")
    priority: float
    stage: str


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
