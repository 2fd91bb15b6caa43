"""Restart the memory broker under load, while the worker runs and producers keep publishing.

1. publish half the stream at once and the rest at a steady pace; once PostgreSQL holds a
   quarter of the first half (the worker is busy with the backlog), kill -9 tansu and start it
   again on the same port while the producer is still sending (its sends fail and are retried
   until acknowledged; new sends wait until the topics are back): topics, offsets and the
   group are gone, with whatever the worker had not read yet;
2. wait for the *worker* to recreate the topics (its relay timer does; the drill creates none);
3. the producers re-send what the broker lost: every publication acknowledged by the old
   broker that never reached PostgreSQL (no event_log row, no dead letter at its position);
4. the rest of the stream goes to the new, empty log; wait until PostgreSQL holds everything.

PostgreSQL is the system of record, so the result must equal one uninterrupted run over what
was published (re-sends included): nothing lost, nothing counted twice. Outputs are checked as
in every drill, except those the old broker acknowledged in the seconds before it stopped,
which its memory store may have forgotten before the drill read them (counted in a note).
A worker that stops reading part of the new log is reported as a stall: which partitions,
which offsets were never committed, and the counts when the drill gave up.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.load import make_traffic
from events.topics import TopicNames

from .harness import DrillConfig, Feed, Rig, present_ids, wait_for
from .report import DrillResult, say
from .verify import Expected, conclude, digest, event_id, expect, wait_all_in

#: Outputs acknowledged this long before the stop may be lost with the broker's memory.
TAP_LAG = timedelta(seconds=5)


async def run(cfg: DrillConfig) -> DrillResult:
    result = DrillResult("broker-restart")
    started = time.monotonic()
    leads, spread, stall_after = (200, 20.0, 90.0) if cfg.quick else (1200, 60.0, 150.0)
    traffic = make_traffic(leads=leads, seed=cfg.seed, events=None)
    whole = expect((m.topic, m.value) for m in traffic.messages)
    rate = len(traffic.messages) / 2 / spread
    async with Rig("broker", cfg) as rig:
        broker = rig.broker()
        dsn = await rig.database(await rig.server())
        tap = await rig.topics_on(broker.url)
        sup = await rig.supervisor(broker.url, dsn, LEADCYCLE_BATCH_SIZE="500")
        # Half the stream at once (a backlog the worker is still reading when the broker goes),
        # then the rest paced in small chunks (the producer is sending when it goes).
        burst = len(traffic.messages) // 2
        feed = Feed(broker.url, rig.topics, traffic.messages, rate=rate, chunk=10, burst=burst)
        producing = asyncio.create_task(feed.run())
        say(f"broker-restart: {burst:,} messages at once, then {rate:.0f}/s")
        ok, before, _ = await wait_for(
            dsn, lambda c: c.events >= burst // 4, seconds=120, sup=sup, interval=0.02
        )
        if not ok:
            result.fail(f"the stream's first part was never committed ({before}):\n{sup.tail()}")
        pid = sup.current.pid
        loop = asyncio.get_running_loop()
        down_at = datetime.now(UTC)
        down = time.monotonic()
        # In a thread: the producer keeps sending (and failing, and retrying) meanwhile, and
        # acknowledgements the old broker sent before it died are taken in before it is gone.
        # The producer holds new sends until the topics are back: tansu creates a topic that a
        # client merely asks about, and such a topic, racing the worker's recreation, can
        # lose what it acknowledged (seen here). Sends on their way fail and are retried.
        # The drill's output reader stops too (tansu would create the topics it asks about).
        feed.gate.clear()
        await tap.stop()
        await asyncio.to_thread(broker.crash)
        gone = loop.time()  # every acknowledgement before this came from the old broker
        await asyncio.sleep(1.0)  # a second with no broker at all
        await asyncio.to_thread(broker.start)
        back = time.monotonic()
        say(
            f"broker-restart: restarted tansu with {before.events:,} events in PostgreSQL and "
            f"{feed.produced:,} messages produced"
        )
        result.notes.append(
            f"tansu down for {back - down:.2f} s (memory store: all topics gone) at "
            f"{before.events:,}/{len(whole.ids):,} events in PostgreSQL, "
            f"{feed.produced:,}/{len(traffic.messages):,} messages produced"
        )
        recreated = await _wait_topics(broker.url, rig.topics, seconds=60)
        feed.gate.set()
        back_at = datetime.now(UTC)
        if recreated is None:
            result.fail("the worker did not recreate the topics within 60 s")
        else:
            result.recovery["topics recreated"] = recreated
            result.notes.append(
                f"partitions after recreation: {await _partitions(broker.url, rig.topics)}"
            )
        await tap.start()  # from offset 0 of the new log
        # What the old broker acknowledged and forgot: once the worker commits events
        # published to the new broker, anything older still missing will never come.
        await _consumed_after(dsn, feed, gone, seconds=60)
        lost = await _lost(dsn, feed, gone)
        lost_messages = [feed.acked[i][0] for i in sorted(lost)]
        if lost_messages:
            resend = Feed(broker.url, rig.topics, lost_messages)
            await resend.run()
            feed.acked += resend.acked
        result.notes.append(
            f"the producer re-sent {len(lost_messages):,} messages the restart lost "
            f"({feed.retried:,} sends retried while the broker was away)"
        )
        await producing
        exp = expect((m.topic, m.value) for i, (m, _, _) in enumerate(feed.acked) if i not in lost)
        say(f"broker-restart: all {len(feed.acked):,} publications acknowledged; waiting")
        waited = await wait_all_in(dsn, exp, sup, result, seconds=stall_after)
        if waited is not None:
            result.recovery["broker back->all committed"] = time.monotonic() - back
        else:
            missing = await _missing(dsn, feed, exp)
            group = sup.env["LEADCYCLE_APP_ID"]
            in_log = await _still_in_log(broker.url, rig.topics, dsn, exp, group)
            result.problems.insert(  # the headline; the counts follow
                0,
                f"STALL: {stall_after:.0f} s after the stream was published, never committed: "
                f"{missing}; {in_log}",
            )
        if sup.current.pid != pid or not sup.alive():
            result.fail(
                f"the worker did not stay up across the restart (pid {pid} -> "
                f"{sup.current.pid}, alive {sup.alive()})"
            )
        await conclude(dsn, sup, exp, result, tap, exempt=(down_at - TAP_LAG, back_at))
    result.seconds = time.monotonic() - started
    return result


async def _consumed_after(dsn: str, feed: Feed, since: float, *, seconds: float) -> None:
    """Wait until event_log holds an event first published after loop time ``since``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fresh = [i for m, _, t in feed.acked if t > since and (i := event_id(m.value))]
        if fresh and await present_ids(dsn, fresh[:500]):
            return
        await asyncio.sleep(0.25)


