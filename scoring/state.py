"""A lead's scoring state: a plain mutable object while a batch works on it, compact JSON at rest.

The fold works on one :class:`LeadState` per lead and changes it in place (slotted dataclasses,
no validation, no copies per event); pydantic stays at the wire, in ``events/``. What is stored
is what scoring needs and nothing whose size grows with the lead's history: a handful of decay
accumulators, the cap windows still worth remembering (pruned), the newest few activities, at
most :data:`MAX_LINKED_IDS` linked visitor ids and a *count* of applied events. Which events
were applied is the event log's business: an event id is logged once per source, and only a
newly logged event reaches the fold (docs/architecture.md).

:func:`encode_state` and :func:`decode_state` are the stored form (JSON text, format ``"v": 2``; the
field names stay the column-like top-level keys that SQL reads, e.g. ``state->'recycle'``).
:func:`decode_state` also reads the first format (pydantic's dump, with an ``applied`` digest list).
"""

from __future__ import annotations

import base64
import copy
import hashlib
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import Any, Literal, NamedTuple

from pydantic_core import from_json, to_json

from events.outcomes import Bant
from scoring.rules import ExclusionReason, RecycleReason, Stage

Grade = Literal["A", "B", "C", "D"]
Attribute = Literal["company_size", "industry", "job_title", "country", "source"]
ATTRIBUTES: tuple[Attribute, ...] = Attribute.__args__  # type: ignore[attr-defined]
ANON_PREFIX = "anon:"
#: How many anonymous ids a lead remembers as linked.
MAX_LINKED_IDS = 20
#: The stored format :func:`encode` writes.
FORMAT = 2


@dataclass(slots=True)
class Profile:
    """What we know about the lead (None: unknown)."""

    email: str | None = None
    company_name: str | None = None
    company_size: int | None = None
    industry: str | None = None
    job_title: str | None = None
    country: str | None = None
    source: str | None = None
    owner: str | None = None

    def merge(self, changes: dict[str, Any]) -> bool:
        """Set the fields ``changes`` names; whether any value changed."""
        changed = False
        for key, value in changes.items():
            if getattr(self, key) != value:
                setattr(self, key, value)
                changed = True
        return changed

    def fit_key(self) -> tuple[Any, ...]:
        """What fit scoring reads (a memo key: a mutable profile is not hashable)."""
        return (self.company_size, self.industry, self.job_title, self.country, self.source)

    def exclusion_key(self) -> tuple[str | None, str | None, str | None]:
        """What the exclusion rules read."""
        return (self.email, self.job_title, self.company_name)

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _PROFILE_FIELDS}


_PROFILE_FIELDS = tuple(f.name for f in fields(Profile))


class FitPart(NamedTuple):
    """The fit points of one attribute: the rule that matched, or why none did (immutable:
    parts are memoised per rule set and shared by every lead with the same value)."""

    attribute: Attribute
    rule_id: str | None = None
    points: float = 0.0
    known: bool = False


class Activity(NamedTuple):
    """One recent behaviour event, for the rep's context."""

    event_id: str
    type: str
    at: datetime
    label: str | None = None
    points: float = 0.0


@dataclass(slots=True)
class DecayGroup:
    """All contributions with one half-life: worth ``value`` at ``ref`` (scoring.decay)."""

    half_life_days: float
    ref: datetime
    value: float


@dataclass(slots=True)
class RecycleInfo:
    """Why and since when the lead is (or last was) recycled."""

    reason: RecycleReason
    since: datetime
    revisit_on: date | None = None
    track: str = ""
    #: Behaviour credited by events that occurred at or after ``since`` (decaying).
    gained: list[DecayGroup] = field(default_factory=list)


