"""The input topics read in batches with aiokafka, as a service inside the faust app.

faust's per-event machinery (an ``Event`` and its acknowledgement bookkeeping per message)
costs more than leadcycle's own work on a batch, and its in-memory read offsets do not survive
a broker whose log starts again at 0 (a memory broker restart). The input path therefore uses
a plain consumer-group member:

- **partition ownership**: one member of the group ``<app id>`` per worker process; Kafka
  assigns partitions, and another process takes a partition over when this one leaves;
- **commit after the transaction**: a batch's offsets are committed only after
  ``handle(batch)`` returned, which it does only once the batch's transaction has committed;
  if ``handle`` raises, the process exits hard (code 70) with nothing committed;
- **rebalances wait for the batch in flight**: revoking partitions waits until the current
  batch is committed (so the next owner starts where this one stopped), and records fetched
  for a partition this member no longer owns are dropped, not processed;
- **order per lead**: a partition's records keep their order within a batch, and a lead's
  messages share a partition (keyed by lead or visitor id).

A commit that fails (rebalance, broker away) loses nothing: the records are delivered again
and the event log's dedupe makes the second delivery a no-op.

**Never commit a batch into another group generation.** A batch's offsets are committed only
if the group membership (generation and member id) is still the one under which the batch was
fetched, in a single attempt that is abandoned, not retried, once the coordinator is lost.
aiokafka's own ``commit()`` retries until it gets through, and re-reads the generation on each
try: when a memory broker restarts mid-batch, the heartbeat meanwhile finds the member unknown
and resets the generation to -1, and a commit with generation -1 is accepted by an *empty*
group -- the new broker's -- so the old log's offsets (e.g. 402) landed on the new log and the
worker then skipped its first 402 records. Not committing is always safe (redelivery is
deduplicated); committing too far is the loss.

**A record batch that cannot be decoded** (unknown codec, corrupt compressed payload, bad CRC)
raises from aiokafka's ``getmany`` on every poll, since the position never moves past it. So
partitions are drained one at a time (an exception names its partition, and cannot discard
records aiokafka already handed over for another partition); the failing partition alone is
paused and retried with backoff, then the batch is located from its raw bytes, dead-lettered
(``undecodable_batch``, workers/undecodable.py), and the offset past it is committed — after
the dead letter's transaction, like any batch. The other partitions keep flowing meanwhile.

**Progress** is tracked per partition and per batch (position and when it last moved);
:meth:`InputConsumer.stalled` names partitions with lag (fetch high watermark - position) that
have not moved for ``stall_seconds``, and ``/readyz`` reports them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import ConsumerStoppedError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from mode import Service

from workers.ingest import Incoming
from workers.undecodable import BadBatch, is_undecodable, locate

log = logging.getLogger("leadcycle.consumer")

Handle = Callable[[Sequence[Incoming]], Awaitable[None]]
#: Records an undecodable batch (dead letter committed) before the consumer steps past it.
OnUndecodable = Callable[[BadBatch], Awaitable[None]]
#: Told the input partition numbers this member owns, and how many each input topic has.
OnAssignment = Callable[[set[int], int | None], None]
#: Called when a poll found nothing (under the batch lock).
OnIdle = Callable[[], Awaitable[None]]
Fetched = dict[TopicPartition, list[Any]]
Failed = dict[TopicPartition, BaseException]

#: Times an undecodable batch is fetched again before it is skipped, and the first wait
#: (doubled each time: 0.5 + 1 + 2 + 4 s). A refetch cures corruption in transit, not in the log.
UNDECODABLE_RETRIES = 4
UNDECODABLE_FIRST_WAIT = 0.5
#: Polls that wait without reading after a decode failure no partition could be named for.
BLIND_ROUNDS = 20

#: Tries of one commit while the group membership and the coordinator stay the same.
COMMIT_TRIES = 3

#: Test hook for the kill -9 drill (docs/reliability.md), off unless set: seconds to wait
#: between a batch's database commit and its offset commit, so that a kill can be aimed at
#: that window (the one whose redelivery the event log's dedupe must absorb). Not a setting.
_HOLD_ACK = float(os.environ.get("LEADCYCLE_DRILL_HOLD_ACK_SECONDS") or 0)


class _WaitForBatch(ConsumerRebalanceListener):
    """Holds a rebalance until the batch in flight has committed."""

    def __init__(self, owner: InputConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.owner.lock:
            log.info("partitions revoked: %s", _names(revoked))
            self.owner.forget(revoked)
            self.owner.own(set())

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", _names(assigned))
        self.owner.track(assigned)
        self.owner.own(assigned)


def _names(tps: set[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}:{tp.partition}" for tp in tps)) or "none"


class InputConsumer(Service):
    """Polls the input topics and hands each batch to ``handle``, then commits its offsets."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        topics: Sequence[str],
        prefix: str,
        handle: Handle,
        batch_size: int,
        poll_wait: float,
        stall_seconds: float = 60.0,
        on_undecodable: OnUndecodable | None = None,
        on_assignment: OnAssignment | None = None,
        on_idle: OnIdle | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topics = list(topics)
        self.prefix = prefix
        self.handle = handle
        self.batch_size = batch_size
        self.poll_wait = poll_wait
        self.stall_seconds = stall_seconds
        self.on_undecodable = on_undecodable
        self.on_assignment = on_assignment
        self.on_idle = on_idle
        self.lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        # Per partition: (position, monotonic time it was last seen moving or caught up).
        self._progress: dict[TopicPartition, tuple[int | None, float]] = {}
        # Undecodable batches: (position, failures there), when a paused one is fetched again,
        # how many records to read before a bad batch that starts later, the bad batch found.
        self._failures: dict[TopicPartition, tuple[int, int]] = {}
        self._retry_at: dict[TopicPartition, float] = {}
        self._limit: dict[TopicPartition, int] = {}
        self._known_bad: dict[TopicPartition, BadBatch] = {}
        self._rotation = 0
        self._blind_rounds = 0
        self._observed_at = 0.0

    async def on_start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_size,
            # A broker that holds an empty fetch for long adds that much latency (tansu does).
            fetch_max_wait_ms=100,
            # Joins take about half the session timeout (docs/operations.md).
            session_timeout_ms=6000,
            rebalance_timeout_ms=6000,
            heartbeat_interval_ms=1500,
            # Notice recreated topics (memory broker restart) within seconds.
            metadata_max_age_ms=5000,
            # Partition i of every input topic to one member: it owns shard i, the leads whose
            # key maps there (infra/shards.py), whichever topic their messages come from.
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        self.consumer.subscribe(self.topics, listener=_WaitForBatch(self))
        await self.consumer.start()

    async def on_stop(self) -> None:
        if self.consumer is not None:
            # Waits for the batch in flight (the lock), then leaves the group.
            async with self.lock:
                await self.consumer.stop()

    def track(self, assigned: set[TopicPartition]) -> None:
        """A newly assigned partition starts its stall clock now."""
        now = time.monotonic()
        for tp in assigned:
            self._progress[tp] = (None, now)

    def own(self, assigned: set[TopicPartition]) -> None:
        """Tell the owner of shards which ones this member owns now: the partition numbers
        of the input topics it was assigned (a range assignment gives one member the same
        numbers of every input topic), out of how many."""
        if self.on_assignment is None:
            return
        counts = [
            len(self.consumer.partitions_for_topic(t) or ()) if self.consumer else 0
            for t in self.topics
        ]
        partitions = max(counts, default=0) or None
        self.on_assignment({tp.partition for tp in assigned}, partitions)

    def forget(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            for state in (self._progress, self._failures, self._retry_at, self._limit):
                state.pop(tp, None)
            self._known_bad.pop(tp, None)

    @Service.task
    async def _poll(self) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        while not self.should_stop:
            self._resume_due(consumer)
            # The membership the records below are fetched under: their offsets are committed
            # only while it holds (see "Never commit a batch into another group generation").
            joined = _membership(consumer)
            if time.monotonic() - self._observed_at >= 1.0:
                # Once a second, not per record: an idle partition that is caught up keeps
                # its stall clock fresh, so new input to it is not mistaken for a stall.
                await self._observe(consumer, wait=0.05)
            try:
                fetched, failed = await self._fetch(consumer)
            except ConsumerStoppedError:
                return  # the service is stopping (on_stop stopped the consumer)
            except KafkaError as exc:
                log.warning("poll failed (%r); polling again in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            if not fetched and not failed:
                if self.on_idle is not None and consumer.assignment():
                    async with self.lock:
                        # No input: still take the work other members forwarded to our shards.
                        await self.on_idle()
                continue
            async with self.lock:
                owned = consumer.assignment()
                batch = [
                    Incoming(
                        topic=record.topic.removeprefix(self.prefix),
                        partition=record.partition,
                        offset=record.offset,
                        key=record.key,
                        value=record.value,
                    )
                    for tp, records in fetched.items()
                    if tp in owned
                    for record in records
                ]
                if batch:
                    try:
                        await self.handle(batch)
                    except BaseException:
                        # Nothing of this batch is committed: stop hard, it is delivered again.
                        log.critical(
                            "unhandled error in a batch; exiting uncommitted", exc_info=True
                        )
                        os._exit(70)
                    offsets = {
                        tp: records[-1].offset + 1
                        for tp, records in fetched.items()
                        if tp in owned and records
                    }
                    if _HOLD_ACK:  # test hook, off by default: see _HOLD_ACK
                        log.warning(
                            "drill hook: batch in PostgreSQL, offsets held %.1f s", _HOLD_ACK
                        )
                        await asyncio.sleep(_HOLD_ACK)
                        log.warning("drill hook: committing offsets")
                    await self._commit(consumer, offsets, joined)
                    now = time.monotonic()
                    for tp, offset in offsets.items():
                        self._progress[tp] = (offset, now)
                        failing = self._failures.get(tp)
                        if failing is not None and offset >= failing[0] + self.batch_size:
                            self._failures.pop(tp)  # well past where it failed: start afresh
                for tp, error in failed.items():
                    if tp in consumer.assignment():
                        await self._undecodable(consumer, tp, error, joined)

    async def _fetch(self, consumer: AIOKafkaConsumer) -> tuple[Fetched, Failed]:
        """What is buffered, partition by partition; if nothing is, wait for the first record.

        aiokafka advances a partition's position before it returns that partition's records;
        when a later partition of the same ``getmany`` raises, those records are lost. Reading
        one partition per call makes every exception name its partition and lose nothing.
        """
        fetched: Fetched = {}
        failed: Failed = {}
        await self._drain(consumer, fetched, failed)
        if failed:
            self._blind_rounds = 0  # the failure has a name now
        if fetched or failed:
            return fetched, failed
        if self._blind_rounds > 0:
            # A failure the waiting read could not attribute: aiokafka refetches it only
            # after the pass above cleared the failed result, and the waiting read would catch
            # it first again. Wait without reading, so the next pass names the partition.
            self._blind_rounds -= 1
            await asyncio.sleep(self.poll_wait)
            return fetched, failed
        try:
            # At most one record: an exception here cannot discard another partition's records.
            first = await consumer.getmany(timeout_ms=int(self.poll_wait * 1000), max_records=1)
        except Exception as exc:
            if not is_undecodable(exc):
                raise  # ConsumerStoppedError and broker errors: the poll loop handles them
            log.debug("a partition's batch cannot be decoded (%r); finding which", exc)
            self._blind_rounds = BLIND_ROUNDS
            return fetched, failed
        for tp, records in first.items():
            fetched[tp] = list(records)
        if fetched:
            await self._drain(consumer, fetched, failed)
        return fetched, failed

    async def _drain(
        self, consumer: AIOKafkaConsumer, fetched: Fetched, failed: Failed
    ) -> None:
        owned = sorted(consumer.assignment())
        if not owned:
            return
        # Start at a different partition each pass, so one busy partition cannot starve others.
        start = self._rotation % len(owned)
        self._rotation += 1
        remaining = self.batch_size - sum(len(r) for r in fetched.values())
        for tp in owned[start:] + owned[:start]:
            if remaining <= 0:
                break
            if tp in self._retry_at:
                continue  # paused until its next retry
            limit = min(remaining, self._limit.pop(tp, remaining))
            try:
                got = await consumer.getmany(tp, timeout_ms=0, max_records=limit)
            except ConsumerStoppedError:
                raise
            except Exception as exc:
                if not is_undecodable(exc):
                    raise
                failed[tp] = exc
                continue
            records = got.get(tp)
            if records:
                fetched.setdefault(tp, []).extend(records)
                remaining -= len(records)

    def _resume_due(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        for tp, at in list(self._retry_at.items()):
            if now >= at:
                del self._retry_at[tp]
                if tp in consumer.assignment():
                    consumer.resume(tp)

    async def _undecodable(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        exc: BaseException,
        joined: tuple[int, str],
    ) -> None:
        """Retry a partition whose batch does not decode; past the retries, skip the batch."""
        position = await consumer.position(tp)
        where = f"{tp.topic}:{tp.partition} offset {position}"
        known = self._known_bad.get(tp)
        if known is None or known.base_offset != position:
            # Counted from where the failures began: a retry may read a few good records and
            # fail again just after them (aiokafka drops the rest of a fetch that raised), so
            # the position can crawl forward a record per retry; resetting the count there
            # kept the batch from ever being located (fuzz drill, seed 11: 450 retries).
            at, failures = self._failures.get(tp, (position, 0))
            if at <= position < at + self.batch_size:
                failures += 1
            else:
                at, failures = position, 1
            self._failures[tp] = (at, failures)
            if failures <= UNDECODABLE_RETRIES:
                wait = UNDECODABLE_FIRST_WAIT * 2 ** (failures - 1)
                log.warning(
                    "%s: record batch cannot be decoded (%s: %s); fetching it again in "
                    "%.1f s (%d of %d)",
                    where, type(exc).__name__, exc, wait, failures, UNDECODABLE_RETRIES,
                )
                self._pause(consumer, tp, wait)
                return
            try:
                known = await locate(consumer, tp, position)
            except KafkaError as err:
                log.warning("%s: reading the raw batch failed (%r); trying again", where, err)
                self._pause(consumer, tp, UNDECODABLE_FIRST_WAIT)
                return
            if known is None:
                # The bytes as stored decode: the failure was not in the log. Read them again.
                log.warning("%s: the stored batch decodes; reading it again", where)
                self._failures.pop(tp, None)
                return
            self._known_bad[tp] = known
            if known.base_offset > position:
                # Good records come first: read exactly those; the bad batch is then skipped
                # when the partition reaches it.
                self._limit[tp] = known.base_offset - position
                return
        log.error(
            "skipping undecodable record batch at %s (%s) after %d attempts; dead-lettered as "
            "undecodable_batch",
            known.where, known.error, UNDECODABLE_RETRIES + 1,
        )
        if self.on_undecodable is not None:
            await self.on_undecodable(known)  # its transaction commits before the offset does
        consumer.seek(tp, known.next_offset)
        await self._commit(consumer, {tp: known.next_offset}, joined)
        self._known_bad.pop(tp, None)
        self._failures.pop(tp, None)
        self._progress[tp] = (known.next_offset, time.monotonic())

    def _pause(self, consumer: AIOKafkaConsumer, tp: TopicPartition, wait: float) -> None:
        consumer.pause(tp)
        self._retry_at[tp] = time.monotonic() + wait

    async def stalled(self) -> list[dict[str, Any]]:
        """Partitions with lag whose position has not moved for ``stall_seconds``.

        Lag is the high watermark of the last fetch response minus the position (not
        ``end_offsets``: tansu's ListOffsets answers short, see docs/operations.md).
        """
        if self.consumer is None:
            return []
        return await self._observe(self.consumer, wait=1.0)

    async def _observe(self, consumer: AIOKafkaConsumer, *, wait: float) -> list[dict[str, Any]]:
        """Refresh each partition's progress clock; return those stalled."""
        now = time.monotonic()
        self._observed_at = now
        stuck: list[dict[str, Any]] = []
        for tp in sorted(consumer.assignment()):
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue  # no fetch response yet
            try:
                async with asyncio.timeout(wait):
                    position = await consumer.position(tp)
            except (KafkaError, TimeoutError):
                continue  # revoked meanwhile, or its position is being reset
            seen, since = self._progress.get(tp, (None, now))
            if highwater <= position or seen != position:
                self._progress[tp] = (position, now)  # caught up, moved, or first seen
                continue
            if now - since >= self.stall_seconds:
                stuck.append(
                    {
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "position": position,
                        "lag": highwater - position,
                        "stalled_seconds": round(now - since, 1),
                    }
                )
        return stuck

    @staticmethod
    async def _commit(
        consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], joined: tuple[int, str]
    ) -> None:
        """Commit ``offsets`` if the membership is still ``joined``; otherwise leave them.

        aiokafka's ``commit()`` is not used: it retries until the commit gets through, across
        a coordinator change and with whatever generation holds at each try (module docstring).
        """
        owned = consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in owned}
        if not offsets:
            return
        coordinator = consumer._coordinator  # aiokafka's group coordinator (no public API)
        subscription = consumer._subscription.subscription
        assignment = subscription.assignment if subscription is not None else None
        request = {tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()}
        for attempt in range(COMMIT_TRIES):
            now = _membership(consumer)
            if now != joined or joined[0] < 0:
                log.warning(
                    "batch read under group generation %d, member %r; now %d, %r: its offsets "
                    "are not committed (a broker restart or a rebalance; the records are "
                    "delivered again and deduplicated)",
                    joined[0], joined[1], now[0], now[1],
                )
                return
            if coordinator.coordinator_id is None or assignment is None:
                log.warning("no group coordinator: offsets not committed; may be redelivered")
                return
            try:
                async with coordinator._commit_lock:
                    if _membership(consumer) != joined:
                        continue  # changed while waiting: the check above reports it
                    await coordinator._do_commit_offsets(assignment, request)
                return
            except KafkaError as exc:
                # Safe: the batch is in PostgreSQL; a redelivery is deduplicated by the event log.
                if not exc.retriable or attempt == COMMIT_TRIES - 1:
                    log.warning(
                        "committing offsets failed (%r); the batch may be redelivered", exc
                    )
                    return
                await asyncio.sleep(0.1)


def _membership(consumer: AIOKafkaConsumer) -> tuple[int, str]:
    """(generation, member id) of this consumer in its group; generation -1 when it has none."""
    coordinator = consumer._coordinator
    if coordinator is None:
        return (-1, "")
    return (int(coordinator.generation), str(coordinator.member_id))
