"""Builders for scoring tests: events with sensible defaults, the sample rules, a fixed clock."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from events import BehaviourTracked, OutcomeRecorded, ProfileUpdated
from events.outcomes import Bant
from scoring.engine import Decision, Event, apply
from scoring.rules import RuleSet, load_rules
from scoring.state import LeadState

RULES_FILE = Path(__file__).resolve().parents[3] / "rules" / "default.toml"
RULES: RuleSet = load_rules(RULES_FILE)
#: Monday 2026-03-02 10:00 in Tokyo.
T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)

_counter = iter(range(10**9))


def _id(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}"


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def days(n: float) -> timedelta:
    return timedelta(days=n)


def view(url: str, at: datetime = T0, lead: str | None = "L1", **over: Any) -> BehaviourTracked:
    return behaviour("page_view", at, lead, url=url, **over)


def behaviour(
    kind: str,
    at: datetime = T0,
    lead: str | None = "L1",
    *,
    event_id: str | None = None,
    anonymous_id: str | None = None,
    email: str | None = None,
    **props: Any,
) -> BehaviourTracked:
    return BehaviourTracked.model_validate(
        {
            "event_id": event_id or _id("ev"),
            "type": kind,
            "occurred_at": at,
            "lead_id": lead,
            "anonymous_id": anonymous_id,
            "email": email,
            "properties": props,
        }
    )


def profile(at: datetime = T0, lead: str = "L1", **fields: Any) -> ProfileUpdated:
    return ProfileUpdated.model_validate(
        {
            "event_id": fields.pop("event_id", None) or _id("pr"),
            "type": "profile_updated",
            "lead_id": lead,
            "occurred_at": at,
            **fields,
        }
    )


def outcome(
    kind: str,
    at: datetime = T0,
    lead: str = "L1",
    *,
    reason: str | None = None,
    revisit_on: date | None = None,
    **bant: bool | None,
) -> OutcomeRecorded:
    return OutcomeRecorded(
        event_id=_id("oc"),
        type="sales_outcome",
        lead_id=lead,
        occurred_at=at,
        outcome=kind,
        reason=reason,
        revisit_on=revisit_on,
        bant=Bant(**bant),
    )


#: A profile that fits well (grade A) without behaviour.
GOOD_PROFILE: dict[str, Any] = {
    "email": "taro@acme.example.co.jp",
    "company_name": "Acme KK",
    "company_size": 1500,
    "industry": "製造業",
    "job_title": "情報システム部長",
    "country": "JP",
    "source": "webinar",
}


def run(
    events: Iterable[Event],
    rules: RuleSet = RULES,
    *,
    state: LeadState | None = None,
    lead: str = "L1",
    now: datetime | None = None,
) -> list[Decision]:
    """Apply ``events`` in order; ``now`` is each event's time unless given.

    The engine changes one working state in place; each returned decision carries a snapshot
    of the state as it was right after that event, so tests can look back at every step.
    """
    current = state or LeadState.new(lead, now=T0 - days(1))
    out = []
    for event in events:
        decision = apply(current, event, rules, now=now or max(event.occurred_at, T0))
        decision.state = current.copy()
        out.append(decision)
    return out


def final(decisions: list[Decision]) -> LeadState:
    return decisions[-1].state
