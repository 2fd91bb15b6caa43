"""PostgreSQL side of forwarding work between shard owners (infra/shards.py).

An item says what the owner of ``shard`` is to do with ``subject``: apply a logged event to it
(``event``), link a visitor that identified (``link``, for the visitor's owner), credit a
visitor's history to it (``stitch``), merge an email lead into a CRM lead (``claim`` for the
email lead's owner, then ``absorb`` for the CRM lead's). Items are written in the forwarding
batch's transaction and deleted in the taking batch's, so each is done exactly once or, if
that transaction fails, taken again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from scoring.intake import split


@dataclass(frozen=True)
class Item:
    """One forwarded piece of work."""

    shard: int
    kind: str  # event | link | stitch | claim | absorb
    subject: str
    qualified_id: str | None = None
    body: str | None = None  # JSON
    seq: int = 0


async def put(conn: asyncpg.Connection, items: Sequence[Item]) -> None:
    if items:
        await conn.execute(
            """INSERT INTO inbox (shard, kind, subject, qualified_id, body)
               SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[])""",
            [i.shard for i in items],
            [i.kind for i in items],
            [i.subject for i in items],
            [i.qualified_id for i in items],
            [i.body for i in items],
        )


async def take(conn: asyncpg.Connection, shards: Iterable[int], *, limit: int) -> list[Item]:
    """Up to ``limit`` items for these shards, oldest first, deleted in this transaction."""
    wanted = sorted(shards)
    if not wanted:
        return []
    rows = await conn.fetch(
        """DELETE FROM inbox WHERE seq IN (
               SELECT seq FROM inbox WHERE shard = ANY($1::int[]) ORDER BY seq LIMIT $2)
           RETURNING seq, shard, kind, subject, qualified_id, body""",
        wanted,
        limit,
    )
    items = [
        Item(r["shard"], r["kind"], r["subject"], r["qualified_id"], r["body"], r["seq"])
        for r in rows
    ]
    items.sort(key=lambda i: i.seq)
    return items


async def logged_events(
    conn: asyncpg.Connection, qualified_ids: Iterable[str]
) -> dict[str, tuple[str, str, datetime]]:
    """``qualified id -> (topic, payload JSON, time scored at)`` of logged events."""
    keys = [split(q) for q in set(qualified_ids)]
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT e.qualified_id, e.topic, e.payload::text AS payload, e.occurred_at
             FROM unnest($1::text[], $2::text[]) AS k(source, event_id)
             JOIN event_log e ON e.source = k.source AND e.event_id = k.event_id""",
        [s or "events" for s, _ in keys],
        [e for _, e in keys],
    )
    return {r["qualified_id"]: (r["topic"], r["payload"], r["occurred_at"]) for r in rows}
