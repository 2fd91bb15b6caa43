"""Latency at a paced load: from the moment an event is produced to its committed score.

A score is observed when its ``leadcycle.score-changes`` message arrives: the worker publishes
it from the outbox right after the batch's transaction commits, so the figure is produce ->
commit -> publish -> consume, a slight over-estimate of "committed". Only events that change a
score produce such a message; the sample is those events (most page views and all fit changes).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer

from events.topics import TopicNames
from infra.kafka import ensure_topics, producer
from infra.processes import ServiceError
from scoring.intake import split
from workers.traffic import Message

from .load import PARTITIONS, Traffic
from .services import Services, Worker, say, wait_committed

#: Messages sent unpaced first, so the consumer group has joined before the clock matters.
WARMUP = 200


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Latency:
    rate: float  # events/s offered
    sent: int
    observed: int  # events whose score change was seen
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


async def _send(
    kafka_url: str,
    topics: TopicNames,
    messages: list[Message],
    rate: float | None,
    sent_at: dict[str, float],
) -> None:
    """Send ``messages`` at ``rate``/s (in >= 10 ms steps; None = as fast as acks come) and
    remember when each event id went out."""
    prod = producer(kafka_url)
    await prod.start()
    try:
        pending = []
        started = time.monotonic()
        for i, m in enumerate(messages):
            if rate is not None:
                delay = started + i / rate - time.monotonic()
                if delay > 0.01:
                    await asyncio.sleep(delay)
            if m.valid:
                sent_at.setdefault(json.loads(m.value)["event_id"], time.time())
            pending.append(await prod.send(topics.name(m.topic), m.value, key=m.key))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await prod.stop()


async def _observe(
    kafka_url: str,
    topic: str,
    sent_at: dict[str, float],
    seen_at: dict[str, float],
    stop: asyncio.Event,
) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_url,
        group_id=None,
        auto_offset_reset="earliest",
        # The observer measures the worker, not its own fetch: aiokafka's default 500 ms fetch
        # wait added ~130 ms (p50) on tansu when this consumer caught up with the stream.
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.time()
            for records in batches.values():
                for r in records:
                    for entry in json.loads(r.value)["entries"]:
                        # Outputs carry the qualified id (<source>|<event id>).
                        eid = split(entry["event_id"])[1]
                        if eid in sent_at and eid not in seen_at:
                            seen_at[eid] = now
    finally:
        await consumer.stop()


async def _measure(
    services: Services, traffic: Traffic, topics: TopicNames, rate: float, worker: Worker
) -> Latency:
    sent_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    stop = asyncio.Event()
    observer = asyncio.create_task(
        _observe(services.kafka_url, topics.score_changes, sent_at, seen_at, stop)
    )
    warmup, rest = traffic.messages[:WARMUP], traffic.messages[WARMUP:]
    try:
        # The worker joins its group meanwhile: the clock starts once the warm-up is committed.
        await _send(services.kafka_url, topics, warmup, None, sent_at)
        await wait_committed(
            services.dsn,
            events=len({json.loads(m.value)["event_id"] for m in warmup if m.valid}),
            letters=sum(1 for m in warmup if not m.valid),
            workers=[worker],
            seconds=120,
        )
        warm = set(sent_at)
        say(f"latency: warm-up committed; pacing {len(rest):,} messages at {rate:,.0f}/s")
        await _send(services.kafka_url, topics, rest, rate, sent_at)
        await wait_committed(
            services.dsn,
            events=traffic.distinct_valid,
            letters=traffic.invalid,
            workers=[worker],
            seconds=300,
        )
        await asyncio.sleep(2.0)  # the last batch's outbox publish and our fetch
    finally:
        stop.set()
        await observer
    lat = [(seen_at[e] - sent_at[e]) * 1000 for e in seen_at if e not in warm]
    if not lat:
        raise ServiceError(f"no score change observed:\n{worker.tail()}")
    return Latency(
        rate,
        len(sent_at),
        len(lat),
        percentile(lat, 50),
        percentile(lat, 99),
        percentile(lat, 99.9),
        max(lat),
    )


def run_latency(
    services: Services,
    traffic: Traffic,
    *,
    rate: float,
    prefix: str,
    group: str,
    worker_env: dict[str, str],
) -> Latency:
    """Fresh database and topics; one worker; ``traffic`` produced at ``rate`` events/s."""
    topics = TopicNames(prefix)
    services.fresh_database()
    asyncio.run(ensure_topics(services.kafka_url, topics.all(), partitions=PARTITIONS))
    worker = Worker(services, app_id=group, prefix=prefix, **worker_env).start()
    try:
        result = asyncio.run(_measure(services, traffic, topics, rate, worker))
    finally:
        worker.stop()
    say(
        f"latency at {rate:,.0f}/s: p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms "
        f"({result.observed} events observed)"
    )
    return result
