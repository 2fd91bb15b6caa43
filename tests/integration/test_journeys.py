"""End to end on the real broker and database: The Model's loop, as a rep would live it."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from infra.calllist import open_followups
from infra.postgres import drop_database
from infra.services import Endpoints
from infra.settings import Settings
from scoring.rules import load_rules
from scoring.state import decode_state
from tests.conftest import TEST_MARKER
from tests.integration.conftest import Scenario, make_scenario
from tests.integration.journeys import (
    Journey,
    no_budget_journey,
    student_journey,
    timing_journey,
)
from tests.integration.kafkatools import consume_all, produce_all
from tests.integration.workerproc import WorkerProcess, eventually, leadcycle_cli
from workers.explain import explain_lead
from workers.sweeper import run_sweep_once

pytestmark = pytest.mark.integration
RULES = load_rules("rules/default.toml")
TOKYO = ZoneInfo("Asia/Tokyo")

Record = tuple[str, bytes, bytes]


async def publish_phases(sc: Scenario, worker: WorkerProcess, phases: list[list[Record]]) -> None:
    """Publish phase by phase; each waits until the worker has applied everything sent so far
    (outcomes then follow the behaviour they answer, as they would days apart)."""
    sent: set[str] = set()
    conn = await asyncpg.connect(sc.dsn)
    try:
        for phase in phases:
            await produce_all(
                sc.services.kafka_url, [(sc.topics.name(t), k, v) for t, k, v in phase]
            )
            sent |= {json.loads(v)["event_id"] for _, _, v in phase}
            applied = _all_logged(conn, sorted(sent))

            await eventually(applied, seconds=60, what="the phase to be applied", workers=(worker,))
    finally:
        await conn.close()


def _all_logged(conn: asyncpg.Connection, ids: list[str]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        n = await conn.fetchval(
            "SELECT count(*) FROM event_log WHERE event_id = ANY($1::text[])", ids
        )
        return bool(n == len(ids))

    return check


def merge(*journeys: Journey) -> list[list[Record]]:
    depth = max(len(j.phases) for j in journeys)
    return [[m for j in journeys if i < len(j.phases) for m in j.phases[i]] for i in range(depth)]


def worker_for(sc: Scenario, label: str) -> WorkerProcess:
    return WorkerProcess(sc.services, app_id=f"{sc.name}-{label}", prefix=sc.topics.prefix)


async def test_the_whole_loop(scenario: Scenario) -> None:
    sc = scenario
    now = datetime.now(UTC)
    start = now - timedelta(days=5)
    today = now.astimezone(TOKYO).date()
    revisit = today + timedelta(days=30)
    lost = no_budget_journey("LNB1", start)
    later = timing_journey("LT1", start, revisit)
    student = student_journey("LS1", start)
    worker = worker_for(sc, "loop").start()
    try:
        await publish_phases(sc, worker, merge(lost, later, student))
    finally:
        worker.stop()
    conn = await asyncpg.connect(sc.dsn)
    try:
        await check_no_budget_lead(conn, sc)
        await check_student(conn)
        check_cli(sc)
        await check_timing_revisit(conn, sc, revisit)
        # Thirty days on, nobody called the re-queued MQL: its stage SLA recycled it.
        row = await conn.fetchrow("SELECT stage FROM leads WHERE lead_id = 'LNB1'")
        assert row["stage"] == "recycled"
        assert (
            await conn.fetchval("SELECT reason FROM recycle_pool WHERE lead_id = 'LNB1'")
            == "uncontacted"
        )
        assert await open_for(conn, "LNB1") == []
    finally:
        await conn.close()
    await check_outputs(sc)


def leadcycle(sc: Scenario, *args: str) -> str:
    return leadcycle_cli(sc, *args, timeout=60)

def check_cli(sc: Scenario) -> None:
    listed = json.loads(leadcycle(sc, "calllist", "--format", "json"))
    assert {e["lead_id"] for e in listed} == {"LNB1"}  # LT1 waits for its revisit date
    lnb = next(e for e in listed if e["lead_id"] == "LNB1")
    assert lnb["previous_lost_reason"] == "no_budget"
    assert lnb["company"] == "Fuji Seiki KK"
    assert lnb["why_now"] == "re_engaged"
    csv_text = leadcycle(sc, "calllist", "--format", "csv")
    assert csv_text.splitlines()[0].startswith("followup_id,lead_id,assignee,due_at")
    assert len(csv_text.splitlines()) == 2
    table = leadcycle(sc, "calllist")
    assert "Fuji Seiki KK" in table
    assert "1 open follow-ups; due times in Asia/Tokyo" in table
    rep = lnb["assignee"]
    mine = json.loads(leadcycle(sc, "calllist", "--rep", rep, "--format", "json"))
    assert mine
    assert all(e["assignee"] == rep for e in mine)
    lead = json.loads(leadcycle(sc, "lead", "LNB1", "--format", "json"))
    assert lead["reproduced_from_ledger"]["matches"] is True
    assert lead["stage"] == "mql"
    assert [f["why_now"] for f in lead["followups"]] == ["new_mql", "re_engaged"]
    text = leadcycle(sc, "lead", "LNB1")
    assert "matches" in text
    assert "mql -> recycled" in text


async def check_no_budget_lead(conn: asyncpg.Connection, sc: Scenario) -> None:
    moves = [
        (r["from_stage"], r["to_stage"])
        for r in await conn.fetch(
            "SELECT from_stage, to_stage FROM stage_transitions WHERE lead_id = 'LNB1' AND accepted"
            " ORDER BY recorded_at, transition_id"
        )
    ]
    assert ("mql", "recycled") in moves
    assert moves[-1] == ("recycled", "mql"), moves  # re-queued: back on the call list
    assert any(to == "mql" for _, to in moves[:-1]), "never became an MQL before the loss"

    followups = await conn.fetch(
        "SELECT status, why_now, context, closed_reason, assignee FROM followups"
        " WHERE lead_id = 'LNB1' ORDER BY created_at"
    )
    assert [(f["status"], f["why_now"]) for f in followups] == [
        ("done", "new_mql"),
        ("open", "re_engaged"),
    ]
    assert followups[0]["closed_reason"] == "lead recycled"
    context = followups[1]["context"]
    if isinstance(context, str):
        context = json.loads(context)
    assert context["previous_lost_reason"] == "no_budget"
    assert set(context["unknown_bant"]) == {"authority", "timeline"}  # budget and need are known
    assert context["company"] == "Fuji Seiki KK"
    assert any("pricing" in a for a in context["recent_activities"])
    assert followups[1]["assignee"] in {"rep-1", "rep-2", "rep-3"}

    # The anonymous visitor's history was merged into the lead, with its original events.
    anon = await conn.fetchrow("SELECT merged_into FROM leads WHERE lead_id = 'anon:a-LNB1'")
    assert anon["merged_into"] == "LNB1"
    assert (
        await conn.fetchval("SELECT lead_id FROM identity_links WHERE anonymous_id = 'a-LNB1'")
        == "LNB1"
    )
    stitched = await conn.fetchval(
        "SELECT count(DISTINCT event_id) FROM score_ledger WHERE lead_id = 'LNB1'"
        " AND event_id IN ('events|LNB1-1', 'events|LNB1-2', 'events|LNB1-3')"
    )
    assert stitched == 3

    explained = await explain_lead(conn, "LNB1", RULES, at=datetime.now(UTC))
    assert explained is not None
    assert explained["reproduced_from_ledger"]["matches"] is True
    assert explained["fit_score"] == pytest.approx(96.0)
    assert await conn.fetchval("SELECT count(*) FROM recycle_pool WHERE lead_id = 'LNB1'") == 0


async def check_student(conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow(
        "SELECT stage, excluded, exclusion_reason FROM leads WHERE lead_id = 'LS1'"
    )
    assert (row["stage"], row["excluded"], row["exclusion_reason"]) == (
        "disqualified",
        True,
        "student",
    )
    assert await conn.fetchval("SELECT count(*) FROM followups WHERE lead_id = 'LS1'") == 0


async def check_timing_revisit(conn: asyncpg.Connection, sc: Scenario, revisit: Any) -> None:
    pool = await conn.fetchrow(
        "SELECT reason, revisit_on, track FROM recycle_pool WHERE lead_id = 'LT1'"
    )
    assert (pool["reason"], pool["revisit_on"], pool["track"]) == (
        "timing",
        revisit,
        "nurture-stay-in-touch",
    )
    assert await open_for(conn, "LT1") == []
    settings = Settings(
        kafka_url=sc.services.kafka_url, database_url=sc.dsn, topic_prefix=sc.topics.prefix
    )
    endpoints = Endpoints(sc.services.kafka_url, sc.dsn)
    # The day before the revisit date nothing happens; on the date the lead is re-queued once.
    eve = datetime.combine(revisit - timedelta(days=1), time(10), tzinfo=TOKYO)
    await run_sweep_once(settings, endpoints, now=eve)
    assert await open_for(conn, "LT1") == []
    day = datetime.combine(revisit, time(10), tzinfo=TOKYO)
    report = await run_sweep_once(settings, endpoints, now=day)
    assert report.ran
    assert await open_for(conn, "LT1") == ["revisit_due"]
    await run_sweep_once(settings, endpoints, now=day + timedelta(hours=1))
    assert await open_for(conn, "LT1") == ["revisit_due"], "re-queued twice"
    assert not await conn.fetchval(
        "SELECT sla_breached FROM followups WHERE lead_id = 'LT1' AND status = 'open'"
    )
    # Three days later nobody has called: the follow-up is past due and flagged, once.
    await run_sweep_once(settings, endpoints, now=day + timedelta(days=3))
    assert await conn.fetchval(
        "SELECT sla_breached FROM followups WHERE lead_id = 'LT1' AND status = 'open'"
    )
    listed = await open_followups(conn, tz="Asia/Tokyo")
    by_lead = {e.lead_id: e for e in listed}
    assert by_lead["LT1"].previous_lost_reason == "timing"
    assert "LS1" not in by_lead
    keys = [(e.due_at, -e.priority) for e in listed]
    assert keys == sorted(keys), "not ordered by due time, then priority"


async def open_for(conn: asyncpg.Connection, lead_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT why_now FROM followups WHERE lead_id = $1 AND status = 'open'", lead_id
    )
    return [r["why_now"] for r in rows]


async def check_outputs(sc: Scenario) -> None:
    url = sc.services.kafka_url
    nurture = await consume_all(url, sc.topics.nurture, expect=2, seconds=20)
    tracks = {(m["lead_id"], m["reason"], m["track"]) for m in nurture}
    assert ("LNB1", "no_budget", "nurture-roi-and-budget") in tracks
    assert ("LT1", "timing", "nurture-stay-in-touch") in tracks
    followups = await consume_all(url, sc.topics.followups, expect=5, seconds=20)
    lnb = [(m["status"], m["why_now"]) for m in followups if m["lead_id"] == "LNB1"]
    assert ("open", "new_mql") in lnb
    assert ("done", "new_mql") in lnb
    assert ("open", "re_engaged") in lnb
    assert ("open", "revisit_due") in {(m["status"], m["why_now"]) for m in followups}
    assert not any(m["lead_id"] == "LS1" for m in followups)
    scores = await consume_all(url, sc.topics.score_changes, expect=3, seconds=20)
    assert {"LNB1", "LT1", "LS1"} <= {m["lead_id"] for m in scores}
    assert len({m["message_id"] for m in followups}) == len(followups)


async def snapshot(dsn: str) -> dict[str, Any]:
    """Everything a duplicate could have changed. Stamps of processing time (when an MQL was
    decided, when a follow-up was made) differ between any two runs and are left out."""
    at = datetime(2030, 1, 1, tzinfo=UTC)
    conn = await asyncpg.connect(dsn)
    try:
        q = {
            "leads": "SELECT lead_id, stage, fit_score, grade, excluded, merged_into,"
            " state::jsonb->'applied' AS applied FROM leads ORDER BY lead_id",
            "ledger": "SELECT entry_id, points, raw_points FROM score_ledger ORDER BY entry_id",
            "moves": "SELECT lead_id, from_stage, to_stage, reason, accepted"
            " FROM stage_transitions ORDER BY lead_id, recorded_at",
            "pool": "SELECT lead_id, reason, revisit_on, track FROM recycle_pool ORDER BY lead_id",
            "followups": "SELECT lead_id, status, why_now, version, assignee FROM followups"
            " ORDER BY lead_id, status",
            "links": "SELECT anonymous_id, lead_id FROM identity_links ORDER BY 1",
            "events": "SELECT count(*) FROM event_log",
        }
        snap = {k: [dict(r) for r in await conn.fetch(v)] for k, v in q.items()}
        states = await conn.fetch("SELECT lead_id, state AS s FROM leads")
    finally:
        await conn.close()
    from scoring.scores import behaviour_score

    snap["behaviour"] = {
        r["lead_id"]: round(behaviour_score(decode_state(r["s"]), at, RULES), 9)
        for r in states
    }
    return snap


async def test_duplicates_and_redelivery_change_nothing(services: Any) -> None:
    now = datetime.now(UTC)
    start = now - timedelta(days=5)
    revisit = now.astimezone(TOKYO).date() + timedelta(days=30)

    def phases() -> list[list[Record]]:
        return merge(
            no_budget_journey("LNB1", start),
            timing_journey("LT1", start, revisit),
            student_journey("LS1", start),
        )

    once = await make_scenario(services, "once")
    twice = await make_scenario(services, "twice")
    rng = random.Random(11)
    doubled: list[list[Record]] = []
    earlier: list[Record] = []
    for phase in phases():
        # Every message twice: the copy shuffled in later, plus redeliveries of earlier phases.
        copies = phase[:]
        rng.shuffle(copies)
        replays = rng.sample(earlier, k=min(len(earlier), 5))
        doubled.append(phase + copies + replays)
        earlier += phase
    try:
        w1, w2 = worker_for(once, "w").start(), worker_for(twice, "w").start()
        try:
            await publish_phases(once, w1, phases())
            await publish_phases(twice, w2, doubled)
        finally:
            w1.stop()
            w2.stop()
        a, b = await snapshot(once.dsn), await snapshot(twice.dsn)
        assert a["events"] == b["events"]
        for key in a:
            assert a[key] == b[key], f"{key} differs after duplicate delivery"
        assert len(a["ledger"]) > 20
        assert len(a["followups"]) >= 2
    finally:
        for made in (once, twice):
            await drop_database(services.server_dsn, made.name, marker=TEST_MARKER)
