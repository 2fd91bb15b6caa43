"""Event time and idempotency keys on the real broker, database and worker process.

- A clock two years ahead: the event is scored at its receive time, so a lead with it scores
  like a control lead that sent the same event on time (the finding: a real demo request
  counted 0 on the skewed lead vs 50 on the control), and the stated time is kept.
- One ``event_id`` from four sources (a page view on ``leadcycle.events``, the same id from a
  collector site, an outcome and a profile update): four events, each applied once however
  often it is redelivered.
- ``leadcycle replay`` afterwards reproduces every lead exactly (it reads the logged id and
  time, not the payload's).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from scoring.rules import load_rules
from scoring.scores import behaviour_score
from scoring.state import LeadState, decode_state
from tests.integration.conftest import Scenario
from tests.integration.kafkatools import produce_all
from tests.integration.workerproc import ROOT, WorkerProcess, all_applied, leadcycle_cli

pytestmark = pytest.mark.integration
RULES = load_rules(ROOT / "rules" / "default.toml")

Record = tuple[str, bytes, bytes]


def record(topic: str, lead_id: str, doc: dict[str, Any]) -> Record:
    return topic, lead_id.encode(), json.dumps(doc).encode()


def tracked(event_id: str, lead_id: str, kind: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": kind,
        "occurred_at": at.isoformat(),
        "lead_id": lead_id,
        **extra,
    }


def stamp(site: str, received: datetime) -> dict[str, Any]:
    """The collector's stamp (a server-side key: it may name a CRM lead)."""
    return {"collected": {"site": site, "key": "server", "received_at": received.isoformat()}}


async def publish(sc: Scenario, worker: WorkerProcess, records: list[Record], *, rows: int) -> None:
    """Publish ``records`` and wait until the event log holds ``rows`` rows and the outbox is
    drained (everything applied and published)."""
    await produce_all(sc.services.kafka_url, [(sc.topics.name(t), k, v) for t, k, v in records])
    await all_applied(sc.dsn, rows, workers=(worker,))


async def states(dsn: str) -> dict[str, LeadState]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT lead_id, state AS s FROM leads ORDER BY lead_id")
    finally:
        await conn.close()
    return {r["lead_id"]: decode_state(r["s"]) for r in rows}


def cli(sc: Scenario, *args: str) -> str:
    return leadcycle_cli(sc, *args)


def assert_replay_reproduces(sc: Scenario, before: dict[str, LeadState]) -> dict[str, Any]:
    """``leadcycle replay`` under the same rules finds every lead's scores as the worker left
    them (exactly: it compares the scoring fields with ``==``) and writes nothing."""
    report: dict[str, Any] = json.loads(cli(sc, "replay", "--format", "json"))
    assert report["skipped"] == []
    assert report["rewritten"] == 0, report
    assert report["unchanged"] == len(before)
    return report


