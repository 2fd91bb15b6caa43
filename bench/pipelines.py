"""The reference pipelines leadcycle is compared with, each on the same pre-loaded topics.

- :func:`bare_consume`: aiokafka ``getmany`` + ``json.loads`` (optionally + the pydantic
  decoder): what the Kafka client alone can deliver to Python — the client ceiling.
- :func:`faust_noop`: a faust agent with leadcycle's own app settings and ``take_events`` whose
  body does nothing (bench/faustnoop.py) — faust's own per-event ceiling.
- :func:`naive_worker`: one read-modify-write PostgreSQL transaction per event, the design
  leadcycle's batching replaces — the floor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer

from events import BehaviourTracked, Rejection, decode
from events.decode import InputEvent
from events.topics import TopicNames
from infra.leadstore import LEDGER_COLUMNS
from infra.processes import ServiceError
from scoring.engine import apply
from scoring.rules import RuleSet
from scoring.scores import behaviour_score, priority
from scoring.state import ANON_PREFIX, LeadState, decode_state, encode_state
from workers.bots import BotFilter

from .services import ROOT, Progress

MAX_BYTES = 64 * 1024


def _consumer(kafka_url: str, group: str, topics: TopicNames) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics.inputs(),
        bootstrap_servers=kafka_url,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


async def bare_consume(
    kafka_url: str, topics: TopicNames, *, group: str, total: int, validate: bool
) -> Progress:
    """Read ``total`` records (counted, not judged by end offsets) and parse each one."""
    consumer = _consumer(kafka_url, group, topics)
    await consumer.start()
    prefix = topics.prefix
    seen = 0
    first: tuple[float, int] | None = None
    try:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, records in batches.items():
                suffix = tp.topic.removeprefix(prefix)
                for r in records:
                    if validate:
                        decode(suffix, r.value, max_bytes=MAX_BYTES)
                    else:
                        try:
                            json.loads(r.value or b"")
                        except ValueError:
                            pass  # broken messages count as read; they are part of the stream
                seen += len(records)
            if seen and first is None:
                first = (time.monotonic(), seen)
    finally:
        await consumer.stop()
    assert first is not None
    return Progress(first[0], first[1], time.monotonic(), seen)


@dataclass(frozen=True)
class FaustSettings:
    batch_size: int
    batch_within: float


def faust_noop(
    kafka_url: str,
    topics: TopicNames,
    *,
    group: str,
    total: int,
    state_dir: Path,
    settings: FaustSettings,
    timeout: float,
) -> Progress:
    """Run bench/faustnoop.py as its own process until it has seen ``total`` records."""
    result = state_dir / f"{group}.json"
    env = {
        **os.environ,
        "BENCH_KAFKA_URL": kafka_url,
        "BENCH_APP_ID": group,
        "BENCH_TOPICS": ",".join(topics.inputs()),
        "BENCH_EXPECTED": str(total),
        "BENCH_RESULT": str(result),
        "BENCH_STATE_DIR": str(state_dir / group),
        "BENCH_BATCH_SIZE": str(settings.batch_size),
        "BENCH_BATCH_WITHIN": str(settings.batch_within),
    }
    log_path = state_dir / f"{group}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.faustnoop", "worker", "--loglevel", "warn"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while not result.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise ServiceError(f"the faust no-op agent did not finish:\n{tail}")
            time.sleep(0.2)
        doc = json.loads(result.read_text())
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return Progress(doc["first_at"], doc["first_rows"], doc["done_at"], doc["total"])


# -- the naive worker --------------------------------------------------------------------------

_LOG_EVENT = """
INSERT INTO event_log (event_id, source, qualified_id, topic, type, subject, lead_id,
                       anonymous_id, occurred_at, disposition, position, payload)
