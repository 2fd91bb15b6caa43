"""Retention: anonymous visitors that never identified are purged by the sweep, and the purge
keeps the guarantees (a purged event redelivered or replayed is not applied again).

A real worker process ingests the visitors from the real broker; the sweep function runs
against the same database; the redelivery goes through the broker and the worker again; the
replay is the ``leadcycle replay`` command.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from infra import db
from infra.postgres import drop_database, ensure_database
from infra.retention import PURGED_SUBJECT
from infra.settings import Settings
from scoring.rules import load_rules
from tests.conftest import TEST_MARKER, RunningServices
from tests.integration.conftest import Scenario
from tests.integration.kafkatools import produce_all
from tests.integration.workerproc import WorkerProcess, eventually, leadcycle_cli
from workers.leads import Assignment, LeadProcessor
from workers.sweeper import sweep_once

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=500)  # older than the default 395 days
RETENTION = Settings().anonymous_retention
#: Visitors that only ever browsed, long ago: the purge's targets.
EXPIRED = [f"old-{i}" for i in range(5)]


def page_view(event_id: str, anonymous_id: str, at: datetime, **over: Any) -> bytes:
    doc: dict[str, Any] = {
        "event_id": event_id,
        "type": "page_view",
        "occurred_at": at.isoformat(),
        "anonymous_id": anonymous_id,
        "properties": {"url": "https://example.com/pricing"},
        "context": {"user_agent": "Mozilla/5.0 (X11; Linux x86_64)"},
    }
    doc.update(over)
    return json.dumps(doc).encode()


def traffic(run: str) -> list[tuple[str, bytes, bytes]]:
    """``(topic suffix, key, value)``: expired visitors, a recent one, an identified one."""
    out: list[tuple[str, bytes, bytes]] = []
    for n, anon in enumerate(EXPIRED):
        key = anon.encode()
        for i in range(3):
            at = OLD + timedelta(days=n, hours=i)
            out.append(("events", key, page_view(f"{run}-{anon}-{i}", anon, at)))
    # One expired visitor also has an event the bot filter caught: emptied all the same.
    bot = page_view(f"{run}-old-0-bot", "old-0", OLD, context={"user_agent": "Googlebot/2.1"})
    out.append(("events", b"old-0", bot))
    # Came back ten days ago: its newest event is recent, so all of it stays.
    out.append(("events", b"back", page_view(f"{run}-back-0", "back", OLD)))
    out.append(("events", b"back", page_view(f"{run}-back-1", "back", NOW - timedelta(days=10))))
    # Browsed and identified as a CRM lead, all long ago: a lead's history, never purged.
    out.append(("events", b"known", page_view(f"{run}-known-0", "known", OLD)))
    identify = {
        "event_id": f"{run}-known-id",
        "type": "identify",
        "occurred_at": (OLD + timedelta(hours=1)).isoformat(),
        "anonymous_id": "known",
        "lead_id": "L-ret",
        "email": "ada@example.com",
    }
    out.append(("events", b"known", json.dumps(identify).encode()))
    profile = {
        "event_id": f"{run}-profile",
        "type": "profile_updated",
        "lead_id": "L-ret",
        "occurred_at": (OLD + timedelta(hours=2)).isoformat(),
        "company_size": 300,
        "job_title": "VP Marketing",
    }
    out.append(("profiles", b"L-ret", json.dumps(profile).encode()))
    return out


def event_id(value: bytes) -> str:
    return str(json.loads(value)["event_id"])


async def kept_snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the visitors and the lead that must stay untouched."""
    subjects = ["anon:back", "anon:known", "L-ret"]
    queries = {
        "leads": "SELECT *, state::text FROM leads WHERE lead_id = ANY($1) ORDER BY lead_id",
        "events": """SELECT *, payload::text FROM event_log WHERE subject = ANY($1)
                      ORDER BY event_id""",
        "ledger": "SELECT * FROM score_ledger WHERE lead_id = ANY($1) ORDER BY entry_id",
        "transitions": """SELECT * FROM stage_transitions WHERE lead_id = ANY($1)
                           ORDER BY transition_id""",
        "links": "SELECT * FROM identity_links WHERE lead_id = ANY($1) ORDER BY anonymous_id",
    }
    return {k: [tuple(r) for r in await conn.fetch(q, subjects)] for k, q in queries.items()}


