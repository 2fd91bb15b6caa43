"""Record batches the consumer cannot decode: find them, dead-letter them, step past them.

aiokafka decodes a fetched record batch only when its records are read, so an unknown codec,
a corrupt compressed payload or a bad CRC surfaces as an exception from ``getmany`` — on every
poll, since the position never moves past the batch. The consumer (workers/consumer.py)
retries such a partition a few times, then asks this module where the batch is and records it:

- :func:`locate` fetches the raw bytes at the partition's position and reads the batch
  headers (base offset, last offset delta, CRC) without decompressing anything, then tries
  each batch the way aiokafka would to find the first one that fails;
- :func:`record` writes a ``undecodable_batch`` dead letter (dead_letters table + the
  dead-letter topic through the outbox) in one transaction, before the consumer commits the
  offset past the batch (the commit-after-transaction rule of the input path).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from events import DeadLetter, TopicNames
from infra import store
from infra.store import DeadLetterRow, OutboxRecord

log = logging.getLogger("leadcycle.undecodable")

#: Raw bytes read to locate a bad batch (one fetch; a batch larger than this is read whole
#: anyway: Kafka returns at least one full batch).
LOCATE_FETCH_BYTES = 1 << 20
_LOG_OVERHEAD = 12  # base offset (int64) + batch length (int32)
_MAGIC_AT = 16  # + partition leader epoch (int32)
_LAST_DELTA_AT = 23  # + magic (int8) + crc (uint32) + attributes (int16)
#: How much of the batch the dead letter keeps (base64), like a message's payload prefix.
PAYLOAD_PREFIX_BYTES = 4096
#: Errors that mean "the database is away for now" (the same list as workers/ingest.py).
_TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


def is_undecodable(exc: BaseException) -> bool:
    """Whether an exception from ``getmany`` came from decoding a record batch.

    aiokafka raises ``UnsupportedCodecError`` (unknown codec or missing library) and
    ``CorruptRecordException`` (bad CRC); a corrupt compressed payload raises whatever the
    decompressor raises (zlib.error, cramjam's DecompressionError, ...), which is never a
    KafkaError. Every other KafkaError is a broker or group problem: not the batch's fault.
    """
    from aiokafka.errors import KafkaError

    if isinstance(exc, UnsupportedCodecError | CorruptRecordException):
        return True
    return isinstance(exc, Exception) and not isinstance(exc, KafkaError)


@dataclass(frozen=True)
class BadBatch:
    """Where an undecodable batch sits in its partition, and its raw bytes."""

    tp: TopicPartition
    base_offset: int
    next_offset: int  # base offset + last offset delta + 1: where reading resumes
    error: str
    raw: bytes

    @property
    def where(self) -> str:
        return (
            f"{self.tp.topic}:{self.tp.partition} offsets {self.base_offset}-"
            f"{self.next_offset - 1}"
        )


def _batch_error(batch: Any) -> str | None:
    """Decode a batch the way aiokafka's fetcher does; None if it decodes."""
    try:
        if not batch.validate_crc():
            return "CorruptRecordException: invalid CRC"
        for _ in batch:  # decompresses and parses every record
            pass
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:1000]
    return None


async def locate(consumer: AIOKafkaConsumer, tp: TopicPartition, position: int) -> BadBatch | None:
    """The first batch at or after ``position`` that does not decode, or None if all do.

    Reads through aiokafka's client of this consumer (``_client``: aiokafka has no public
    raw fetch); the batch header fields come from the bytes as stored, never decompressed.
    """
    client = consumer._client
    node = client.cluster.leader_for_partition(tp)
    if node is None or node < 0:
        return None
    request = FetchRequest(
        100, 1, LOCATE_FETCH_BYTES, 0, [(tp.topic, [(tp.partition, position, LOCATE_FETCH_BYTES)])]
    )
    response = await client.send(node, request)
    for _topic, partitions in response.topics:
        for partition, error_code, _highwater, *part_data in partitions:
            if partition == tp.partition and error_code == 0:
                return first_bad(tp, bytes(part_data[-1] or b""), position)
    return None