async def test_a_clock_two_years_ahead_is_scored_at_its_receive_time(scenario: Scenario) -> None:
    sc = scenario
    now = datetime.now(UTC).replace(microsecond=0)
    received = now - timedelta(seconds=30)  # when the collector received the skewed events
    future = now + timedelta(days=730)
    worker = WorkerProcess(sc.services, app_id=f"{sc.name}-w", prefix=sc.topics.prefix).start()
    try:
        # First the skewed events (the control lead's twin is on time), then the real ones.
        sent_at = datetime.now(UTC)
        await publish(
            sc,
            worker,
            [
                record(
                    "events",
                    "FUT1",
                    tracked("fut1-q", "FUT1", "quote_request", future, **stamp("acme", received)),
                ),
                record(
                    "events",
                    "CTL1",
                    tracked("ctl1-q", "CTL1", "quote_request", received, **stamp("acme", received)),
                ),
                # No collector stamp: the worker's batch time is the receive time.
                record("events", "FUT2", tracked("fut2-q", "FUT2", "quote_request", future)),
            ],
            rows=3,
        )
        done_at = datetime.now(UTC)
        real = [
            record("events", lead, tracked(f"{lead}-{n}", lead, kind, now - ago))
            for lead in ("FUT1", "CTL1", "FUT2")
            for n, (kind, ago) in enumerate(
                [("content_download", timedelta(days=3)), ("demo_request", timedelta(hours=1))]
            )
        ]
        await publish(sc, worker, real, rows=9)
    finally:
        worker.stop()

    found = await states(sc.dsn)
    at = now + timedelta(days=1)
    fut1, ctl1, fut2 = (behaviour_score(found[k], at, RULES) for k in ("FUT1", "CTL1", "FUT2"))
    assert ctl1 > 100  # 45 + 50 + 8, barely decayed
    assert fut1 == pytest.approx(ctl1, rel=1e-12)
    # Scored at the worker's batch time, a few seconds after ``received``: decay of seconds.
    assert fut2 == pytest.approx(ctl1, rel=1e-5)
    for state in found.values():
        assert all(g.ref <= done_at for g in state.decay), "decay anchored in the future"

    conn = await asyncpg.connect(sc.dsn)
    try:
        logged = {
            r["event_id"]: r
            for r in await conn.fetch(
                """SELECT event_id, source, site, qualified_id, occurred_at, stated_occurred_at,
                          payload->>'occurred_at' AS payload_time FROM event_log"""
            )
        }
        demo = await conn.fetch(
            """SELECT lead_id, points, decayed_points AS decayed
                 FROM score_ledger WHERE rule_id = 'demo-request' ORDER BY lead_id"""
        )
    finally:
        await conn.close()
    q1 = logged["fut1-q"]
    assert (q1["source"], q1["site"], q1["qualified_id"]) == (
        "http:acme",
        "acme",
        "http:acme|fut1-q",
    )
    assert (q1["occurred_at"], q1["stated_occurred_at"]) == (received, future)
    assert datetime.fromisoformat(q1["payload_time"]) == future  # the payload stays as received
    assert logged["ctl1-q"]["stated_occurred_at"] is None  # on time: nothing replaced
    q2 = logged["fut2-q"]
    assert (q2["source"], q2["site"], q2["stated_occurred_at"]) == ("events", None, future)
    assert sent_at <= q2["occurred_at"] <= done_at
    assert all(r["stated_occurred_at"] is None for k, r in logged.items() if not k.endswith("-q"))
    # The real demo request counts alike on all three leads (it counted 0 on the skewed one).
    assert [r["points"] for r in demo] == [50.0, 50.0, 50.0]
    assert [r["decayed"] for r in demo] == pytest.approx([demo[0]["decayed"]] * 3, rel=1e-4)
    assert demo[0]["decayed"] > 49

    # The ledger view shows the stated and the used time of the clamped event.
    view = json.loads(cli(sc, "lead", "FUT1", "--format", "json"))
    assert view["reproduced_from_ledger"]["matches"] is True
    quote = next(e for e in view["ledger"] if e["rule_id"] == "quote-request")
    assert datetime.fromisoformat(quote["stated_occurred_at"]) == future
    assert datetime.fromisoformat(quote["occurred_at"]) == received
    assert (quote["producer_event_id"], quote["source"]) == ("fut1-q", "http:acme")
    text = cli(sc, "lead", "FUT1")
    assert f"stated {future.isoformat()[:19]}" in text
    assert "event fut1-q (http:acme)" in text

    assert_replay_reproduces(sc, found)
    assert await states(sc.dsn) == found


