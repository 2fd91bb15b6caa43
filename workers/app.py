"""The faust app: wiring only. Business rules live in scoring/, I/O in infra/."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import faust
from mode import Service

from events.topics import TopicNames
from infra import db, kafka, store
from infra.services import Endpoints
from infra.settings import Settings
from infra.shards import Shards
from infra.store import OutboxRecord
from scoring.rules import load_rules
from workers.bots import DEFAULT_BOT_PATTERN, BotFilter
from workers.consumer import InputConsumer
from workers.ingest import Incoming, Ingestor
from workers.leads import Assignment, LeadProcessor
from workers.sweeper import sweep_once
from workers.undecodable import BadBatch
from workers.undecodable import record as record_undecodable

log = logging.getLogger("leadcycle.worker")

#: Seconds an outbox row may wait for its own batch to publish it before the relay takes over.
RELAY_AFTER_SECONDS = 10.0


def faust_broker_url(kafka_url: str) -> str:
    """``host:port[,host:port]`` -> faust's ``kafka://host:port;host:port``."""
    hosts = [h.strip().removeprefix("kafka://") for h in kafka_url.split(",") if h.strip()]
    return "kafka://" + ";".join(hosts)


class BrokerRestarted(Exception):
    """The broker lost its topics (a memory broker restarted) while output was being published."""


class BrokerTopics:
    """The worker's topics, and whether the broker is still the one that created them.

    A memory broker (tansu) that restarts comes back without topics, and it *accepts* records
    produced to a topic it does not have (a producer with cached metadata, or one retrying a
    send across the restart) without creating that topic properly. A topic created over such
    records is corrupt: later acknowledged records are lost or refused (offsets reused,
    ``UnknownError``). Deleting the topic once it exists and creating it again gives a clean
    one. So each incarnation of the broker gets a marker topic that only this class creates
    and no client ever asks about (tansu auto-creates topics that clients ask about):

    - marker present: the broker is the one our topics were created on; missing topics (first
      start) are created;
    - marker gone: the broker restarted. Input topics are created if missing (producers and
      consumers may already use them: never deleted); output topics are created, deleted and
      created again, which drops whatever reached them since the restart -- only this worker
      writes them, and every such record is still in the outbox (see ``FaustPublisher``);
      then the marker is created.

    On a durable Kafka cluster the marker never disappears, so this is one metadata request
    (for the marker alone, auto-creation off) per check and nothing more.
    """

    def __init__(self, kafka_url: str, topics: TopicNames, partitions: int, app_id: str) -> None:
        self.kafka_url = kafka_url
        self.topics = topics
        self.partitions = partitions
        self.marker = f"{topics.prefix}{app_id}.broker-incarnation"
        self.outputs = [n for n in topics.all() if n not in set(topics.inputs())]
        #: Held while publishing and while restoring: no output is produced mid-restore.
        self.lock = asyncio.Lock()
        self.admin: Any = None
        #: Whether this process has seen the marker: only then does its absence mean a restart
        #: (a first start, or an upgrade from a version without it, creates it and purges nothing).
        self.seen = False

    async def start(self) -> None:
        self.admin = kafka.admin_client(self.kafka_url)
        await self.admin.start()

    async def close(self) -> None:
        if self.admin is not None:
            await self.admin.close()

    async def current(self) -> bool:
        """Whether the broker still has the marker this process saw (or created)."""
        assert self.admin is not None
        return self.seen and self.marker in await kafka.present(self.admin, [self.marker])

    async def ensure(self) -> list[str]:
        """Create what is missing; after a broker restart, recreate the output topics clean.

        Call with ``lock`` held. Returns the topics created.
        """
        assert self.admin is not None
        existing = set(await self.admin.list_topics())
        missing = [n for n in self.topics.all() if n not in existing]
        if self.marker in existing or not self.seen:
            await kafka.create_topics(self.admin, missing, partitions=self.partitions)
            if self.marker not in existing:
                await kafka.create_topics(self.admin, [self.marker], partitions=1)
            self.seen = True
            return missing
        inputs = [n for n in self.topics.inputs() if n not in existing]
        await kafka.create_topics(self.admin, inputs, partitions=self.partitions)
        # Create, delete, create: drops records the broker took before the topic existed.
        await kafka.create_topics(self.admin, self.outputs, partitions=self.partitions)
        await kafka.delete_topics(self.admin, self.outputs)
        await kafka.create_topics(self.admin, self.outputs, partitions=self.partitions)
        await kafka.create_topics(self.admin, [self.marker], partitions=1)
        return inputs + self.outputs


