"""Building call lists over 100k open follow-ups: the query a rep's screen and the CLI run.

The follow-ups are synthesised (COPY, with the context a real one carries) because a few
minutes of generated traffic opens only thousands; the query and its indexes are the product's
(infra/calllist.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from infra.calllist import open_followups

REPS = ("rep-1", "rep-2", "rep-3")


@dataclass(frozen=True)
class CallLists:
    followups: int
    all_ms: float  # every open follow-up, ordered, as CallListEntry objects
    rep_today_ms: float  # one rep, due by the end of today (what the call-list page shows)
    rep_today_rows: int
    top50_ms: float  # the first 50 for one rep


async def _seed(conn: asyncpg.Connection, n: int, rng: random.Random) -> None:
    now = datetime.now(UTC)
    leads, followups = [], []
    for i in range(n):
        lead_id = f"bench-lead-{i}"
        leads.append(
            (
                lead_id,
                "sales_accepted",
                now,
                f"Company {i % 5000}",
                "部長",
                f"p{i}@x.example",
                "A",
                "webinar",
                now,
                "bench",
                "{}",
            )
        )
        ctx = {
            "company": f"Company {i % 5000}",
            "recent_activities": ["page_view: pricing", "download: whitepaper", "webinar"],
            "unknown_bant": ["budget", "timeline"],
            "previous_lost_reason": "timing" if i % 7 == 0 else None,
            "reason": "mql",
        }
        followups.append(
            (
                f"fu-{i}",
                lead_id,
                "open",
                "hot activity on pricing",
                rng.uniform(20, 95),
                now + timedelta(minutes=rng.randrange(-2 * 1440, 14 * 1440)),
                REPS[i % 3] if i % 10 else None,
                json.dumps(ctx),
                now,
                now,
            )
        )
    await conn.copy_records_to_table(
        "leads",
        records=leads,
        columns=[
            "lead_id",
            "stage",
            "stage_since",
            "company_name",
            "job_title",
            "email",
            "grade",
            "source",
            "scored_at",
            "rules_version",
            "state",
        ],
    )
    await conn.copy_records_to_table(
        "followups",
        records=followups,
        columns=[
            "followup_id",
            "lead_id",
            "status",
            "why_now",
            "priority",
            "due_at",
            "assignee",
            "context",
            "created_at",
            "updated_at",
        ],
    )
    await conn.execute("ANALYZE leads; ANALYZE followups")


async def _timed(repeat: int, run: object) -> tuple[float, int]:
    """Median wall time (ms) of ``repeat`` runs of the coroutine factory ``run``."""
    assert callable(run)
    times, rows = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = len(await run())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), rows


async def _measure(dsn: str, n: int) -> CallLists:
    conn = await asyncpg.connect(dsn)
    try:
        await _seed(conn, n, random.Random(7))
        today = datetime.now(UTC).date()
        all_ms, _ = await _timed(3, lambda: open_followups(conn))
        rep_ms, rep_rows = await _timed(
            5, lambda: open_followups(conn, rep="rep-1", day=today, tz="UTC")
        )
        top_ms, _ = await _timed(5, lambda: open_followups(conn, rep="rep-1", limit=50))
    finally:
        await conn.close()
    return CallLists(n, all_ms, rep_ms, rep_rows, top_ms)


def run_calllists(dsn: str, followups: int) -> CallLists:
    """``dsn`` must be an empty, migrated database."""
    return asyncio.run(_measure(dsn, followups))
