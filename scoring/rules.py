"""The rule set: scoring rules as data (TOML), validated by pydantic.

Every model forbids unknown keys, so a misspelt key fails at load with a message that names it
(``behaviour.rules[2].pointz: Extra inputs are not permitted``). docs/scoring.md documents
every option; ``rules/default.toml`` is the sample the demo uses.
"""

from __future__ import annotations

import re
import tomllib
from datetime import date, time
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from events.outcomes import Outcome
from events.profiles import LeadSource
from events.tracking import BehaviourType
from scoring.errors import RulesError

Stage = Literal[
    "awareness",
    "lead",
    "nurturing",
    "mql",
    "appointment",
    "opportunity",
    "won",
    "customer",
    "recycled",
    "disqualified",
]
RecycleReason = Literal["uncontacted", "timing", "no_budget", "no_need", "competitor_chosen"]
ExclusionReason = Literal["partner", "competitor", "student", "invalid"]
BantItem = Literal["budget", "authority", "need", "timeline"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = Weekday.__args__  # type: ignore[attr-defined]

RuleId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Points = Annotated[float, Field(ge=-1000, le=1000, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)]
Keywords = Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(min_length=1)]


class Strict(BaseModel):
    """Base of every rule model: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- calendar ---------------------------------------------------------------------------------


class Calendar(Strict):
    """Business time: the time zone, opening hours, working weekdays and holidays."""

    timezone: str = "UTC"
    business_start: time = time(9, 0)
    business_end: time = time(18, 0)
    weekdays: list[Weekday] = Field(default=["mon", "tue", "wed", "thu", "fri"], min_length=1)
    holidays: list[date] = []

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _hours_ordered(self) -> Self:
        if self.business_end <= self.business_start:
            raise ValueError("calendar.business_end must be after calendar.business_start")
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The calendar's time zone."""
        return ZoneInfo(self.timezone)


# --- fit --------------------------------------------------------------------------------------


class SizeBand(Strict):
    """Company size band: ``min`` <= employees < ``max`` (``max`` absent: no upper bound)."""

    id: RuleId
    min: int = Field(default=0, ge=0)
    max: int | None = Field(default=None, gt=0)
    points: Points

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max is not None and self.max <= self.min:
            raise ValueError(f"band {self.id!r}: max must be greater than min")
        return self


class KeywordRule(Strict):
    """Matches when a keyword occurs in the attribute (word match for ASCII, substring for CJK)."""

    id: RuleId
    keywords: Keywords
    points: Points


class ValueRule(Strict):
    """Matches when the attribute equals one of ``values`` (case- and width-insensitive)."""

    id: RuleId
    values: Keywords
    points: Points


class SourceRule(Strict):
    """Matches when the lead source is one of ``sources``."""

    id: RuleId
    sources: list[LeadSource] = Field(min_length=1)
    points: Points


class Grades(Strict):
    """Fit grade cut-offs: fit >= ``a`` is A, >= ``b`` is B, >= ``c`` is C, else D."""

    a: float
    b: float
    c: float

    @model_validator(mode="after")
    def _descending(self) -> Self:
        if not self.a > self.b > self.c:
            raise ValueError("fit.grades must satisfy a > b > c")
        return self


class Fit(Strict):
    """Attribute (fit) rules. In each list the first matching rule wins."""

    company_size: list[SizeBand] = []
    industry: list[KeywordRule] = []
    job_title: list[KeywordRule] = []
    country: list[ValueRule] = []
    source: list[SourceRule] = []
    grades: Grades


# --- behaviour --------------------------------------------------------------------------------


