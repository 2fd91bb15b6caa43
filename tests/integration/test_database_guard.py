"""The demo and the bench never drop a database they did not create.

Their database names derive from ``LEADCYCLE_DATABASE_NAME``; a database of that name without
their marker (here: one with a table and a row, as a user's would be) makes them stop with an
error, and the row is still there afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from bench import services as bench_services
from infra.postgres import NotOurDatabase, database_marker, drop_database, with_database
from infra.settings import Settings
from tests.conftest import RunningServices
from workers import cli
from workers import demo as demo_module
from workers.demo import demo_database, demo_database_name

pytestmark = pytest.mark.integration


async def make_users_database(server_dsn: str, name: str) -> None:
    """A database as a user would have it: no leadcycle marker, a table, a row."""
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(with_database(server_dsn, name))
    try:
        await conn.execute("CREATE TABLE customers (name text)")
        await conn.execute("INSERT INTO customers VALUES ('precious')")
    finally:
        await conn.close()


async def users_rows(server_dsn: str, name: str) -> list[str]:
    conn = await asyncpg.connect(with_database(server_dsn, name))
    try:
        return [r["name"] for r in await conn.fetch("SELECT name FROM customers")]
    finally:
        await conn.close()


async def remove(server_dsn: str, name: str) -> None:
    """Test cleanup: drop a database directly (the guard would rightly refuse)."""
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def base() -> str:
    """A ``LEADCYCLE_DATABASE_NAME`` of this test's own."""
    return f"lc_guard_{uuid.uuid4().hex[:8]}"


def test_names_derive_from_the_configured_database_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADCYCLE_DATABASE_NAME", "shop")
    name = Settings().database_name
    assert demo_database_name(name) == "shop_demo"
    assert bench_services.bench_database_name(name) == "shop_bench"
    monkeypatch.delenv("LEADCYCLE_DATABASE_NAME")
    assert demo_database_name(Settings().database_name) == "leadcycle_demo"
    monkeypatch.setenv("LEADCYCLE_DATABASE_NAME", "shop; DROP DATABASE x")
    with pytest.raises(ValueError, match="database_name"):
        Settings()


async def test_demo_refuses_to_drop_a_database_it_did_not_create(
    services: RunningServices, base: str
) -> None:
    server, target = services.server_dsn, f"{base}_demo"
    await make_users_database(server, target)
    try:
        with pytest.raises(NotOurDatabase, match=target):
            await demo_database(server, base)
        assert await users_rows(server, target) == ["precious"]
        assert await database_marker(server, target) == ""
    finally:
        await remove(server, target)


async def test_demo_recreates_its_own_database_and_no_one_elses_marker_fits(
    services: RunningServices, base: str
) -> None:
    server, target = services.server_dsn, f"{base}_demo"
    try:
        dsn = await demo_database(server, base)
        assert await database_marker(server, target) == "leadcycle:demo"
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TABLE last_run (n int)")
        await conn.close()
        # The bench's marker is not the demo's: the bench will not drop the demo's database.
        with pytest.raises(NotOurDatabase):
            await drop_database(server, target, marker="bench")
        # The next demo run drops its own previous database and starts empty.
        dsn = await demo_database(server, base)
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT to_regclass('last_run')") is None
        finally:
            await conn.close()
    finally:
        await remove(server, target)


def test_demo_command_exits_non_zero_and_keeps_the_data(
    services: RunningServices, base: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server, target = services.server_dsn, f"{base}_demo"
    asyncio.run(make_users_database(server, target))
    try:
        # The demo's own server discovery, pointed at the test server; the broker is the
        # session's, so the command gets as far as the database and no further.
        monkeypatch.setattr(demo_module, "local_server_dsn", lambda: server)
        result = CliRunner().invoke(
            cli.main,
            ["demo", "--leads", "5"],
            env={
                "LEADCYCLE_DATABASE_NAME": base,
                "LEADCYCLE_KAFKA_URL": services.kafka_url,
                "LEADCYCLE_DATABASE_URL": None,
                "LEADCYCLE_STATE_DIR": str(tmp_path),
            },
        )
        assert result.exit_code != 0
        assert f"refusing to drop database '{target}'" in result.output
        assert asyncio.run(users_rows(server, target)) == ["precious"]
    finally:
        asyncio.run(remove(server, target))


def test_bench_refuses_before_starting_anything(
    services: RunningServices, base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, target = services.server_dsn, f"{base}_bench"
    asyncio.run(make_users_database(server, target))
    try:
        monkeypatch.setenv("LEADCYCLE_DATABASE_NAME", base)
        monkeypatch.setenv("LEADCYCLE_DATABASE_URL", with_database(server, "postgres"))
        with pytest.raises(SystemExit, match=f"refusing to drop database '{target}'"):
            with bench_services.running_services():
                raise AssertionError("the bench started on someone else's database")
        # A pass's fresh database is guarded the same way.
        with pytest.raises(NotOurDatabase):
            asyncio.run(bench_services.recreate_database(server, target))
        assert asyncio.run(users_rows(server, target)) == ["precious"]
    finally:
        asyncio.run(remove(server, target))


async def test_bench_database_is_marked_and_dropped_at_the_end(
    services: RunningServices, base: str
) -> None:
    server, target = services.server_dsn, f"{base}_bench"
    try:
        await bench_services.recreate_database(server, target)
        assert await database_marker(server, target) == "leadcycle:bench"
        assert await drop_database(server, target, marker="bench")
        assert await database_marker(server, target) is None
    finally:
        await remove(server, target)