@dataclass(slots=True)
class LeadState:
    """Everything the scoring core knows about one lead (or one anonymous visitor)."""

    lead_id: str
    created_at: datetime
    updated_at: datetime
    stage: Stage
    stage_since: datetime
    anonymous: bool = False
    rules_version: str | None = None
    profile: Profile = field(default_factory=Profile)
    #: A sales touch was recorded since the lead entered ``stage`` (stops the SLA clock).
    stage_touched: bool = False
    sla_escalated: bool = False
    fit: tuple[FitPart, ...] = ()
    fit_score: float = 0.0
    fit_grade: Grade = "D"
    #: Decay accumulators, one per half-life, sorted by half-life.
    decay: list[DecayGroup] = field(default_factory=list)
    #: ``"<rule id>@<window start date>"`` -> [raw points summed, points credited].
    caps: dict[str, list[float]] = field(default_factory=dict)
    #: How many events were applied (which ones: the event log).
    events: int = 0
    bant: Bant = field(default_factory=Bant)
    recycle: RecycleInfo | None = None
    last_touch_at: datetime | None = None
    last_requeue_at: datetime | None = None
    excluded: bool = False
    exclusion_reason: ExclusionReason | None = None
    #: The newest activities, newest first.
    activities: list[Activity] = field(default_factory=list)
    linked_anonymous_ids: list[str] = field(default_factory=list)
    #: Working hint, not stored: the earliest time a kept cap window expires (None: unknown,
    #: scan them). ``scoring.behaviour.prune_caps`` keeps it.
    caps_expiry: datetime | None = field(default=None, compare=False, repr=False)
    #: Working hint, not stored: the raw behaviour score read at a time (``scoring.scores``);
    #: whoever changes ``decay`` clears it.
    reading: tuple[datetime, float] | None = field(default=None, compare=False, repr=False)

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

    def copy(self) -> LeadState:
        """An independent copy (the fold changes states in place)."""
        return copy.deepcopy(self)

    def unknown_bant(self) -> list[str]:
        """BANT items not known yet."""
        b = self.bant
        return [k for k in _BANT if getattr(b, k) is None]

    def unknown_attributes(self) -> list[str]:
        """Profile attributes that scored nothing because they are missing."""
        known = {p.attribute for p in self.fit if p.known}
        return [a for a in ATTRIBUTES if a not in known]


_BANT = ("budget", "authority", "need", "timeline")


# -- the stored form ------------------------------------------------------------------------


def encode_state(state: LeadState) -> str:
    """The stored form of ``state``: compact JSON text; defaults are left out."""
    s = state
    doc: dict[str, Any] = {
        "v": FORMAT,
        "lead_id": s.lead_id,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "stage": s.stage,
        "stage_since": s.stage_since,
        "events": s.events,
        "fit_score": s.fit_score,
        "fit_grade": s.fit_grade,
    }
    if s.anonymous:
        doc["anonymous"] = True
    if s.rules_version is not None:
        doc["rules_version"] = s.rules_version
    profile = {k: v for k, v in s.profile.as_dict().items() if v is not None}
    if profile:
        doc["profile"] = profile
    if s.stage_touched:
        doc["stage_touched"] = True
    if s.sla_escalated:
        doc["sla_escalated"] = True
    if s.fit:
        doc["fit"] = s.fit  # named tuples: serialised as arrays, in field order
    if s.decay:
        doc["decay"] = _groups_out(s.decay)
    if s.caps:
        doc["caps"] = s.caps
    bant = {k: v for k in _BANT if (v := getattr(s.bant, k)) is not None}
    if bant:
        doc["bant"] = bant
    if s.recycle is not None:
        r = s.recycle
        doc["recycle"] = {
            "reason": r.reason,
            "since": r.since,
            "revisit_on": r.revisit_on,
            "track": r.track,
            "gained": _groups_out(r.gained),
        }
    if s.last_touch_at is not None:
        doc["last_touch_at"] = s.last_touch_at
    if s.last_requeue_at is not None:
        doc["last_requeue_at"] = s.last_requeue_at
    if s.excluded:
        doc["excluded"] = True
        doc["exclusion_reason"] = s.exclusion_reason
    if s.activities:
        doc["activities"] = s.activities
    if s.linked_anonymous_ids:
        doc["linked_anonymous_ids"] = s.linked_anonymous_ids
    return to_json(doc).decode()