class BehaviourRule(Strict):
    """Points for behaviour events of one type, optionally filtered by properties and capped."""

    id: RuleId
    event: BehaviourType
    points: Points
    url_contains: list[Annotated[str, Field(min_length=1)]] = []
    url_regex: str | None = None
    content_ids: list[str] = []
    form_ids: list[str] = []
    campaigns: list[str] = []
    cap: Positive | None = None
    cap_window_days: int = Field(default=1, ge=1, le=366)
    half_life_days: Positive | None = None

    @field_validator("url_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return value


class Behaviour(Strict):
    """Engagement rules, time decay and the reading floor."""

    half_life_days: Positive = 30.0
    half_life_days_by_event: dict[BehaviourType, Positive] = {}
    floor: float | None = 0.0
    forget_after_half_lives: float = Field(default=20.0, ge=5, le=60)
    rules: list[BehaviourRule] = []

    def half_life(self, rule: BehaviourRule) -> float:
        """Half-life in days for ``rule``: its own, else its event type's, else the global one."""
        if rule.half_life_days is not None:
            return rule.half_life_days
        return self.half_life_days_by_event.get(rule.event, self.half_life_days)


# --- priority, stages, gates, exclusion -------------------------------------------------------


class Priority(Strict):
    """priority = fit_weight * fit + behaviour_weight * behaviour."""

    fit_weight: float = Field(default=0.6, ge=0)
    behaviour_weight: float = Field(default=0.4, ge=0)


class Mql(Strict):
    """A known lead becomes MQL when priority >= threshold and behaviour >= min_behaviour."""

    threshold: float
    min_behaviour: float = 0.0


class Sla(Strict):
    """How long a stage may go without a sales touch."""

    escalate_after_hours: Positive | None = None
    recycle_after_hours: Positive

    @model_validator(mode="after")
    def _escalate_first(self) -> Self:
        if (
            self.escalate_after_hours is not None
            and self.escalate_after_hours >= self.recycle_after_hours
        ):
            raise ValueError("escalate_after_hours must be less than recycle_after_hours")
        return self


class Gate(Strict):
    """Facts a lead must have before it may enter a stage."""

    require_bant: list[BantItem] = Field(min_length=1)


class Stages(Strict):
    """Stage timing and which outcomes count as a sales touch."""

    customer_after_days: float = Field(default=0.0, ge=0)
    touch_outcomes: list[Outcome] = [
        "contacted",
        "appointment_set",
        "opportunity_opened",
        "won",
        "lost",
        "disqualified",
        "nurture",
    ]


class ExclusionRule(Strict):
    """A profile matching any listed criterion is disqualified with ``reason``, for good."""

    id: RuleId
    reason: ExclusionReason
    email_domains: list[str] = []
    job_title_keywords: list[str] = []
    company_keywords: list[str] = []

    @model_validator(mode="after")
    def _has_criterion(self) -> Self:
        if not (self.email_domains or self.job_title_keywords or self.company_keywords):
            raise ValueError(f"exclusion rule {self.id!r} has no criterion")
        return self


class Exclusion(Strict):
    """Exclusion rules, checked in order on every profile change."""

    rules: list[ExclusionRule] = []


# --- recycling and follow-up ------------------------------------------------------------------


class PerReason(Strict):
    """One value per recycle reason (tracks, thresholds)."""

    uncontacted: Any
    timing: Any
    no_budget: Any
    no_need: Any
    competitor_chosen: Any

    def of(self, reason: str) -> Any:
        """The value for ``reason``."""
        return getattr(self, reason)


class Tracks(PerReason):
    """Nurture track per recycle reason."""

    uncontacted: str
    timing: str
    no_budget: str
    no_need: str
    competitor_chosen: str


class Thresholds(PerReason):
    """Behaviour points gained since recycling that re-queue a lead, per reason."""

    uncontacted: Positive
    timing: Positive
    no_budget: Positive
    no_need: Positive
    competitor_chosen: Positive


class Recycling(Strict):
    """Nurture tracks, re-engagement thresholds, revisit defaults and the re-queue cooldown."""

    default_reason: RecycleReason = "timing"
    default_revisit_days: int = Field(default=90, ge=1, le=3660)
    requeue_cooldown_days: float = Field(default=14.0, ge=0)
    tracks: Tracks
    reengage_threshold: Thresholds


class Timing(Strict):
    """When a follow-up is due, counted from the moment it is created."""

    kind: Literal["hours", "business_hours", "business_days", "next_business_day"]
    amount: Positive = 1.0
    at: time = time(10, 0)


class Followup(Strict):
    """Follow-up due times per lead source, and how much context a rep gets."""

    default: Timing = Timing(kind="business_days", amount=2)
    by_source: dict[LeadSource, Timing] = {}
    context_activities: int = Field(default=5, ge=0, le=50)
    activity_memory: int = Field(default=10, ge=1, le=50)

    def timing(self, source: str | None) -> Timing:
        """The timing for a lead from ``source`` (the default when unknown or not configured)."""
        for key, timing in self.by_source.items():
            if key == source:
                return timing
        return self.default


# --- the rule set -----------------------------------------------------------------------------


class RuleSet(Strict):
    """A complete, versioned rule set."""

    version: Annotated[str, Field(min_length=1, max_length=64)]
    calendar: Calendar = Calendar()
    fit: Fit
    behaviour: Behaviour = Behaviour()
    priority: Priority = Priority()
    mql: Mql
    stages: Stages = Stages()
    sla: dict[Literal["mql", "appointment", "opportunity"], Sla] = {}
    gates: dict[Literal["appointment", "opportunity", "won"], Gate] = {}
    exclusion: Exclusion = Exclusion()
    recycling: Recycling
    followup: Followup = Followup()

    @model_validator(mode="after")
    def _unique_rule_ids(self) -> Self:
        # Ledger entry ids are built from rule ids, so two rules may never share one.
        seen: set[str] = set()
        groups: list[tuple[str, list[Any]]] = [
            ("fit.company_size", list(self.fit.company_size)),
            ("fit.industry", list(self.fit.industry)),
            ("fit.job_title", list(self.fit.job_title)),
            ("fit.country", list(self.fit.country)),
            ("fit.source", list(self.fit.source)),
            ("behaviour.rules", list(self.behaviour.rules)),
            ("exclusion.rules", list(self.exclusion.rules)),
        ]
        for where, rules in groups:
            for i, rule in enumerate(rules):
                if rule.id in seen:
                    raise ValueError(f"{where}[{i}].id: duplicate rule id {rule.id!r}")
                seen.add(rule.id)
        return self


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ""
        for part in err["loc"]:
            if part == "[key]":  # pydantic's marker for "the dict key itself was invalid"
                continue
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_rules(text: str) -> RuleSet:
    """Parse and validate a rule set from TOML text.

    Raises:
        RulesError: the text is not TOML, or a key is unknown, missing or invalid; the message
            names the key path (``behaviour.rules[2].points: Input should be a valid number``).
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"invalid TOML: {exc}") from exc
    try:
        return RuleSet.model_validate(doc)
    except ValidationError as exc:
        raise RulesError(_describe(exc)) from exc


def load_rules(path: str | Path) -> RuleSet:
    """Load and validate the rule set in the TOML file at ``path``.

    Raises:
        RulesError: the file cannot be read or is invalid (the message names the file and key).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read rule file: {exc.strerror}") from exc
    try:
        return parse_rules(text)
    except RulesError as exc:
        raise RulesError(f"{path}: {exc}") from exc
