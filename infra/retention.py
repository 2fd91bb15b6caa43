"""Retention of anonymous visitors: the purge the sweep runs (docs/operations.md, "Retention").

A visitor is purged when it is an ``anon:`` subject that never identified (no identity link,
not merged into a lead, no event of its anonymous id ever named a lead or was an
``identify``) and its newest event (by event time) is older than the retention. Its lead row,
ledger (current and superseded), stage history, follow-ups and recycle-pool row are deleted;
its event-log rows stay as the idempotency record with the payload emptied, the subject and
anonymous id blanked and disposition ``purged``: a redelivered or replayed copy of a purged
event still conflicts on the log's key and is not applied again, and every reader of the log
that takes ``disposition = 'accepted'`` (replay, identity stitching, reports) skips them.

Work per call is bounded: :func:`scan` reads at most ``limit`` visitors from a cursor kept in
``retention_cursor`` (so successive sweeps walk all visitors, then start over), and only those
it found expired are locked and purged. The caller holds the sweep lock (one purger at a
time); visitors a batch is working on are skipped (try-locks), and the purge checks every
condition again in the statement that deletes, so an event committed meanwhile keeps its
visitor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

#: Subject written over a purged event's ``anon:<id>``: the log keeps no visitor identifier.
PURGED_SUBJECT = "purged"

# Whether the leads row ``l`` is a visitor the retention applies to at cutoff ``{cutoff}``; the
# scan and, on the locked rows, the purge use it. A CASE so the cheap tests go first and the
# identity checks run only for visitors old enough; scalar subqueries with LIMIT so each check
# is an index probe per visitor (an EXISTS may be planned as a hash of all of event_log).
# ``substr(.., 6)`` strips "anon:".
_EXPIRED = """
    CASE WHEN NOT (l.anonymous AND l.merged_into IS NULL AND l.lead_id LIKE 'anon:%') THEN false
         WHEN coalesce((SELECT max(e.occurred_at) FROM event_log e WHERE e.subject = l.lead_id),
                       l.created_at) >= {cutoff} THEN false
         WHEN (SELECT true FROM identity_links i
                WHERE i.anonymous_id = substr(l.lead_id, 6) LIMIT 1) THEN false
         WHEN (SELECT true FROM event_log e
                WHERE e.anonymous_id = substr(l.lead_id, 6)
                  AND (e.lead_id IS NOT NULL OR e.type = 'identify') LIMIT 1) THEN false
         ELSE true
    END"""


@dataclass(frozen=True)
class Scan:
    """What one scan looked at and found."""

    scanned: int
    expired: list[str]
    #: Where the next scan starts ('' = from the beginning again).
    next_after: str


@dataclass(frozen=True)
class Purged:
    """What one purge removed (rows per table)."""

    visitors: int = 0
    events: int = 0
    ledger: int = 0
    transitions: int = 0
    followups: int = 0


async def scan(conn: asyncpg.Connection, *, cutoff: datetime, limit: int) -> Scan:
    """The next ``limit`` unmerged anonymous visitors after the cursor, and which of them are
    expired at ``cutoff``. Reads only; moves no cursor (see :func:`advance`)."""
    after = await conn.fetchval("SELECT after FROM retention_cursor WHERE id = 1")
    rows = await conn.fetch(
        f"""SELECT l.lead_id, ({_EXPIRED.format(cutoff="$3")}) AS expired
              FROM (SELECT lead_id, anonymous, merged_into, created_at FROM leads
                     WHERE anonymous AND merged_into IS NULL AND lead_id > $1
                     ORDER BY lead_id LIMIT $2) AS l
             ORDER BY l.lead_id""",
        after or "",
        limit,
        cutoff,
    )
    ids = [r["lead_id"] for r in rows]
    next_after = ids[-1] if len(ids) >= limit else ""
    return Scan(len(ids), [r["lead_id"] for r in rows if r["expired"]], next_after)


async def advance(conn: asyncpg.Connection, next_after: str) -> None:
    await conn.execute("UPDATE retention_cursor SET after = $1 WHERE id = 1", next_after)


async def lock_visitors(conn: asyncpg.Connection, lead_ids: list[str]) -> list[str]:
    """Those of ``lead_ids`` no batch is working on, locked for this transaction.

    The row lock is *tried*, never waited for: a visitor a batch is writing is left for a
    later sweep, and the sweep, which already holds other leads' row locks, can never
    deadlock with a batch. A batch that read a visitor the purge then removed finds its row
    gone when it writes (its version check), and is done again from what is left.
    """
    if not lead_ids:
        return []
    rows = await conn.fetch(
        """SELECT lead_id FROM leads WHERE lead_id = ANY($1::text[])
            ORDER BY lead_id FOR UPDATE SKIP LOCKED""",
        sorted(set(lead_ids)),
    )
    return [r["lead_id"] for r in rows]


async def purge(conn: asyncpg.Connection, lead_ids: list[str], *, cutoff: datetime) -> Purged:
    """Purge those of ``lead_ids`` (locked by the caller) that are still expired at
    ``cutoff``, in one statement: the check and every delete see the same snapshot."""
    if not lead_ids:
        return Purged()
    row = await conn.fetchrow(
        f"""WITH doomed AS (
                SELECT l.lead_id FROM leads l
                 WHERE l.lead_id = ANY($1::text[]) AND {_EXPIRED.format(cutoff="$2")}
            ), events AS (
                UPDATE event_log e
                   SET payload = '{{}}'::jsonb, disposition = 'purged',
                       subject = '{PURGED_SUBJECT}', anonymous_id = NULL
                  FROM doomed d WHERE e.subject = d.lead_id
                RETURNING 1
            ), ledger AS (
                DELETE FROM score_ledger x USING doomed d WHERE x.lead_id = d.lead_id
                RETURNING 1
            ), superseded AS (
                DELETE FROM score_ledger_history x USING doomed d WHERE x.lead_id = d.lead_id
                RETURNING 1
            ), transitions AS (
                DELETE FROM stage_transitions x USING doomed d WHERE x.lead_id = d.lead_id
                RETURNING 1
            ), followups AS (
                DELETE FROM followups x USING doomed d WHERE x.lead_id = d.lead_id
                RETURNING 1
            ), pool AS (
                DELETE FROM recycle_pool x USING doomed d WHERE x.lead_id = d.lead_id
                RETURNING 1
            ), visitors AS (
                DELETE FROM leads x USING doomed d WHERE x.lead_id = d.lead_id
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM visitors) AS visitors,
                   (SELECT count(*) FROM events) AS events,
                   (SELECT count(*) FROM ledger) + (SELECT count(*) FROM superseded) AS ledger,
                   (SELECT count(*) FROM transitions) AS transitions,
                   (SELECT count(*) FROM followups) + (SELECT count(*) FROM pool) AS followups
        """,
        sorted(lead_ids),
        cutoff,
    )
    assert row is not None
    return Purged(
        visitors=row["visitors"],
        events=row["events"],
        ledger=row["ledger"],
        transitions=row["transitions"],
        followups=row["followups"],
    )


async def purge_expired(conn: asyncpg.Connection, *, cutoff: datetime, limit: int) -> Purged:
    """One bounded step of retention inside the caller's transaction (which holds the sweep
    lock): scan up to ``limit`` visitors from the cursor, purge the expired ones no batch
    holds, move the cursor on. Visitors skipped as busy are seen again on the next round."""
    found = await scan(conn, cutoff=cutoff, limit=limit)
    locked = await lock_visitors(conn, found.expired)
    purged = await purge(conn, locked, cutoff=cutoff)
    await advance(conn, found.next_after)
    return purged
