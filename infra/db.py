"""PostgreSQL connections and schema migrations.

Migrations are plain SQL files ``infra/migrations/NNNN_name.sql``, applied in sorted order, one
transaction each, recorded in ``schema_migrations``. An advisory lock serialises concurrent
migrators (several workers starting at once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

from infra.postgres import drop_database, ensure_database

_MIGRATION_LOCK = 0x1EADC7C1  # arbitrary, stable advisory lock id


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The migrations shipped with the package, in the order they apply."""
    found = []
    for entry in resources.files("infra.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(version, rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; return the ones applied (empty when up to date)."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    text PRIMARY KEY,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for migration in migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(f"{migration.version}_{migration.name}")
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns come and go as Python objects.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


async def create_pool(dsn: str, *, size: int = 4) -> asyncpg.Pool:
    pool: Any = await asyncpg.create_pool(
        dsn, min_size=1, max_size=size, init=_init_connection, command_timeout=60
    )
    return pool


async def migrated_database(server_dsn: str, name: str, *, marker: str, fresh: bool = False) -> str:
    """Database ``name`` on the server, migrated; its DSN.

    A database this call creates is marked ``leadcycle:<marker>``. With ``fresh`` an existing
    one is dropped first, but only if it carries that marker (else
    :class:`infra.postgres.NotOurDatabase`): a fresh start never wipes a database leadcycle did
    not create for the same purpose.
    """
    if fresh:
        await drop_database(server_dsn, name, marker=marker)
    dsn = await ensure_database(server_dsn, name, marker=marker)
    conn = await connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn
