"""Compressed producers and undecodable record batches, on the real broker, database and worker.

Every codec Kafka producers use (gzip, snappy, lz4, zstd) is consumed and scored. A record
batch that cannot be decoded (an unknown codec id, a corrupt compressed payload) is skipped
after its retries and dead-lettered as ``undecodable_batch``, the rest of its partition and the
other partitions keep flowing, and ``/readyz`` names the partition while it is stuck.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from infra import db
from infra.postgres import drop_database
from infra.processes import free_port
from tests.conftest import TEST_MARKER, RunningServices
from tests.integration.conftest import Scenario, make_scenario
from tests.integration.kafkatools import consume_all, produce_all
from tests.integration.workerproc import WorkerProcess, eventually

pytestmark = pytest.mark.integration

CODECS = ("gzip", "snappy", "lz4", "zstd")
STALL_SECONDS = 1


@dataclass(frozen=True)
class Stack:
    scenario: Scenario
    worker: WorkerProcess
    base: str
    conn: asyncpg.Connection


@pytest.fixture(scope="module")
async def stack(services: RunningServices) -> AsyncIterator[Stack]:
    scenario = await make_scenario(services, "codecs")
    port = free_port()
    worker = WorkerProcess(
        scenario.services,
        app_id=f"codecs-{uuid.uuid4().hex[:8]}",
        prefix=scenario.topics.prefix,
        LEADCYCLE_WEB_ENABLED="true",
        LEADCYCLE_WEB_PORT=str(port),
        LEADCYCLE_WEB_BIND="127.0.0.1",
        LEADCYCLE_STALL_SECONDS=str(STALL_SECONDS),
        LEADCYCLE_SWEEP_INTERVAL="3600",
    ).start()
    base = f"http://127.0.0.1:{port}"
    conn = await db.connect(scenario.dsn)
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                try:
                    async with http.get(f"{base}/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, seconds=60, what="/readyz", workers=(worker,))
        yield Stack(scenario, worker, base, conn)
    finally:
        worker.stop()
        await conn.close()
        await drop_database(services.server_dsn, scenario.name, marker=TEST_MARKER)
    assert worker.proc is not None
    assert worker.proc.returncode == 0, worker.log()[-3000:]


def page_view(event_id: str, visitor: str) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "type": "page_view",
            "occurred_at": "2026-11-02T09:30:00Z",
            "anonymous_id": visitor,
            "properties": {"url": "https://example.com/pricing"},
            "context": {"user_agent": "Mozilla/5.0 (X11; Linux x86_64)"},
        }
    ).encode()


def profile(event_id: str, lead: str) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "type": "profile_updated",
            "lead_id": lead,
            "occurred_at": "2026-11-02T00:00:00Z",
            "company_size": 300,
        }
    ).encode()


async def logged(conn: asyncpg.Connection, ids: list[str]) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM event_log WHERE event_id = ANY($1)", ids))


@pytest.mark.parametrize("codec", CODECS)
async def test_compressed_producer_is_consumed_and_scored(stack: Stack, codec: str) -> None:
    run = uuid.uuid4().hex[:8]
    topics, kafka_url = stack.scenario.topics, stack.scenario.services.kafka_url
    visitor = f"v-{codec}-{run}"
    ids = [f"{run}-{codec}-{i}" for i in range(50)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_url, compression_type=codec, linger_ms=50)
    await producer.start()
    try:
        # Sent without waiting in between: the producer packs them into compressed batches.
        sent = [
            await producer.send(topics.events, page_view(i, visitor), key=visitor.encode())
            for i in ids
        ]
        for future in sent:
            await future
    finally:
        await producer.stop()
    # An uncompressed topic flows alongside.
    lead = f"L-{codec}-{run}"
    await produce_all(kafka_url, [(topics.profiles, lead.encode(), profile(f"{run}-p", lead))])

    async def scored() -> bool:
        return await logged(stack.conn, [*ids, f"{run}-p"]) == len(ids) + 1

    await eventually(
        scored, seconds=60, what=f"{codec} events to be logged", workers=(stack.worker,)
    )
    row = await stack.conn.fetchrow(
        "SELECT behaviour_score FROM leads WHERE lead_id = $1", f"anon:{visitor}"
    )
    assert row is not None
    assert row["behaviour_score"] > 0
    assert await stack.conn.fetchval("SELECT count(*) FROM leads WHERE lead_id = $1", lead) == 1
    assert "UnsupportedCodecError" not in stack.worker.log()


def crafted_batch(
    events: list[bytes], *, codec: int, payload: bytes | None = None, bad_crc: bool = False
) -> bytes:
    """A v2 record batch whose codec bits say ``codec``, with a valid CRC (so it is stored as
    sent and fails only where it is decoded); ``payload`` replaces the records section."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    now = int(time.time() * 1000)
    for i, value in enumerate(events):
        builder.append(i, timestamp=now, key=None, value=value, headers=[])
    raw = bytearray(builder.build())
    header = 61  # v2 header size: the records section starts here
    if payload is not None:
        raw = raw[:header] + bytearray(payload)
        raw[8:12] = (len(raw) - 12).to_bytes(4, "big")  # batch length after itself
    attributes = int.from_bytes(raw[21:23], "big")
    raw[21:23] = ((attributes & ~0x07) | codec).to_bytes(2, "big")
    raw[17:21] = (calc_crc32c(bytes(raw[21:])) ^ (0xFFFF if bad_crc else 0)).to_bytes(4, "big")
    return bytes(raw)


