"""PostgreSQL repository of the ingest path: one round trip per table per batch, never per event."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import asyncpg


class LoggedEvent(NamedTuple):
    """An accepted input event as the event log stores it (fields in the staging table's
    column order: the rows go to COPY as they are)."""

    event_id: str  # the producer's id
    #: Where ``event_id`` is unique: the topic, or ``http:<site>`` (``scoring.intake``).
    source: str
    #: ``<source>|<event_id>``: the id the scoring core, ledger and stage history use.
    qualified_id: str
    topic: str
    type: str
    subject: str
    lead_id: str | None
    anonymous_id: str | None
    #: The time the event is scored at (the stated time, unless that was too far ahead).
    occurred_at: datetime
    #: ``occurred_at`` as the producer stated it, when it was replaced; else None.
    stated_occurred_at: datetime | None
    site: str | None  # the collector site that received it; None: a Kafka producer
    disposition: str
    position: str  # topic:partition:offset it was read from
    payload: str  # the event as received, JSON text

    @property
    def key(self) -> str:
        """The idempotency key, ``(source, event_id)``, as one string: the qualified id."""
        return self.qualified_id


@dataclass(frozen=True)
class DeadLetterRow:
    message_id: str
    source_topic: str
    partition: int
    offset: int
    reason: str
    error: str
    payload_size: int


@dataclass(frozen=True)
class OutboxRecord:
    topic: str
    key: bytes | None
    value: bytes


_STAGE_EVENTS = """
CREATE TEMP TABLE IF NOT EXISTS stage_event_log (
    event_id text, source text, qualified_id text, topic text, type text, subject text,
    lead_id text, anonymous_id text, occurred_at timestamptz, stated_occurred_at timestamptz,
    site text, disposition text, position text, payload text
) ON COMMIT DELETE ROWS"""


async def log_events(conn: asyncpg.Connection, rows: Sequence[LoggedEvent]) -> set[str]:
    """Insert events not seen before; return the qualified ids (``source|event_id``, one per
    key) of those that were new (in this transaction).

    ``(event_id, source)`` is the primary key, so duplicates inside the batch, redeliveries
    and replays all come back as "not new" and are not applied again, while the same id from
    another source is another event.
    """
    if not rows:
        return set()
    await conn.execute(_STAGE_EVENTS)
    await conn.copy_records_to_table("stage_event_log", records=rows)
    inserted = await conn.fetch(
        """INSERT INTO event_log (event_id, source, qualified_id, topic, type, subject, lead_id,
                                  anonymous_id, occurred_at, stated_occurred_at, site,
                                  disposition, position, payload)
           SELECT DISTINCT ON (event_id, source) event_id, source, qualified_id, topic, type,
                  subject, lead_id, anonymous_id, occurred_at, stated_occurred_at, site,
                  disposition, position, payload::jsonb
             FROM stage_event_log
         ORDER BY event_id, source
           ON CONFLICT (event_id, source) DO NOTHING
        RETURNING qualified_id"""
    )
    return {r[0] for r in inserted}


async def record_dead_letters(conn: asyncpg.Connection, rows: Sequence[DeadLetterRow]) -> int:
    """Store rejections; return how many were new (a replayed batch counts none twice)."""
    if not rows:
        return 0
    inserted = await conn.fetch(
        """INSERT INTO dead_letters (message_id, source_topic, partition, "offset", reason,
                                     error, payload_size)
           SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::text[],
                                $6::text[], $7::int[])
           ON CONFLICT (message_id) DO NOTHING
        RETURNING message_id""",
        [r.message_id for r in rows],
        [r.source_topic for r in rows],
        [r.partition for r in rows],
        [r.offset for r in rows],
        [r.reason for r in rows],
        [r.error for r in rows],
        [r.payload_size for r in rows],
    )
    return len(inserted)


async def add_outbox(conn: asyncpg.Connection, records: Sequence[OutboxRecord]) -> list[int]:
    if not records:
        return []
    rows = await conn.fetch(
        """INSERT INTO outbox (topic, key, value)
           SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])
        RETURNING id""",
        [r.topic for r in records],
        [r.key for r in records],
        [r.value for r in records],
    )
    return [r["id"] for r in rows]


async def claim_outbox(
    conn: asyncpg.Connection, *, limit: int, older_than_seconds: float
) -> list[tuple[int, OutboxRecord]]:
    """Outbox rows left behind (by a crash between commit and publish), locked for this relay."""
    rows = await conn.fetch(
        """SELECT id, topic, key, value FROM outbox
            WHERE created_at < now() - make_interval(secs => $2)
            ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED""",
        limit,
        older_than_seconds,
    )
    return [(r["id"], OutboxRecord(r["topic"], r["key"], r["value"])) for r in rows]


async def delete_outbox(conn: asyncpg.Connection, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", list(ids))
