"""A lead's scoring state: a frozen pydantic model the worker stores as JSONB, one row per lead.

It is serialised for every touched lead in every batch, so it is kept small: scores are held as
a handful of decay accumulators, not as event lists; cap buckets are pruned once their
contribution is negligible; event ids are kept as 12-character digests.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict

from events.outcomes import Bant
from scoring.decay import DecayGroup
from scoring.rules import ExclusionReason, RecycleReason, Stage

Grade = Literal["A", "B", "C", "D"]
Attribute = Literal["company_size", "industry", "job_title", "country", "source"]
ATTRIBUTES: tuple[Attribute, ...] = Attribute.__args__  # type: ignore[attr-defined]
ANON_PREFIX = "anon:"
#: How many anonymous ids a lead remembers as linked.
MAX_LINKED_IDS = 20


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def replaced(self, changes: Mapping[str, Any]) -> Self:
        """A copy with ``changes``: ``model_copy(update=changes)`` without its generic handling
        of extra and private attributes, which these models do not have (the engine copies a
        lead's state once or twice per event). Like ``model_copy``, it does not validate."""
        copied = self.__class__.__new__(self.__class__)
        object.__setattr__(copied, "__dict__", {**self.__dict__, **changes})
        object.__setattr__(
            copied, "__pydantic_fields_set__", self.__pydantic_fields_set__ | changes.keys()
        )
        object.__setattr__(copied, "__pydantic_extra__", None)
        object.__setattr__(copied, "__pydantic_private__", None)
        return copied


class Profile(Frozen):
    """What we know about the lead (None: unknown)."""

    email: str | None = None
    company_name: str | None = None
    company_size: int | None = None
    industry: str | None = None
    job_title: str | None = None
    country: str | None = None
    source: str | None = None
    owner: str | None = None


class FitPart(Frozen):
    """The fit points of one attribute: the rule that matched, or why none did."""

    attribute: Attribute
    rule_id: str | None = None
    points: float = 0.0
    known: bool = False


class Activity(Frozen):
    """One recent behaviour event, for the rep's context."""

    event_id: str
    type: str
    at: datetime
    label: str | None = None
    points: float = 0.0


class RecycleInfo(Frozen):
    """Why and since when the lead is (or last was) recycled."""

    reason: RecycleReason
    since: datetime
    revisit_on: date | None = None
    track: str
    #: Behaviour credited by events that occurred at or after ``since`` (decaying).
    gained: tuple[DecayGroup, ...] = ()


class LeadState(Frozen):
    """Everything the scoring core knows about one lead (or one anonymous visitor)."""

    lead_id: str
    anonymous: bool = False
    created_at: datetime
    updated_at: datetime
    rules_version: str | None = None
    profile: Profile = Profile()
    stage: Stage
    stage_since: datetime
    #: A sales touch was recorded since the lead entered ``stage`` (stops the SLA clock).
    stage_touched: bool = False
    sla_escalated: bool = False
    fit: tuple[FitPart, ...] = ()
    fit_score: float = 0.0
    fit_grade: Grade = "D"
    decay: tuple[DecayGroup, ...] = ()
    #: ``"<rule id>@<window start date>"`` -> (raw points summed, points credited).
    caps: dict[str, tuple[float, float]] = {}
    #: Sorted digests of every event applied (idempotency), by the id the worker knows it by:
    #: ``<source>|<event_id>`` (``scoring.intake``; bare ids for events logged before that).
    applied: tuple[str, ...] = ()
    bant: Bant = Bant()
    recycle: RecycleInfo | None = None
    last_touch_at: datetime | None = None
    last_requeue_at: datetime | None = None
    excluded: bool = False
    exclusion_reason: ExclusionReason | None = None
    activities: tuple[Activity, ...] = ()
    linked_anonymous_ids: tuple[str, ...] = ()

    @classmethod
    def new(cls, lead_id: str, *, now: datetime) -> LeadState:
        """A fresh state: stage ``awareness`` for ``anon:<id>`` subjects, else ``lead``."""
        anonymous = lead_id.startswith(ANON_PREFIX)
        return cls(
            lead_id=lead_id,
            anonymous=anonymous,
            created_at=now,
            updated_at=now,
            stage="awareness" if anonymous else "lead",
            stage_since=now,
        )

    def has_applied(self, event_id: str) -> bool:
        """Whether the event ``event_id`` was already applied to this state."""
        return with_key(self.applied, event_key(event_id)) is None

    def with_applied(self, event_id: str) -> tuple[str, ...]:
        """``applied`` with ``event_id`` added, kept sorted."""
        return with_key(self.applied, event_key(event_id)) or self.applied

    def unknown_bant(self) -> list[str]:
        """BANT items not known yet."""
        return [k for k, v in self.bant.model_dump().items() if v is None]

    def unknown_attributes(self) -> list[str]:
        """Profile attributes that scored nothing because they are missing."""
        known = {p.attribute for p in self.fit if p.known}
        return [a for a in ATTRIBUTES if a not in known]


def with_key(applied: tuple[str, ...], key: str) -> tuple[str, ...] | None:
    """Sorted ``applied`` with the digest ``key`` inserted, or None when it is already there.

    One binary search answers both "was it applied?" and "where does it go?".
    """
    i = bisect.bisect_left(applied, key)
    if i < len(applied) and applied[i] == key:
        return None
    return (*applied[:i], key, *applied[i:])


def event_key(event_id: str) -> str:
    """A 12-character digest of ``event_id`` (72 bits: collisions within one lead are moot).

    The worker passes the source-qualified id (``scoring.intake.qualify``), so one producer's
    id never shares a digest with the same id from another topic or collector site.
    """
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=9).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")