def decode_state(text: str | bytes) -> LeadState:
    """A state from its stored form (either format)."""
    doc = from_json(text)
    if doc.get("v") != FORMAT:
        return _decode_v1(doc)
    dt = datetime.fromisoformat
    recycle = doc.get("recycle")
    return LeadState(
        lead_id=doc["lead_id"],
        anonymous=doc.get("anonymous", False),
        created_at=dt(doc["created_at"]),
        updated_at=dt(doc["updated_at"]),
        rules_version=doc.get("rules_version"),
        profile=Profile(**doc["profile"]) if "profile" in doc else Profile(),
        stage=doc["stage"],
        stage_since=dt(doc["stage_since"]),
        stage_touched=doc.get("stage_touched", False),
        sla_escalated=doc.get("sla_escalated", False),
        fit=tuple(FitPart(*p) for p in doc.get("fit", ())),
        fit_score=doc["fit_score"],
        fit_grade=doc["fit_grade"],
        decay=_groups_in(doc.get("decay", ())),
        caps=doc.get("caps", {}),
        events=doc["events"],
        bant=Bant(**doc["bant"]) if "bant" in doc else Bant(),
        recycle=None
        if recycle is None
        else RecycleInfo(
            reason=recycle["reason"],
            since=dt(recycle["since"]),
            revisit_on=date.fromisoformat(recycle["revisit_on"])
            if recycle.get("revisit_on")
            else None,
            track=recycle["track"],
            gained=_groups_in(recycle.get("gained", ())),
        ),
        last_touch_at=_dt_or_none(doc.get("last_touch_at")),
        last_requeue_at=_dt_or_none(doc.get("last_requeue_at")),
        excluded=doc.get("excluded", False),
        exclusion_reason=doc.get("exclusion_reason"),
        activities=[Activity(a[0], a[1], dt(a[2]), a[3], a[4]) for a in doc.get("activities", ())],
        linked_anonymous_ids=doc.get("linked_anonymous_ids", []),
    )


def _groups_out(groups: list[DecayGroup]) -> list[list[Any]]:
    return [[g.half_life_days, g.ref, g.value] for g in groups]


def _groups_in(items: Any) -> list[DecayGroup]:
    return [DecayGroup(float(h), datetime.fromisoformat(r), float(v)) for h, r, v in items]


def _dt_or_none(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _decode_v1(doc: dict[str, Any]) -> LeadState:
    """The first stored format: pydantic's JSON of the frozen model, with every applied
    event's digest in ``applied`` (now only their number is kept)."""
    v2 = {k: v for k, v in doc.items() if k not in ("applied", "fit", "decay", "activities")}
    v2["v"] = FORMAT
    v2["events"] = len(doc.get("applied", ()))
    v2["fit"] = [
        [p["attribute"], p.get("rule_id"), p.get("points", 0.0), p.get("known", False)]
        for p in doc.get("fit", ())
    ]
    v2["decay"] = [[g["half_life_days"], g["ref"], g["value"]] for g in doc.get("decay", ())]
    v2["caps"] = {k: list(v) for k, v in doc.get("caps", {}).items()}
    v2["activities"] = [
        [a["event_id"], a["type"], a["at"], a.get("label"), a.get("points", 0.0)]
        for a in doc.get("activities", ())
    ]
    v2["profile"] = {k: v for k, v in doc.get("profile", {}).items() if v is not None}
    v2["bant"] = {k: v for k, v in doc.get("bant", {}).items() if v is not None}
    recycle = doc.get("recycle")
    if recycle is not None:
        v2["recycle"] = {
            **recycle,
            "gained": [
                [g["half_life_days"], g["ref"], g["value"]] for g in recycle.get("gained", ())
            ],
        }
    return decode_state(to_json(v2))


def legacy_event_key(event_id: str) -> str:
    """The digest the first stored format listed in ``applied`` for the event ``event_id``
    (12 characters of BLAKE2b): how ``leadcycle replay`` still finds which lead an email-only
    event of that time was applied to."""
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=9).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")
