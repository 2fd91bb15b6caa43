"""PostgreSQL side of ``leadcycle replay``: read the event log and lead state in one snapshot,
write the rescored state and ledger back.

Every function runs inside the caller's REPEATABLE READ transaction, so everything it reads is
one consistent snapshot (the worker writes event_log, leads and score_ledger in one
transaction per batch), and a lead row the worker changed after that snapshot makes the write
fail with a serialization error instead of overwriting the worker's decision.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from infra.leadstore import LEDGER_COLUMNS, LEDGER_TYPES
from scoring.ledger import LedgerEntry
from scoring.state import legacy_event_key


@dataclass(frozen=True)
class ScoreRow:
    """The score columns of one ``leads`` row, and its whole state."""

    lead_id: str
    fit_score: float
    grade: str
    behaviour_score: float
    priority: float
    scored_at: datetime
    rules_version: str
    state: str  # the stored form (scoring.state.encode)


async def count_events(conn: asyncpg.Connection) -> int:
    """Accepted events in the log (bots are logged, never scored)."""
    return int(await conn.fetchval("SELECT count(*) FROM event_log WHERE disposition = 'accepted'"))


async def events(conn: asyncpg.Connection, *, page: int) -> AsyncIterator[list[asyncpg.Record]]:
    """Accepted events as ``(topic, payload, qualified_id, occurred_at)`` pages, by event time
    then id: one server-side cursor, so the log is sorted once and never held whole in memory.

    ``qualified_id`` and ``occurred_at`` are what the worker scored the event by and at (the
    payload is the event as received: its ``event_id`` is only unique within its source, and
    its ``occurred_at`` may be a skewed clock's)."""
    cursor = await conn.cursor(
        """SELECT topic, payload::text AS payload, qualified_id, occurred_at FROM event_log
            WHERE disposition = 'accepted' ORDER BY occurred_at, qualified_id"""
    )
    while rows := await cursor.fetch(page):
        yield rows


async def links(conn: asyncpg.Connection) -> dict[str, str]:
    """anonymous id -> lead, as the worker linked them (the first identify it processed)."""
    rows = await conn.fetch("SELECT anonymous_id, lead_id FROM identity_links")
    return {r["anonymous_id"]: r["lead_id"] for r in rows}


async def identify_assignments(conn: asyncpg.Connection) -> dict[str, str]:
    """qualified event id -> lead, for ``identify`` (and signed ``unsubscribe``) events that
    carried an email but no lead id.

    The worker sent such an event to the lead with that email *at the time*; it notes which
    in the event's ``resolved_to``. Events logged before that column existed (migration 0006)
    are found the way earlier versions did: the lead whose state, still in the first stored
    format, lists the event's digest.
    """
    found = await conn.fetch(
        """SELECT qualified_id AS event_id, payload->>'email' AS email, resolved_to
             FROM event_log
            WHERE topic = 'events' AND type IN ('identify', 'unsubscribe') AND lead_id IS NULL
              AND disposition = 'accepted' AND payload->>'email' IS NOT NULL"""
    )
    out = {r["event_id"]: r["resolved_to"] for r in found if r["resolved_to"] is not None}
    legacy = [r for r in found if r["resolved_to"] is None]
    if not legacy:
        return out
    rows = await conn.fetch(
        """SELECT x.event_id, l.lead_id
             FROM unnest($1::text[], $2::text[], $3::text[]) AS x(event_id, email, key)
             JOIN leads l ON l.email = x.email AND NOT l.anonymous
                         AND l.state::jsonb->'applied' ? x.key""",
        [r["event_id"] for r in legacy],
        [r["email"] for r in legacy],
        [legacy_event_key(r["event_id"]) for r in legacy],
    )
    out.update({r["event_id"]: r["lead_id"] for r in rows})
    return out


async def recycled_leads(conn: asyncpg.Connection) -> set[str]:
    """Leads whose state carries recycle information (their ``gained`` is rebuilt)."""
    rows = await conn.fetch(
        """SELECT lead_id FROM leads
            WHERE merged_into IS NULL AND jsonb_typeof(state::jsonb->'recycle') = 'object'"""
    )
    return {r["lead_id"] for r in rows}


async def stored_states(
    conn: asyncpg.Connection, *, page: int
) -> AsyncIterator[list[asyncpg.Record]]:
    """``(lead_id, state)`` of every lead and unmerged anonymous visitor, in pages."""
    cursor = await conn.cursor(
        """SELECT lead_id, state FROM leads WHERE merged_into IS NULL ORDER BY lead_id"""
    )
    while rows := await cursor.fetch(page):
        yield rows


async def lock_leads(conn: asyncpg.Connection, lead_ids: Sequence[str]) -> None:
    """Row-lock the leads about to be rewritten, in lead id order (the order a worker's batch
    locks them in, so the two cannot deadlock). A row changed since the snapshot raises
    ``SerializationError``; a row a batch holds is waited for first."""
    await conn.execute(
        """SELECT 1 FROM leads WHERE lead_id = ANY($1::text[]) ORDER BY lead_id FOR UPDATE""",
        sorted(lead_ids),
    )


async def write_scores(conn: asyncpg.Connection, rows: Sequence[ScoreRow]) -> None:
    """Replace the score columns and state of these leads; every other column stays."""
    if not rows:
        return
    await conn.execute(
        """CREATE TEMP TABLE replay_scores (lead_id text, fit_score float8, grade text,
               behaviour_score float8, priority float8, scored_at timestamptz,
               rules_version text, state text) ON COMMIT DROP"""
    )
    await conn.copy_records_to_table(
        "replay_scores",
        records=[
            (
                r.lead_id,
                r.fit_score,
                r.grade,
                r.behaviour_score,
                r.priority,
                r.scored_at,
                r.rules_version,
                r.state,
            )
            for r in rows
        ],
    )
    await conn.execute(
        """UPDATE leads l SET fit_score = s.fit_score, grade = s.grade,
                  behaviour_score = s.behaviour_score, priority = s.priority,
                  scored_at = s.scored_at, rules_version = s.rules_version,
                  state = s.state, updated_at = now()
             FROM replay_scores s WHERE l.lead_id = s.lead_id"""
    )


_LEDGER_COLUMNS = ", ".join(LEDGER_COLUMNS)


async def stage_ledger(conn: asyncpg.Connection, entries: Sequence[LedgerEntry]) -> None:
    """Add replayed ledger entries to this transaction's staging table (created on first use)."""
    defs = ", ".join(f"{c} {LEDGER_TYPES.get(c, 'text')}" for c in LEDGER_COLUMNS)
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS replay_ledger ({defs}) ON COMMIT DROP")
    if entries:
        await conn.copy_records_to_table(
            "replay_ledger", records=entries, columns=list(LEDGER_COLUMNS)
        )


async def forward_staged(conn: asyncpg.Connection, merges: Sequence[tuple[str, str]]) -> None:
    """Give the staged entries of each ``(absorbed, survivor)`` merged lead to its survivor."""
    if merges:
        await stage_ledger(conn, [])  # the staging table, if no page made it yet
        await conn.execute(
            """UPDATE replay_ledger r SET lead_id = x.s
                 FROM unnest($1::text[], $2::text[]) AS x(a, s) WHERE r.lead_id = x.a""",
            [a for a, _ in merges],
            [s for _, s in merges],
        )


async def replace_ledger(
    conn: asyncpg.Connection, lead_ids: Sequence[str], *, version: str, at: datetime
) -> tuple[int, int]:
    """Move these leads' ledger entries to ``score_ledger_history`` and put the staged ones in
    their place. Returns ``(archived, inserted)``."""
    ids = sorted(lead_ids)
    if not ids:
        return 0, 0
    archived = await conn.fetchval(
        f"""WITH gone AS (DELETE FROM score_ledger WHERE lead_id = ANY($1::text[])
                          RETURNING {_LEDGER_COLUMNS}, recorded_at)
            , kept AS (INSERT INTO score_ledger_history ({_LEDGER_COLUMNS}, recorded_at,
                                                          superseded_at, superseded_by)
                       SELECT {_LEDGER_COLUMNS}, recorded_at, $2, $3 FROM gone RETURNING 1)
            SELECT count(*) FROM kept""",
        ids,
        at,
        version,
    )
    status = await conn.execute(
        f"""INSERT INTO score_ledger ({_LEDGER_COLUMNS})
            SELECT {_LEDGER_COLUMNS} FROM replay_ledger WHERE lead_id = ANY($1::text[])""",
        ids,
    )
    return int(archived), int(status.split()[-1])
