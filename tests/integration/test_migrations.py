"""Migrations apply to an empty database, once, and give the expected schema."""

from __future__ import annotations

import asyncio

import pytest

from infra import db
from infra.postgres import drop_database, ensure_database
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
        pk = await conn.fetchval(
            """SELECT a.attname FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                WHERE i.indrelid = 'event_log'::regclass AND i.indisprimary"""
        )
        assert pk == "event_id"
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