async def test_one_event_id_from_four_sources_is_four_events_each_applied_once(
    scenario: Scenario,
) -> None:
    sc = scenario
    now = datetime.now(UTC).replace(microsecond=0)
    lead = "COL1"
    ids = "crm-5042"
    page_view = record(
        "events",
        lead,
        tracked(
            ids,
            lead,
            "page_view",
            now - timedelta(hours=3),
            properties={"url": "https://example.com/pricing"},
        ),
    )
    from_site = record(
        "events",
        lead,
        tracked(
            ids,
            lead,
            "demo_request",
            now - timedelta(hours=2),
            **stamp("acme", now - timedelta(hours=2)),
        ),
    )
    outcome = record(
        "outcomes",
        lead,
        {
            "event_id": ids,
            "type": "sales_outcome",
            "lead_id": lead,
            "occurred_at": (now - timedelta(hours=1)).isoformat(),
            "outcome": "contacted",
            "bant": {"budget": True, "need": True},
        },
    )
    profile = record(
        "profiles",
        lead,
        {
            "event_id": ids,
            "type": "profile_updated",
            "lead_id": lead,
            "occurred_at": (now - timedelta(minutes=30)).isoformat(),
            "company_name": "Acme KK",
            "job_title": "CTO",
            "company_size": 1500,
            "country": "JP",
        },
    )
    worker = WorkerProcess(sc.services, app_id=f"{sc.name}-w", prefix=sc.topics.prefix).start()
    try:
        # One by one, in this order: the page view first, as in the finding.
        for n, message in enumerate([page_view, from_site, outcome, profile], start=1):
            await publish(sc, worker, [message], rows=n)
        first = await snapshot(sc.dsn)
        # Each redelivered, twice, in one batch and then alone: nothing changes.
        await publish(sc, worker, [profile, outcome, from_site, page_view] * 2, rows=4)
        for message in [page_view, outcome]:
            await publish(sc, worker, [message], rows=4)
        again = await snapshot(sc.dsn)
    finally:
        worker.stop()

    assert first["sources"] == [
        ("events", None, "events|crm-5042"),
        ("http:acme", "acme", "http:acme|crm-5042"),
        ("outcomes", None, "outcomes|crm-5042"),
        ("profiles", None, "profiles|crm-5042"),
    ]
    state = decode_state(first["state"])
    assert state.events == 4  # all four applied
    assert state.profile.job_title == "CTO"  # the CRM's profile update was not swallowed
    assert state.bant.budget is True  # nor its outcome
    rules = {r for r, _ in first["ledger"]}
    assert {"pricing-page", "page-view", "demo-request"} <= rules
    assert {e for _, e in first["ledger"]} >= {
        "events|crm-5042",
        "http:acme|crm-5042",
        "profiles|crm-5042",
    }
    assert again == first, "a redelivery changed something"

    view = json.loads(cli(sc, "lead", lead, "--format", "json"))
    assert view["reproduced_from_ledger"]["matches"] is True
    assert {(e["producer_event_id"], e["source"]) for e in view["ledger"]} >= {
        ("crm-5042", "events"),
        ("crm-5042", "http:acme"),
        ("crm-5042", "profiles"),
    }

    before = await states(sc.dsn)
    assert_replay_reproduces(sc, before)
    assert await states(sc.dsn) == before


async def snapshot(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "sources": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT source, site, qualified_id FROM event_log ORDER BY source"
                )
            ],
            "state": await conn.fetchval("SELECT state FROM leads WHERE lead_id = 'COL1'"),
            "ledger": sorted(
                (r["rule_id"], r["event_id"])
                for r in await conn.fetch("SELECT rule_id, event_id FROM score_ledger")
            ),
            "ledger_rows": await conn.fetchval("SELECT count(*) FROM score_ledger"),
            "moves": [
                tuple(r)
                for r in await conn.fetch(
                    """SELECT from_stage, to_stage, event_id, accepted FROM stage_transitions
                        ORDER BY recorded_at, transition_id"""
                )
            ],
            "followups": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT followup_id, status, version FROM followups ORDER BY followup_id"
                )
            ],
            "leads": await conn.fetchval("SELECT count(*) FROM leads"),
        }
    finally:
        await conn.close()
