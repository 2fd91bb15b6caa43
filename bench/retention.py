"""What an anonymous visitor costs in PostgreSQL, before and after the retention purge.

``python -m bench.retention [--visitors N] [--events K]``: in a scratch database (marked
``leadcycle:bench``, dropped at the end) N anonymous visitors with K page views each, shaped like
the tracker's (url, title, referrer, user agent, IP, locale), go through the worker's own write
path (``Ingestor`` + ``LeadProcessor``, batches of 2,000; outputs are discarded, no broker);
their event times lie 500 days back. Then one retention step purges them all. It prints the
bytes per visitor (``pg_total_relation_size`` summed over every table, indexes and TOAST
included, minus the empty schema): after ingest, right after the purge, after ``VACUUM`` and
after ``VACUUM FULL`` (what a purged visitor still occupies: its events' tombstones).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.services import MARKER, _server_dsn, bench_database_name
from infra import db, retention
from infra.postgres import drop_database
from infra.settings import Settings
from infra.store import OutboxRecord
from scoring.rules import load_rules
from workers.bots import DEFAULT_BOT_PATTERN, BotFilter
from workers.ingest import Incoming, Ingestor
from workers.leads import Assignment, LeadProcessor

NOW = datetime.now(UTC).replace(microsecond=0)
PAGES = [
    ("/pricing", "Pricing - Example"),
    ("/product/scoring", "Lead scoring - Example"),
    ("/blog/recycling-leads", "Recycling lost leads: a guide - Example blog"),
    ("/customers", "Customer stories - Example"),
    ("/", "Example - revenue automation for B2B teams"),
]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
]


class Discard:
    """Outputs go nowhere: this measures storage, not delivery."""

    async def publish(self, records: Sequence[OutboxRecord]) -> None:
        return None


def visitors(n: int, k: int, seed: int = 11) -> list[Incoming]:
    rng = random.Random(seed)
    out: list[Incoming] = []
    for v in range(n):
        anon = f"a-{rng.getrandbits(64):016x}"
        at = NOW - timedelta(days=500, minutes=rng.randint(0, 60 * 24 * 30))
        context = {
            "user_agent": rng.choice(AGENTS),
            "ip": f"203.0.113.{rng.randint(1, 254)}",
            "locale": "en-US",
        }
        ref = "https://www.google.com/"
        for _ in range(k):
            path, title = rng.choice(PAGES)
            doc = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "type": "page_view",
                "occurred_at": at.isoformat(),
                "anonymous_id": anon,
                "properties": {
                    "url": f"https://example.com{path}",
                    "title": title,
                    "referrer": ref,
                },
                "context": context,
            }
            ref = f"https://example.com{path}"
            at += timedelta(seconds=rng.randint(10, 240))
            out.append(Incoming("events", v % 4, len(out), anon.encode(), json.dumps(doc).encode()))
    return out


async def size(conn: asyncpg.Connection) -> dict[str, int]:
    """Bytes per table (heap, indexes, TOAST) in the public schema."""
    rows = await conn.fetch(
        """SELECT c.relname, pg_total_relation_size(c.oid) AS bytes FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY c.relname"""
    )
    return {r["relname"]: int(r["bytes"]) for r in rows}


def per_visitor(now: dict[str, int], empty: dict[str, int], n: int) -> float:
    return (sum(now.values()) - sum(empty.values())) / n


async def measure(n: int, k: int) -> list[str]:
    server = _server_dsn()
    name = f"{bench_database_name(Settings().database_name)}_retention"
    dsn = await db.migrated_database(server, name, marker=MARKER, fresh=True)
    pool = await db.create_pool(dsn, size=2)
    try:
        settings = Settings()
        processor = LeadProcessor(
            load_rules(settings.rules_file), settings.topics, Assignment(("rep-1",), 25)
        )
        ingestor = Ingestor(
            pool,
            settings.topics,
            Discard(),
            max_message_bytes=settings.max_message_bytes,
            bots=BotFilter(DEFAULT_BOT_PATTERN),
            apply=processor.apply_events,
        )
        async with pool.acquire() as conn:
            # Vacuumed first too, so the free-space and visibility maps VACUUM adds to every
            # table are in the baseline, not counted against the visitors.
            await conn.execute("VACUUM ANALYZE")
            empty = await size(conn)
        messages = visitors(n, k)
        for i in range(0, len(messages), 2000):
            await ingestor.handle(messages[i : i + 2000])
        await ingestor.drain()
        lines = [f"{n:,} anonymous visitors x {k} page views, bytes per visitor:"]
        async with pool.acquire() as conn:
            await conn.execute("VACUUM ANALYZE")
            full = await size(conn)
            lines.append(f"  stored                 {per_visitor(full, empty, n):8,.0f}")
            async with conn.transaction():
                purged = await retention.purge_expired(
                    conn, cutoff=NOW - timedelta(days=395), limit=n + 1
                )
            assert purged.visitors == n, purged
            after = await size(conn)
            lines.append(f"  right after the purge  {per_visitor(after, empty, n):8,.0f}")
            await conn.execute("VACUUM")
            vacuumed = await size(conn)
            lines.append(
                f"  after VACUUM           {per_visitor(vacuumed, empty, n):8,.0f}"
                "  (freed space is reused by new rows, not returned to the OS)"
            )
            await conn.execute("VACUUM FULL")
            compact = await size(conn)
            lines.append(f"  after VACUUM FULL      {per_visitor(compact, empty, n):8,.0f}")
        lines.append("  per table (stored -> after VACUUM FULL), bytes per visitor:")
        for table in sorted(full, key=lambda t: full[t] - empty[t], reverse=True):
            grown = (full[table] - empty[table]) / n
            if grown >= 1:
                kept = (compact[table] - empty[table]) / n
                lines.append(f"    {table:<22} {grown:8,.0f} -> {kept:6,.0f}")
        return lines
    finally:
        await pool.close()
        await drop_database(server, name, marker=MARKER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visitors", type=int, default=5000)
    parser.add_argument("--events", type=int, default=1, help="page views per visitor")
    args = parser.parse_args(argv)
    print("\n".join(asyncio.run(measure(args.visitors, args.events))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