class FaustPublisher:
    """Publishes output records with the app's producer and waits for every acknowledgement.

    Succeeds only if the broker that acknowledged them is still the one the topics were
    checked on before sending (its incarnation marker is there before and after): records
    acknowledged by a broker that restarted meanwhile may be lost (memory store) or sit in a
    topic that is about to be recreated, so they stay in the outbox and are sent again by the
    relay (at-least-once; each output carries its ``message_id`` for consumers to dedupe).
    """

    def __init__(self, app: faust.App, broker: BrokerTopics) -> None:
        self.app = app
        self.broker = broker

    async def publish(self, records: Sequence[OutboxRecord]) -> None:
        async with self.broker.lock:
            if not await self.broker.current():
                created = await self.broker.ensure()
                log.warning("the broker restarted; recreated topics: %s", ", ".join(created))
            futures = [
                await self.app.producer.send(r.topic, r.key, r.value, None, None, None)
                for r in records
            ]
            await asyncio.gather(*futures)
            if not await self.broker.current():
                raise BrokerRestarted(f"{len(records)} outputs acknowledged across a restart")


def tune_gc() -> None:
    """Fewer full garbage collections: the worker keeps a large, long-lived heap (the state
    cache: tens of thousands of small objects) whose objects die by reference counting, and
    every full collection walks all of it. Measured on 86k events / 9k leads in process: 222
    -> 176 µs CPU per event (docs/architecture.md, "The state cache")."""
    gc.freeze()  # what start-up made lives as long as the process: never scan it again
    gc.set_threshold(50_000, 50, 1000)


class Runtime(Service):
    """Connections of one worker process: opened on start, closed on stop."""

    def __init__(self, app: faust.App, settings: Settings, endpoints: Endpoints, **kw: Any) -> None:
        super().__init__(**kw)
        self.app = app
        self.settings = settings
        self.endpoints = endpoints
        self.pool: Any = None
        self.ingestor: Ingestor | None = None
        self.processor: LeadProcessor | None = None
        #: The time rules' own processor: it works on every shard (under the world lock) and
        #: must not share the batch path's cache.
        self.sweeper: LeadProcessor | None = None
        #: The shards this process owns: the input partitions the group assigned it.
        self.shards = Shards(partitions=settings.partitions, owned=frozenset())
        self.broker = BrokerTopics(
            endpoints.kafka_url, settings.topics, settings.partitions, settings.app_id
        )

    async def on_start(self) -> None:
        tune_gc()
        self.pool = await db.create_pool(self.endpoints.database_dsn)
        async with self.pool.acquire() as conn:
            applied = await db.migrate(conn)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        await self.broker.start()
        async with self.broker.lock:
            await self.broker.ensure()
        rules = load_rules(self.settings.rules_file)
        log.info("scoring with rule set %s from %s", rules.version, self.settings.rules_file)
        self.processor = LeadProcessor(
            rules,
            self.settings.topics,
            Assignment(self.settings.rep_list, self.settings.rep_daily_capacity),
            cache_size=self.settings.state_cache,
            shards=self.shards,
        )
        self.sweeper = LeadProcessor(
            rules,
            self.settings.topics,
            Assignment(self.settings.rep_list, self.settings.rep_daily_capacity),
        )
        self.ingestor = Ingestor(
            self.pool,
            self.settings.topics,
            FaustPublisher(self.app, self.broker),
            max_message_bytes=self.settings.max_message_bytes,
            bots=BotFilter(self.settings.bot_pattern or DEFAULT_BOT_PATTERN),
            apply=self.processor.apply_events,
            max_future_skew=self.settings.max_future_skew,
            committed=self.processor.committed,
            aborted=self.processor.aborted,
        )

    async def on_stop(self) -> None:
        if self.ingestor is not None:
            await self.ingestor.drain()
        if self.pool is not None:
            await self.pool.close()
        await self.broker.close()

    async def relay_outbox(self) -> int:
        """Publish outbox rows that their own batch did not (crash or broker outage)."""
        if self.pool is None:
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            claimed = await store.claim_outbox(
                conn, limit=5000, older_than_seconds=RELAY_AFTER_SECONDS
            )
            if not claimed:
                return 0
            await FaustPublisher(self.app, self.broker).publish([r for _, r in claimed])
            await store.delete_outbox(conn, [i for i, _ in claimed])
        log.info("relayed %d output messages from the outbox", len(claimed))
        return len(claimed)


