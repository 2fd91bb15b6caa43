"""Record batches a normal producer never sends: compressed with each codec, or corrupt.

Real producers compress (librdkafka's commonly use lz4 or zstd); a damaged disk or a buggy
client can leave a batch nobody can decode. The fuzz drill publishes both next to ordinary
traffic: the worker must score the compressed events and skip the corrupt batch with a dead
letter (reason ``undecodable_batch``) without holding up anything else.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from events.topics import TopicNames
from workers.traffic import Message

#: Kafka's codecs as aiokafka names them (lz4, snappy and zstd need the ``cramjam`` package).
CODECS = ("gzip", "snappy", "lz4", "zstd")
_GZIP = 1  # the codec bits of a record batch's attributes


async def publish_compressed(
    kafka_url: str, topics: TopicNames, codec: str, messages: Sequence[Message], partition: int
) -> None:
    """Publish ``messages`` to ``partition`` of their topic in batches compressed with
    ``codec`` (all sent before one flush, so they share batches)."""
    prod = AIOKafkaProducer(bootstrap_servers=kafka_url, acks="all", compression_type=codec)
    await prod.start()
    try:
        futures = [
            await prod.send(topics.name(m.topic), m.value, key=m.key, partition=partition)
            for m in messages
        ]
        for future in futures:
            await future
    finally:
        await prod.stop()


def corrupt_batch(rng: random.Random) -> bytes:
    """A v2 record batch that claims one gzip-compressed record but holds noise after the gzip
    magic. Its CRC is right (a broker that checks it stores the batch); nobody can decode it."""
    payload = b"\x1f\x8b\x08\x00" + rng.randbytes(96)
    now_ms = int(time.time() * 1000)
    # attributes, last offset delta, first/max timestamp, producer id/epoch, base sequence, count
    after_crc = struct.pack(">hiqqqhii", _GZIP, 0, now_ms, now_ms, -1, -1, -1, 1) + payload
    # partition leader epoch, magic 2, crc32c of everything after it
    after_length = struct.pack(">ibI", -1, 2, calc_crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


async def publish_raw(kafka_url: str, topic: str, partition: int, batch: bytes) -> int:
    """Send one raw record batch to ``topic[partition]``; the broker's error code (0: stored)."""
    prod = AIOKafkaProducer(bootstrap_servers=kafka_url, acks="all")
    await prod.start()
    try:
        await prod.partitions_for(topic)  # metadata: who leads the partition
        node = prod.client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(
            transactional_id=None,
            required_acks=-1,
            timeout=10_000,
            topics=[(topic, [(partition, batch)])],
        )
        response = await prod.client.send(node, request)
    finally:
        await prod.stop()
    for _, partitions in response.topics:
        for answer in partitions:
            return int(answer[1])
    return -1