async def produce_raw(kafka_url: str, topic: str, partition: int, batch: bytes) -> int:
    """Send one record batch as is; return the broker's error code."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka_url)
    await producer.start()
    try:
        client = producer.client
        await client.force_metadata_update()
        node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        response = await client.send(
            node, ProduceRequest(None, -1, 10_000, [(topic, [(partition, batch)])])
        )
        for _topic, partitions in response.topics:
            for part in partitions:
                return int(part[1])
    finally:
        await producer.stop()
    raise AssertionError("no produce response")


async def readyz(base: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as r:
        return r.status, await r.json()


# tansu refuses a batch whose codec id is unknown (5-7: UNKNOWN_SERVER_ERROR at produce), so
# UnsupportedCodecError cannot reach a consumer through it; it stores a bad CRC and corrupt
# compressed bytes as sent, which is what these cases produce.
@pytest.mark.parametrize(
    ("label", "codec", "payload", "bad_crc"),
    [
        ("bad CRC", 0, None, True),
        ("corrupt gzip payload", 1, b"\x1f\x8b\x08\x00garbage, not deflate" * 4, False),
        ("corrupt zstd payload", 4, b"\x28\xb5\x2f\xfd not a zstd frame" * 4, False),
    ],
)
async def test_undecodable_batch_is_dead_lettered_and_the_partition_moves_on(
    stack: Stack, label: str, codec: int, payload: bytes | None, bad_crc: bool
) -> None:
    run = uuid.uuid4().hex[:8]
    topics, kafka_url = stack.scenario.topics, stack.scenario.services.kafka_url
    partition = 1
    before = [f"{run}-before-{i}" for i in range(3)]
    after = [f"{run}-after-{i}" for i in range(3)]
    others = [f"{run}-other-{i}" for i in range(8)]
    visitor = f"v-{run}"

    async def send(ids: list[str], part: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_url)
        await producer.start()
        try:
            for i in ids:
                await producer.send_and_wait(topics.events, page_view(i, visitor), partition=part)
        finally:
            await producer.stop()

    await send(before, partition)
    await eventually(
        lambda: _count(stack.conn, before),
        seconds=30,
        what="the messages before the bad batch",
        workers=(stack.worker,),
    )
    bad_events = [page_view(f"{run}-inside-{i}", visitor) for i in range(4)]
    error = await produce_raw(
        kafka_url,
        topics.events,
        partition,
        crafted_batch(bad_events, codec=codec, payload=payload, bad_crc=bad_crc),
    )
    assert error == 0, f"the broker refused the crafted batch ({label}): error code {error}"
    await send(after, partition)
    await send(others, 0)
    await send([f"{run}-other-p2"], 2)

    # While the batch is retried, the partition has lag and no progress: not ready, named.
    stalled: list[dict[str, Any]] = []

    async def reports_stall() -> bool:
        status, body = await readyz(stack.base)
        stalled[:] = body.get("stalled_partitions", [])
        return status == 503 and any(
            p["topic"] == topics.events and p["partition"] == partition for p in stalled
        )

    await eventually(
        reports_stall,
        seconds=30,
        what="/readyz to report the stall",
        workers=(stack.worker,),
        interval=0.1,
    )
    stuck = next(p for p in stalled if p["partition"] == partition)
    assert stuck["lag"] >= 1

    async def moved_on() -> bool:
        return (
            await logged(stack.conn, [*after, *others, f"{run}-other-p2"])
            == len(after) + len(others) + 1
        )

    await eventually(
        moved_on,
        seconds=60,
        what="the partition to move past the bad batch",
        workers=(stack.worker,),
    )
    letters = await stack.conn.fetch(
        """SELECT source_topic, partition, "offset", error FROM dead_letters
           WHERE reason = 'undecodable_batch' AND source_topic = $1 AND partition = $2
           ORDER BY "offset" DESC LIMIT 1""",
        topics.events,
        partition,
    )
    assert len(letters) == 1
    letter = letters[0]
    # The batch came after the messages before it: its base offset is past theirs.
    first_after = await stack.conn.fetchval(
        "SELECT min(split_part(position, ':', 3)::bigint) FROM event_log WHERE event_id = ANY($1)",
        after,
    )
    assert letter["offset"] == first_after - len(bad_events)
    assert f"offsets {letter['offset']}-{letter['offset'] + len(bad_events) - 1}" in letter["error"]
    # Nothing inside the bad batch was applied.
    assert await logged(stack.conn, [f"{run}-inside-{i}" for i in range(4)]) == 0
    log = stack.worker.log()
    assert f"{topics.events}:{partition} offsets {letter['offset']}-" in log

    # The dead letter is published too.
    messages = await consume_all(kafka_url, topics.dead_letters, expect=10, seconds=5)
    mine = [
        m
        for m in messages
        if m["reason"] == "undecodable_batch"
        and m["offset"] == letter["offset"]
        and m["partition"] == partition
    ]
    assert len(mine) == 1
    assert mine[0]["source_topic"] == topics.events

    async def ready_again() -> bool:
        status, _ = await readyz(stack.base)
        return status == 200

    await eventually(ready_again, seconds=30, what="/readyz to be ready again")


async def _count(conn: asyncpg.Connection, ids: list[str]) -> bool:
    return await logged(conn, ids) == len(ids)