async def purged_state(conn: asyncpg.Connection, ids: list[str]) -> dict[str, int]:
    subjects = [f"anon:{a}" for a in EXPIRED]
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM leads WHERE lead_id = ANY($1)) AS leads,
                  (SELECT count(*) FROM score_ledger WHERE lead_id = ANY($1)) AS ledger,
                  (SELECT count(*) FROM stage_transitions WHERE lead_id = ANY($1)) AS moves,
                  (SELECT count(*) FROM event_log WHERE event_id = ANY($2)) AS rows,
                  (SELECT count(*) FROM event_log WHERE event_id = ANY($2)
                      AND disposition = 'purged' AND payload = '{}'::jsonb
                      AND subject = $3 AND anonymous_id IS NULL) AS tombstones,
                  (SELECT count(*) FROM event_log WHERE subject = ANY($1)) AS by_subject""",
        subjects,
        ids,
        PURGED_SUBJECT,
    )
    assert row is not None
    return dict(row)


def replay_json(sc: Scenario) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(leadcycle_cli(sc, "replay", "--format", "json", timeout=300))
    return found


async def test_sweep_purges_expired_visitors_and_keeps_the_guarantees(scenario: Scenario) -> None:
    sc = scenario
    run = sc.name
    records = traffic(run)
    expired_ids = [event_id(v) for _, k, v in records if k.decode().startswith("old-")]
    worker = WorkerProcess(
        sc.services,
        app_id=f"{run}-w",
        prefix=sc.topics.prefix,
        # The test runs the sweep itself, at a time of its choosing.
        LEADCYCLE_SWEEP_INTERVAL="3600",
    ).start()
    conn = await db.connect(sc.dsn)
    pool = await db.create_pool(sc.dsn, size=2)
    try:
        await produce_all(sc.services.kafka_url, [(sc.topics.name(t), k, v) for t, k, v in records])
        ids = [event_id(v) for _, _, v in records]

        async def all_applied() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM event_log WHERE event_id = ANY($1)", ids)
            leads = await conn.fetchval(
                "SELECT count(*) FROM leads WHERE lead_id = ANY($1)",
                [f"anon:{a}" for a in EXPIRED],
            )
            return bool(n == len(ids) and leads == len(EXPIRED))

        await eventually(all_applied, seconds=90, what="the traffic", workers=(worker,))
        before = await purged_state(conn, expired_ids)
        assert before["leads"] == len(EXPIRED)
        assert before["ledger"] > 0
        assert before["tombstones"] == 0
        kept = await kept_snapshot(conn)
        assert len(kept["leads"]) == 3, kept
        assert kept["links"], kept

        # Sweeps examine at most `limit` visitors each: several rounds purge them all. A
        # visitor a batch is writing (its row locked) is skipped until it is free.
        rules = load_rules(ROOT / "rules" / "default.toml")
        processor = LeadProcessor(rules, sc.topics, Assignment(("rep-1",), 25))
        batch = await db.connect(sc.dsn)
        held = batch.transaction()
        await held.start()
        await batch.execute("SELECT 1 FROM leads WHERE lead_id = 'anon:old-0' FOR UPDATE")
        purged: list[int] = []
        for _ in range(6):
            report, _, _ = await sweep_once(pool, processor, now=NOW, limit=2, retention=RETENTION)
            assert report.ran
            purged.append(report.purged)
        assert all(n <= 2 for n in purged), purged
        assert sum(purged) == len(EXPIRED) - 1, purged
        assert await conn.fetchval("SELECT count(*) FROM leads WHERE lead_id = 'anon:old-0'")
        await held.commit()
        await batch.close()
        for _ in range(3):  # the cursor comes round to it again
            report, _, _ = await sweep_once(pool, processor, now=NOW, limit=2, retention=RETENTION)
            purged.append(report.purged)
        assert sum(purged) == len(EXPIRED), purged

        after = await purged_state(conn, expired_ids)
        assert after == {
            "leads": 0,
            "ledger": 0,
            "moves": 0,
            "rows": len(expired_ids),  # the idempotency record stays
            "tombstones": len(expired_ids),
            "by_subject": 0,
        }
        assert await kept_snapshot(conn) == kept

        # Redelivered on the topic (same key, so before the marker on the same partition): the
        # worker sees known ids and applies nothing; the marker is a new visitor's first event.
        again = [(sc.topics.name(t), k, v) for t, k, v in records if k == b"old-1"]
        marker = page_view(f"{run}-marker", "newcomer", NOW - timedelta(hours=1))
        await produce_all(sc.services.kafka_url, [*again, (sc.topics.events, b"old-1", marker)])

        async def marker_applied() -> bool:
            return bool(
                await conn.fetchval("SELECT count(*) FROM leads WHERE lead_id = 'anon:newcomer'")
            )

        await eventually(marker_applied, seconds=60, what="the marker", workers=(worker,))
        assert await purged_state(conn, expired_ids) == after
        assert await kept_snapshot(conn) == kept
        # A newcomer is recent: the next sweep leaves it (and everything kept) alone.
        report, _, _ = await sweep_once(pool, processor, now=NOW, retention=RETENTION)
        assert report.purged == 0
    finally:
        worker.stop()
        await pool.close()

    try:
        accepted = await conn.fetchval(
            "SELECT count(*) FROM event_log WHERE disposition = 'accepted'"
        )
        # `leadcycle replay` reads only accepted events: none of the purged ones.
        found = replay_json(sc)
        assert found["events"] == accepted == len(ids) - len(expired_ids) + 1  # + the marker
        assert await purged_state(conn, expired_ids) == after
        rescored = await conn.fetchval("SELECT count(*) FROM leads WHERE lead_id LIKE 'anon:old-%'")
        assert rescored == 0
    finally:
        await conn.close()


async def test_migration_widens_whatever_disposition_check_it_finds(
    services: RunningServices,
) -> None:
    """0005 adds 'purged' to the disposition check as an earlier migration left it (another
    migration may have changed the list): here one that also allows 'clamped'."""
    name = f"lc_retmig_{uuid.uuid4().hex[:8]}"
    dsn = await ensure_database(services.server_dsn, name, marker=TEST_MARKER)
    conn = await db.connect(dsn)
    try:
        for m in db.migrations():
            if m.version < "0005":
                await conn.execute(m.sql)
        await conn.execute(
            """ALTER TABLE event_log DROP CONSTRAINT event_log_disposition_check;
               ALTER TABLE event_log ADD CONSTRAINT disposition_known
                   CHECK (disposition IN ('accepted', 'bot', 'clamped'))"""
        )
        await conn.execute(next(m for m in db.migrations() if m.version == "0005").sql)
        insert = """INSERT INTO event_log (event_id, source, qualified_id, topic, type, subject,
                                           occurred_at, disposition, payload)
                    VALUES ($1, 'events', 'events|' || $1, 'events', 'page_view', 'anon:x',
                            now(), $1, '{}')"""
        for allowed in ("accepted", "bot", "clamped", "purged"):
            await conn.execute(insert, allowed)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(insert, "nonsense")
    finally:
        await conn.close()
        await drop_database(services.server_dsn, name, marker=TEST_MARKER)