async def _lost(dsn: str, feed: Feed, before: float) -> set[int]:
    """Indexes into ``feed.acked`` of publications acknowledged before loop time ``before``
    that left no trace in PostgreSQL: a valid event not in event_log, an invalid message
    without a dead letter at its position."""
    old = [(i, m, pos) for i, (m, pos, t) in enumerate(feed.acked) if t < before]
    ids = [eid for _, m, _ in old if m.valid and (eid := event_id(m.value))]
    have = await present_ids(dsn, ids)
    conn = await asyncpg.connect(dsn)
    try:
        letters = {r["message_id"] for r in await conn.fetch("SELECT message_id FROM dead_letters")}
    finally:
        await conn.close()
    lost = set()
    for i, m, (topic, partition, offset) in old:
        if m.valid:
            if event_id(m.value) not in have:
                lost.add(i)
        elif f"{topic}:{partition}:{offset}:{digest(m.value)}" not in letters:
            lost.add(i)
    return lost


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


async def _still_in_log(
    kafka_url: str, topics: TopicNames, dsn: str, exp: Expected, group: str
) -> str:
    """Whether the events PostgreSQL lacks are still in the broker's log (the worker passed
    them by) or not (the broker lost what it had acknowledged), and where the group stands."""
    have = await present_ids(dsn, list(exp.ids))
    wanted = exp.ids - have
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_url, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: dict[str, tuple[str, int, int]] = {}
    try:
        consumer.subscribe(topics.inputs())
        empty = 0
        while empty < 5:
            batch = await consumer.getmany(timeout_ms=500, max_records=10000)
            empty = 0 if batch else empty + 1
            for records in batch.values():
                for r in records:
                    eid = event_id(r.value or b"")
                    if eid in wanted:
                        found[eid] = (r.topic.removeprefix(topics.prefix), r.partition, r.offset)
    finally:
        await consumer.stop()
    where = sorted(set(found.values()))
    low: dict[tuple[str, int], int] = {}
    for topic, partition, offset in where:
        low[(topic, partition)] = min(offset, low.get((topic, partition), offset))
    committed: dict[tuple[str, int], int | None] = {}
    reader = AIOKafkaConsumer(bootstrap_servers=kafka_url, group_id=group, enable_auto_commit=False)
    try:
        await reader.start()  # subscribes to nothing: reads the group's offsets, never joins
        for t, p in low:
            committed[(t, p)] = await reader.committed(TopicPartition(topics.name(t), p))
    except Exception as exc:  # a diagnosis only
        say(f"broker-restart: could not read the group's offsets: {exc!r}")
    finally:
        await reader.stop()
    marks = ", ".join(
        f"{t}[{p}] first missing {o}, group committed {committed.get((t, p))}"
        for (t, p), o in sorted(low.items())
    )
    return (
        f"{len(found)} of the {len(wanted)} missing events are in the broker's log "
        f"(e.g. {where[:3]}), {len(wanted) - len(found)} are not; {marks}"
    )


async def _missing(dsn: str, feed: Feed, exp: Expected) -> str:
    """Per topic-partition of the acknowledged publications: how many valid events were never
    committed, and where."""
    where: dict[str, tuple[str, int, int]] = {}
    for m, pos, _ in feed.acked:
        eid = event_id(m.value)
        if eid in exp.ids:
            where[eid] = pos
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
