"""Restart the memory broker mid-run while the worker keeps running.

1. publish the first part of the stream and wait until PostgreSQL holds all of it;
2. stop tansu and start it again on the same port: topics, offsets and the group are gone;
3. wait for the *worker* to recreate the topics (its relay timer does; the drill creates none);
4. publish the rest to the new, empty log and wait until PostgreSQL holds everything.

PostgreSQL is the system of record, so the result must equal one uninterrupted run. A worker
that stops reading part of the new log is reported as a stall: which partitions, which
offsets were never committed, and the counts when the drill gave up.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from bench.load import make_traffic
from events.topics import TopicNames

from .harness import DrillConfig, Feed, Rig, present_ids
from .report import DrillResult, say
from .verify import conclude, event_id, expect, wait_all_in


async def run(cfg: DrillConfig) -> DrillResult:
    result = DrillResult("broker-restart")
    started = time.monotonic()
    leads, stall_after = (200, 60.0) if cfg.quick else (1200, 120.0)
    traffic = make_traffic(leads=leads, seed=cfg.seed, events=None)
    half = len(traffic.messages) // 2
    first, rest = traffic.messages[:half], traffic.messages[half:]
    exp_first = expect((m.topic, m.value) for m in first)
    exp = expect((m.topic, m.value) for m in traffic.messages)
    async with Rig("broker", cfg) as rig:
        broker = rig.broker()
        dsn = await rig.database(await rig.server())
        await rig.topics_on(broker.url)
        sup = await rig.supervisor(broker.url, dsn, LEADCYCLE_BATCH_SIZE="500")
        await Feed(broker.url, rig.topics, first).run()
        if await wait_all_in(dsn, exp_first, sup, result, seconds=120) is None:
            result.fail("part 1 was never committed, so the broker was not restarted")
            await conclude(dsn, sup, exp, result)
            result.seconds = time.monotonic() - started
            return result
        say(f"broker-restart: part 1 ({len(first):,} messages) committed; restarting tansu")
        pid = sup.current.pid
        down = time.monotonic()
        broker.stop()
        broker.start()
        back = time.monotonic()
        result.notes.append(f"tansu down for {back - down:.2f} s (memory store: all topics gone)")
        recreated = await _wait_topics(broker.url, rig.topics, seconds=60)
        if recreated is None:
            result.fail("the worker did not recreate the topics within 60 s")
        else:
            result.recovery["topics recreated"] = recreated
            result.notes.append(
                f"partitions after recreation: {await _partitions(broker.url, rig.topics)}"
            )
        feed = Feed(broker.url, rig.topics, rest)
        await feed.run()
        say(f"broker-restart: part 2 ({len(rest):,} messages) published; waiting")
        waited = await wait_all_in(dsn, exp, sup, result, seconds=stall_after)
        if waited is not None:
            result.recovery["broker back->all committed"] = time.monotonic() - back
        else:
            missing = await _missing(dsn, feed, exp.ids)
            result.problems.insert(  # the headline; the counts follow
                0,
                f"STALL: {stall_after:.0f} s after part 2 was published, never committed: "
                f"{missing}",
            )
        if sup.current.pid != pid or not sup.alive():
            result.fail(
                f"the worker did not stay up across the restart (pid {pid} -> "
                f"{sup.current.pid}, alive {sup.alive()})"
            )
        await conclude(dsn, sup, exp, result)
    result.seconds = time.monotonic() - started
    return result


async def _wait_topics(kafka_url: str, topics: TopicNames, *, seconds: float) -> float | None:
    """Seconds until every contract topic exists again, or None."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_url, request_timeout_ms=5000)
        try:
            await admin.start()
            if set(topics.all()) <= set(await admin.list_topics()):
                return time.monotonic() - started
        except Exception:  # the broker is still coming up: look again
            pass
        finally:
            await admin.close()
        await asyncio.sleep(0.25)
    return None


async def _partitions(kafka_url: str, topics: TopicNames) -> str:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_url)
    await consumer.start()
    try:
        await consumer.topics()  # fetches metadata for every topic (creates none)
        return ", ".join(
            f"{t.removeprefix(topics.prefix)}={len(consumer.partitions_for_topic(t) or ())}"
            for t in topics.inputs()
        )
    finally:
        await consumer.stop()


async def _missing(dsn: str, feed: Feed, valid: set[str]) -> str:
    """Per topic-partition of part 2: how many valid events were never committed, and where."""
    where = {}
    for n, m in enumerate(feed.messages):
        eid = event_id(m.value)
        if eid in valid:
            where[eid] = feed.positions[n]
    have = await present_ids(dsn, list(where))
    gaps: dict[tuple[str, int], list[int]] = defaultdict(list)
    for eid, (topic, partition, offset) in where.items():
        if eid not in have:
            gaps[(topic, partition)].append(offset)
    if not gaps:
        return "every valid event (only dead letters are short)"
    return "; ".join(
        f"{t}[{p}] {len(o)} messages, offsets {min(o)}..{max(o)}"
        for (t, p), o in sorted(gaps.items())
    )
