"""Follow-up assignment in the database: owner first, round robin, daily capacity, overflow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from events import BehaviourTracked, ProfileUpdated
from infra import db
from scoring.rules import load_rules
from tests.integration.conftest import Scenario
from workers.leads import Assignment, LeadProcessor

pytestmark = pytest.mark.integration
RULES = load_rules("rules/default.toml")


def hot_lead(lead_id: str, at: datetime, owner: str | None = None) -> list[object]:
    profile = {
        "event_id": f"{lead_id}-p",
        "type": "profile_updated",
        "lead_id": lead_id,
        "occurred_at": at.isoformat(),
        "company_size": 2000,
        "industry": "software",
        "job_title": "CIO",
        "country": "JP",
        "source": "demo_request",
    }
    if owner:
        profile["owner"] = owner
    return [
        ProfileUpdated.model_validate(profile),
        BehaviourTracked.model_validate(
            {
                "event_id": f"{lead_id}-d",
                "type": "demo_request",
                "lead_id": lead_id,
                "occurred_at": (at + timedelta(minutes=1)).isoformat(),
                "properties": {"url": "/contact/demo"},
            }
        ),
    ]


async def test_owner_then_round_robin_then_overflow(scenario: Scenario) -> None:
    now = datetime.now(UTC)
    processor = LeadProcessor(RULES, scenario.topics, Assignment(("r1", "r2"), daily_capacity=2))
    events = [e for i in range(6) for e in hot_lead(f"H{i}", now - timedelta(hours=1))]
    events += hot_lead("OWNED", now - timedelta(hours=1), owner="alice")
    conn = await db.connect(scenario.dsn)
    try:
        async with conn.transaction():
            outputs = await processor.apply_events(conn, events, now)  # type: ignore[arg-type]
        rows = await conn.fetch("SELECT lead_id, assignee FROM followups WHERE status = 'open'")
        loads = {r["rep"]: r["assigned"] for r in await conn.fetch("SELECT * FROM rep_load")}
    finally:
        await conn.close()
    assigned = {r["lead_id"]: r["assignee"] for r in rows}
    assert len(assigned) == 7, "every hot lead gets exactly one open follow-up"
    assert assigned["OWNED"] == "alice"  # the CRM owner wins, outside the rotation
    rotation = [assigned[f"H{i}"] for i in range(6)]
    assert sorted(r for r in rotation if r) == ["r1", "r1", "r2", "r2"]  # capacity 2 each
    assert rotation.count(None) == 2  # overflow stays unassigned and visible
    assert loads == {"r1": 2, "r2": 2}
    assert sum(1 for o in outputs if o.topic == scenario.topics.followups) == 7


async def test_a_second_trigger_updates_the_open_follow_up(scenario: Scenario) -> None:
    """An MQL nobody touched for 24 h escalates (sla_breach): the same row changes."""
    now = datetime.now(UTC)
    processor = LeadProcessor(RULES, scenario.topics, Assignment(("r1",), daily_capacity=10))
    conn = await asyncpg.connect(scenario.dsn)
    try:
        async with conn.transaction():
            await processor.apply_events(conn, hot_lead("TWICE", now - timedelta(hours=2)), now)  # type: ignore[arg-type]
        before = await conn.fetch("SELECT followup_id, why_now, version FROM followups")
        later = now + timedelta(hours=30)
        async with conn.transaction():
            await processor.sweep_leads(conn, ["TWICE"], later)
        after = await conn.fetch("SELECT followup_id, why_now, version, status FROM followups")
    finally:
        await conn.close()
    assert [(r["why_now"], r["version"]) for r in before] == [("new_mql", 1)]
    assert len(after) == 1, "a second trigger must not add a second follow-up"
    assert after[0]["followup_id"] == before[0]["followup_id"]
    assert (after[0]["why_now"], after[0]["status"]) == ("sla_breach", "open")
    assert after[0]["version"] == 2
