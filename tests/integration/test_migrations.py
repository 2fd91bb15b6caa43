"""Migrations apply to an empty database, once, and give the expected schema."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from infra import db, store
from infra.postgres import drop_database, ensure_database
from infra.store import LoggedEvent
from tests.conftest import TEST_MARKER, RunningServices

pytestmark = pytest.mark.integration


async def test_all_migrations_apply_to_an_empty_database(services: RunningServices) -> None:
    name = "leadcycle_migration_check"
    await drop_database(services.server_dsn, name, marker=TEST_MARKER)
    dsn = await ensure_database(services.server_dsn, name, marker=TEST_MARKER)
    try:
        conns = [await db.connect(dsn) for _ in range(3)]
        # Three workers starting at once: the advisory lock lets exactly one apply each file.
        results = await asyncio.gather(*(db.migrate(c) for c in conns))
        expected = [f"{m.version}_{m.name}" for m in db.migrations()]
        assert sorted(results, key=len)[-1] == expected
        assert sum(len(r) for r in results) == len(expected)
        conn = conns[0]
        assert await db.migrate(conn) == []
        recorded = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in recorded] == [m.version for m in db.migrations()]
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert {"event_log", "dead_letters", "outbox", "schema_migrations"} <= tables
        pk = await conn.fetch(
            """SELECT a.attname FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                WHERE i.indrelid = 'event_log'::regclass AND i.indisprimary"""
        )
        assert {r["attname"] for r in pk} == {"event_id", "source"}  # ids unique per source
        for c in conns:
            await c.close()
    finally:
        await drop_database(services.server_dsn, name, marker=TEST_MARKER)


def test_migration_files_are_numbered_and_ordered() -> None:
    found = db.migrations()
    assert found, "no migrations shipped"
    versions = [m.version for m in found]
    assert versions == sorted(versions)
    assert all(v.isdigit() and len(v) == 4 for v in versions)
    assert len(set(versions)) == len(versions)


async def test_0004_keys_logged_events_by_source_and_still_recognises_them(
    services: RunningServices,
) -> None:
    """Rows logged before 0004 get their topic as source and keep their bare id inside (what
    their leads' applied sets and ledger hold): a redelivery of such a message is still
    recognised, while the same id from another source is a new event."""
    name = "leadcycle_migration_0004"
    await drop_database(services.server_dsn, name, marker=TEST_MARKER)
    dsn = await ensure_database(services.server_dsn, name, marker=TEST_MARKER)
    conn = await db.connect(dsn)
    try:
        await conn.execute(
            """CREATE TABLE schema_migrations (version text PRIMARY KEY, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        for m in db.migrations():
            if m.version < "0004":
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2)", m.version, m.name
                )
        at = datetime(2026, 11, 1, tzinfo=UTC)
        await conn.execute(
            """INSERT INTO event_log (event_id, topic, type, subject, lead_id, occurred_at,
                                      source, payload)
               VALUES ('crm-5042', 'events', 'page_view', 'L1', 'L1', $1, 'events:0:7',
                       '{"event_id": "crm-5042"}')""",
            at,
        )
        logged_at = datetime(2026, 11, 2, tzinfo=UTC)
        skewed = datetime(2028, 11, 2, tzinfo=UTC)  # a clock two years ahead
        await conn.execute(
            """INSERT INTO event_log (event_id, topic, type, subject, lead_id, occurred_at,
                                      received_at, source, payload)
               VALUES ('skewed-1', 'events', 'demo_request', 'L1', 'L1', $1, $2, 'events:0:8',
                       '{"event_id": "skewed-1"}')""",
            skewed,
            logged_at,
        )
        applied = await db.migrate(conn)
        assert applied[0].startswith("0004_")
        row = await conn.fetchrow(
            """SELECT source, qualified_id, position, site, stated_occurred_at, occurred_at
                 FROM event_log WHERE event_id = 'crm-5042'"""
        )
        assert dict(row) == {
            "source": "events",
            "qualified_id": "crm-5042",
            "position": "events:0:7",
            "site": None,
            "stated_occurred_at": None,
            "occurred_at": at,
        }

        # Logged before the clamp: now scored at the time it was logged, the stated time kept.
        fixed = await conn.fetchrow(
            """SELECT occurred_at, stated_occurred_at FROM event_log
                WHERE event_id = 'skewed-1'"""
        )
        assert tuple(fixed) == (logged_at, skewed)

        def logged(topic: str) -> LoggedEvent:
            return LoggedEvent(
                event_id="crm-5042",
                source=topic,
                qualified_id=f"{topic}|crm-5042",
                topic=topic,
                type="page_view" if topic == "events" else "sales_outcome",
                subject="L1",
                lead_id="L1",
                anonymous_id=None,
                occurred_at=at,
                stated_occurred_at=None,
                site=None,
                disposition="accepted",
                position=f"{topic}:0:8",
                payload='{"event_id": "crm-5042"}',
            )

        async with conn.transaction():
            new = await store.log_events(conn, [logged("events"), logged("outcomes")])
        assert new == {"outcomes|crm-5042"}  # the redelivery is recognised
        assert await conn.fetchval("SELECT count(*) FROM event_log") == 3
    finally:
        await conn.close()
        await drop_database(services.server_dsn, name, marker=TEST_MARKER)