def first_bad(tp: TopicPartition, raw: bytes, position: int) -> BadBatch | None:
    """The first batch in fetched bytes ending after ``position`` that does not decode."""
    start = 0
    # Every batch starts with base offset (int64) and length (int32) of what follows.
    while start + _LOG_OVERHEAD <= len(raw):
        base_offset, length = struct.unpack_from(">qi", raw, start)
        end = start + _LOG_OVERHEAD + length
        if end > len(raw):
            break  # a partial batch at the end of a fetch (Kafka cuts at the byte limit)
        chunk = raw[start:end]
        magic = chunk[_MAGIC_AT] if len(chunk) > _MAGIC_AT else -1
        if magic == 2 and len(chunk) >= _LAST_DELTA_AT + 4:
            # v2 header: the last offset delta sits before the compressed records.
            (delta,) = struct.unpack_from(">i", chunk, _LAST_DELTA_AT)
            next_offset = base_offset + delta + 1
        else:
            next_offset = base_offset + 1  # v0/v1: the wrapper's offset is its last one
        if next_offset > position:
            error = _chunk_error(chunk)
            if error is not None:
                return BadBatch(tp, max(base_offset, position), next_offset, error, chunk)
        start = end
    return None


def _chunk_error(chunk: bytes) -> str | None:
    try:
        batch = MemoryRecords(chunk).next_batch()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:1000]
    return "empty record batch" if batch is None else _batch_error(batch)


def dead_letter(
    bad: BadBatch, topics: TopicNames, now: datetime
) -> tuple[DeadLetterRow, OutboxRecord]:
    """The dead-letter row and message of one skipped batch (offset = its base offset)."""
    suffix = bad.tp.topic.removeprefix(topics.prefix)
    position = f"{suffix}:{bad.tp.partition}:{bad.base_offset}"
    # Position alone is not unique: a memory broker restarts its offsets at 0.
    message_id = f"{position}:{hashlib.sha256(bad.raw).hexdigest()[:12]}"
    error = f"undecodable record batch, offsets {bad.base_offset}-{bad.next_offset - 1}: "
    error = (error + bad.error)[:1000]
    letter = DeadLetter(
        message_id=message_id,
        source_topic=bad.tp.topic,
        partition=bad.tp.partition,
        offset=bad.base_offset,
        received_at=now,
        error=error,
        reason="undecodable_batch",
        payload_size=len(bad.raw),
        payload_prefix=base64.b64encode(bad.raw[:PAYLOAD_PREFIX_BYTES]).decode(),
    )
    row = DeadLetterRow(
        message_id=message_id,
        source_topic=bad.tp.topic,
        partition=bad.tp.partition,
        offset=bad.base_offset,
        reason="undecodable_batch",
        error=error,
        payload_size=len(bad.raw),
    )
    record = OutboxRecord(
        topic=topics.dead_letters, key=position.encode(), value=letter.model_dump_json().encode()
    )
    return row, record


async def record(
    pool: asyncpg.Pool, bad: BadBatch, topics: TopicNames, now: datetime
) -> tuple[list[int], list[OutboxRecord]]:
    """Write the dead letter and its outbox row in one transaction; retry while the database
    is away (the partition waits, as a batch does). Returns the outbox ids to publish."""
    row, message = dead_letter(bad, topics, now)
    delay = 0.2
    while True:
        try:
            async with pool.acquire() as conn, conn.transaction():
                if not await store.record_dead_letters(conn, [row]):
                    return [], []  # recorded before (redelivered after a crash)
                return await store.add_outbox(conn, [message]), [message]
        except _TRANSIENT as exc:
            log.warning("database unavailable (%r); retrying the dead letter in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