VALUES ($1, $2, $2 || '|' || $1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb)
ON CONFLICT (event_id, source) DO NOTHING RETURNING event_id"""
_SAVE_LEAD = """
INSERT INTO leads (lead_id, anonymous, stage, stage_since, fit_score, grade, behaviour_score,
                   priority, scored_at, rules_version, state)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (lead_id) DO UPDATE SET stage = EXCLUDED.stage, stage_since = EXCLUDED.stage_since,
    fit_score = EXCLUDED.fit_score, grade = EXCLUDED.grade,
    behaviour_score = EXCLUDED.behaviour_score, priority = EXCLUDED.priority,
    scored_at = EXCLUDED.scored_at, state = EXCLUDED.state, updated_at = now()"""
_LEDGER = f"""
INSERT INTO score_ledger ({", ".join(LEDGER_COLUMNS)})
VALUES ({", ".join(f"${i + 1}" for i in range(len(LEDGER_COLUMNS)))}) ON CONFLICT DO NOTHING"""
_DEAD_LETTER = """
INSERT INTO dead_letters (message_id, source_topic, partition, "offset", reason, error,
                          payload_size)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"""


def _subject(event: InputEvent) -> str:
    # No identity stitching: the naive design would need yet more round trips for it.
    if isinstance(event, BehaviourTracked) and not event.lead_id:
        return f"{ANON_PREFIX}{event.anonymous_id or event.email}"
    return event.lead_id or ""


async def _naive_one(
    conn: asyncpg.Connection,
    topic: str,
    position: tuple[str, int, int],
    raw: bytes,
    rules: RuleSet,
    bots: BotFilter,
) -> None:
    event = decode(topic, raw, max_bytes=MAX_BYTES)
    now = datetime.now(UTC)
    async with conn.transaction():
        if isinstance(event, Rejection):
            name, part, offset = position
            await conn.execute(
                _DEAD_LETTER,
                f"{name}:{part}:{offset}",
                name,
                part,
                offset,
                event.reason,
                event.error,
                len(raw),
            )
            return
        bot = isinstance(event, BehaviourTracked) and bots.is_bot(
            event.context.user_agent if event.context else None
        )
        subject = _subject(event)
        new = await conn.fetchval(
            _LOG_EVENT,
            event.event_id,
            topic,
            event.type,
            subject,
            event.lead_id,
            getattr(event, "anonymous_id", None),
            event.occurred_at,
            "bot" if bot else "accepted",
            ":".join(map(str, position)),
            event.model_dump_json(exclude_unset=True),
        )
        if new is None or bot:
            return
        text = await conn.fetchval("SELECT state FROM leads WHERE lead_id = $1 FOR UPDATE", subject)
        state = decode_state(text) if text else LeadState.new(subject, now=now)
        decision = apply(state, event, rules, now=now)
        s = decision.state
        await conn.execute(
            _SAVE_LEAD,
            s.lead_id,
            s.anonymous,
            s.stage,
            s.stage_since,
            s.fit_score,
            s.fit_grade,
            behaviour_score(s, now, rules),
            priority(s, now, rules),
            now,
            s.rules_version or rules.version,
            encode_state(s),
        )
        if decision.ledger:
            await conn.executemany(_LEDGER, decision.ledger)


async def naive_worker(
    kafka_url: str, topics: TopicNames, dsn: str, rules: RuleSet, *, group: str, limit: int
) -> Progress:
    """Process the first ``limit`` records one transaction each (it is slow: a sample will do)."""
    consumer = _consumer(kafka_url, group, topics)
    conn = await asyncpg.connect(dsn)
    await consumer.start()
    bots = BotFilter()
    prefix = topics.prefix
    done = 0
    first: tuple[float, int] | None = None
    try:
        while done < limit:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for tp, records in batches.items():
                for r in records:
                    if done >= limit:
                        break
                    topic = tp.topic.removeprefix(prefix)
                    await _naive_one(
                        conn,
                        topic,
                        (tp.topic, tp.partition, r.offset),
                        r.value or b"",
                        rules,
                        bots,
                    )
                    done += 1
                    if first is None:
                        first = (time.monotonic(), done)
    finally:
        await consumer.stop()
        await conn.close()
    assert first is not None
    return Progress(first[0], first[1], time.monotonic(), done)
