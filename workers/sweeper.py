"""The periodic sweep: time-based rules that fire without a new event, and retention.

Safe with several workers: one sweep runs at a time (an advisory lock held for the sweep's
transaction), and lead rows a batch holds are skipped, not waited for. The retention purge
(infra/retention.py) runs after the time rules in a transaction of its own, under the same
lock, so a failed purge never undoes the time rules and each is bounded on its own.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from infra import db, leadstore, store
from infra.retention import purge_expired
from infra.services import Endpoints
from infra.settings import Settings
from infra.shards import lock_world
from scoring.rules import load_rules
from workers.leads import Assignment, LeadProcessor

log = logging.getLogger("leadcycle.sweep")


@dataclass
class SweepReport:
    ran: bool = False
    leads: int = 0
    overdue: int = 0
    outputs: int = 0
    #: Anonymous visitors purged by retention, and their event-log rows emptied.
    purged: int = 0
    purged_events: int = 0


async def sweep_once(
    pool: asyncpg.Pool,
    processor: LeadProcessor,
    *,
    now: datetime,
    limit: int = 2000,
    retention: timedelta | None = None,
) -> tuple[SweepReport, list[int], list[store.OutboxRecord]]:
    """One sweep at ``now``; returns the report and the outbox rows to publish.

    With ``retention``, anonymous visitors that never identified and whose newest event is
    older than ``now - retention`` are purged, at most ``limit`` visitors examined per sweep.
    """
    report = SweepReport()
    rules = processor.rules
    sla_hours = min(
        [s.escalate_after_hours or s.recycle_after_hours for s in rules.sla.values()] or [24.0]
    )
    async with pool.acquire() as conn, conn.transaction():
        if not await leadstore.try_sweep_lock(conn):
            return report, [], []
        report.ran = True
        # The sweep writes leads of every shard: it waits for their owners' batches in flight.
        await lock_world(conn)
        today = now.astimezone(processor.tz).date()
        ids = await leadstore.sweep_candidates(
            conn, now=now, today=today, sla_hours=sla_hours, limit=limit
        )
        outputs = await processor.sweep_leads(conn, ids, now) if ids else []
        overdue = await leadstore.flag_overdue(conn, now=now)
        outputs += [processor.followup_message(r) for r in overdue]
        report.leads, report.overdue, report.outputs = len(ids), len(overdue), len(outputs)
        outbox_ids = await store.add_outbox(conn, outputs)
    if retention is not None:
        async with pool.acquire() as conn, conn.transaction():
            # Taken again: another worker may sweep in between, and both parts are idempotent.
            if await leadstore.try_sweep_lock(conn):
                purged = await purge_expired(conn, cutoff=now - retention, limit=limit)
                report.purged, report.purged_events = purged.visitors, purged.events
    if report.leads or report.overdue or report.purged:
        log.info(
            "sweep at %s: %d leads checked, %d follow-ups overdue, %d anonymous visitors purged",
            now.isoformat(),
            report.leads,
            report.overdue,
            report.purged,
        )
    return report, outbox_ids, outputs


async def run_sweep_once(settings: Settings, endpoints: Endpoints, *, now: datetime) -> SweepReport:
    """One sweep outside the worker (operators, tests): same code, own connections."""
    from aiokafka import AIOKafkaProducer

    rules = load_rules(settings.rules_file)
    processor = LeadProcessor(
        rules, settings.topics, Assignment(settings.rep_list, settings.rep_daily_capacity)
    )
    pool = await db.create_pool(endpoints.database_dsn, size=2)
    producer = AIOKafkaProducer(bootstrap_servers=endpoints.kafka_url, acks="all")
    try:
        report, ids, records = await sweep_once(
            pool, processor, now=now, retention=settings.anonymous_retention
        )
        if records:
            await producer.start()
            futures = [await producer.send(r.topic, r.value, key=r.key) for r in records]
            await asyncio.gather(*futures)
            async with pool.acquire() as conn:
                await store.delete_outbox(conn, ids)
        return report
    finally:
        await producer.stop()
        await pool.close()
