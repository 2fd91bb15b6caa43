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
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from mode import Service

from workers.ingest import Incoming

log = logging.getLogger("leadcycle.consumer")

Handle = Callable[[Sequence[Incoming]], Awaitable[None]]

#: Test hook for the kill -9 drill (docs/reliability.md), off unless set: seconds to wait
#: between a batch's database commit and its offset commit, so that a kill can be aimed at
#: that window (the one whose redelivery the event log's dedupe must absorb). Not a setting.
_HOLD_ACK = float(os.environ.get("LEADCYCLE_DRILL_HOLD_ACK_SECONDS") or 0)


class _WaitForBatch(ConsumerRebalanceListener):
    """Holds a rebalance until the batch in flight has committed."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self.lock = lock

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.lock:
            log.info("partitions revoked: %s", _names(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", _names(assigned))


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
        self.lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None

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
        )
        self.consumer.subscribe(self.topics, listener=_WaitForBatch(self.lock))
        await self.consumer.start()

    async def on_stop(self) -> None:
        if self.consumer is not None:
            # Waits for the batch in flight (the lock), then leaves the group.
            async with self.lock:
                await self.consumer.stop()

    @Service.task
    async def _poll(self) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        while not self.should_stop:
            try:
                fetched = await consumer.getmany(
                    timeout_ms=int(self.poll_wait * 1000), max_records=self.batch_size
                )
            except ConsumerStoppedError:
                return  # the service is stopping (on_stop stopped the consumer)
            except KafkaError as exc:
                log.warning("poll failed (%r); polling again in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            if not fetched:
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
                if not batch:
                    continue
                try:
                    await self.handle(batch)
                except BaseException:
                    # Nothing of this batch is committed: stop hard, it is delivered again.
                    log.critical("unhandled error in a batch; exiting uncommitted", exc_info=True)
                    os._exit(70)
                offsets = {
                    tp: records[-1].offset + 1
                    for tp, records in fetched.items()
                    if tp in owned and records
                }
                if _HOLD_ACK:  # test hook, off by default: see _HOLD_ACK
                    log.warning("drill hook: batch in PostgreSQL, offsets held %.1f s", _HOLD_ACK)
                    await asyncio.sleep(_HOLD_ACK)
                    log.warning("drill hook: committing offsets")
                await self._commit(consumer, offsets)

    @staticmethod
    async def _commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        owned = consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in owned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Safe: the batch is in PostgreSQL; a redelivery is deduplicated by the event log.
            log.warning("committing offsets failed (%r); the batch may be redelivered", exc)