def faust_options(kafka_url: str, datadir: str, **overrides: Any) -> dict[str, Any]:
    """How every leadcycle faust app talks to Kafka (the worker, and the bench's baseline)."""
    return {
        "broker": faust_broker_url(kafka_url),
        "store": "memory://",
        "value_serializer": "raw",
        "key_serializer": "raw",
        # tansu has no idempotent producer: at-least-once + idempotent state updates instead.
        "processing_guarantee": "at_least_once",
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": 1.0,
        # Group joins take half the session timeout: keep it short (see docs/operations.md).
        "broker_session_timeout": 6,
        "broker_rebalance_timeout": 6,
        "broker_heartbeat_interval": 1.5,
        "producer_acks": -1,
        "datadir": datadir,
        **overrides,
    }


def create_app(settings: Settings, endpoints: Endpoints) -> faust.App:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        # faust's own consumer group (timers, web, producer; it reads no topic of ours) must
        # not be the input group: members of one group must speak one assignment protocol.
        f"{settings.app_id}-app",
        **faust_options(
            endpoints.kafka_url,
            str(settings.state_dir / "faust"),
            topic_partitions=settings.partitions,
            topic_allow_declare=True,
            web_enabled=settings.web_enabled,
            web_port=settings.web_port,
        ),
    )
    runtime = Runtime(app, settings, endpoints)
    # Added before the app starts, the runtime starts first (pool and topics ready before any
    # agent reads) and stops last.
    app.add_dependency(runtime)

    async def ingest(batch: Sequence[Incoming]) -> None:
        assert runtime.ingestor is not None
        started = time.monotonic()
        processor = runtime.processor
        before = (processor.received, processor.forwarded) if processor else (0, 0)
        report = await runtime.ingestor.handle(batch)
        after = (processor.received, processor.forwarded) if processor else (0, 0)
        if not batch and after == before:
            return  # an idle poll that found no forwarded work either
        log.info(
            "batch: %d received, %d new, %d duplicate, %d bot, %d dead-lettered,"
            " %d forwarded to other shards, %d taken from them, in %.0f ms",
            report.received,
            report.new_events,
            report.duplicates,
            report.bots,
            report.dead_letters,
            after[1] - before[1],
            after[0] - before[0],
            (time.monotonic() - started) * 1000,
        )

    async def undecodable(bad: BadBatch) -> None:
        assert runtime.pool is not None
        assert runtime.ingestor is not None
        ids, records = await record_undecodable(
            runtime.pool, bad, settings.topics, datetime.now(UTC)
        )
        await runtime.ingestor.publish_committed(ids, records)

    # The input topics are read by a batched consumer-group member, not a faust agent
    # (workers/consumer.py says why). It starts after the runtime and stops before it.
    consumer = InputConsumer(
        bootstrap=endpoints.kafka_url,
        group_id=settings.app_id,
        topics=settings.topics.inputs(),
        prefix=settings.topic_prefix,
        handle=ingest,
        batch_size=settings.batch_size,
        poll_wait=settings.batch_within,
        stall_seconds=settings.stall_seconds,
        on_undecodable=undecodable,
        on_assignment=runtime.shards.assign,
        on_idle=lambda: ingest([]),
    )
    app.add_dependency(consumer)
    if settings.web_enabled:
        from workers.web.server import WebServer, web_context

        # faust starts a registered web server after recovery, instead of its own web stack.
        web = web_context(settings, endpoints, lambda: runtime.pool)
        web.stalled = consumer.stalled  # /readyz names input partitions that stopped moving
        app.web_server(WebServer(web))

    @app.timer(interval=RELAY_AFTER_SECONDS)
    async def relay() -> None:
        try:
            # A memory broker that restarted has lost its topics: put them back.
            async with runtime.broker.lock:
                created = await runtime.broker.ensure()
            if created:
                log.warning("recreated missing topics: %s", ", ".join(created))
            await runtime.relay_outbox()
        except Exception as exc:  # both retry on the next tick
            log.warning("topic check or outbox relay failed: %r", exc)

    @app.timer(interval=settings.sweep_interval)
    async def sweep() -> None:
        if runtime.sweeper is None or runtime.ingestor is None:
            return
        try:
            _, ids, records = await sweep_once(
                runtime.pool,
                runtime.sweeper,
                now=datetime.now(UTC),
                retention=settings.anonymous_retention,
            )
            await runtime.ingestor.publish_committed(ids, records)
        except Exception as exc:  # the sweep is retried on its next tick
            log.warning("sweep failed: %r", exc)

    return app
