"""Kafka adapters: topic creation and a plain producer for tools (demo traffic, tests, CLI)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from events.topics import TopicNames


async def ensure_topics(
    bootstrap: str, names: Iterable[str], *, partitions: int, replication: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in names if n not in existing]
        if wanted:
            try:
                await admin.create_topics(
                    [
                        NewTopic(n, num_partitions=partitions, replication_factor=replication)
                        for n in wanted
                    ]
                )
            except TopicAlreadyExistsError:
                pass  # another worker won the race
        return wanted
    finally:
        await admin.close()


async def ensure_contract_topics(bootstrap: str, topics: TopicNames, partitions: int) -> list[str]:
    return await ensure_topics(bootstrap, topics.all(), partitions=partitions)


def admin_client(bootstrap: str) -> AIOKafkaAdminClient:
    """A long-lived admin client (it reconnects by itself when the broker comes back)."""
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)


async def present(admin: AIOKafkaAdminClient, names: Iterable[str]) -> set[str]:
    """Which of ``names`` exist, asked without auto-creating any.

    tansu (like Kafka with ``auto.create.topics.enable``) creates a topic that a metadata
    request merely names, unless the request says not to; the admin client's own calls do
    not say so.
    """
    client = admin._client  # the admin's connection (no public call sets the flag)
    node = client.get_random_node()
    if node is None:
        raise KafkaConnectionError("no broker known")
    request = MetadataRequest(list(names), allow_auto_topic_creation=False)
    response = await client.send(node, request)
    return {t["topic"] for t in response.to_object()["topics"] if t["error_code"] == 0}


async def create_topics(
    admin: AIOKafkaAdminClient, names: Iterable[str], *, partitions: int, replication: int = 1
) -> None:
    """Create topics; one that exists already (another worker won the race) is left as it is."""
    wanted = list(names)
    if not wanted:
        return
    try:
        response = await admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=replication) for n in wanted]
        )
    except TopicAlreadyExistsError:
        return
    for name, code, *_ in response.topic_errors:
        if code not in (0, TopicAlreadyExistsError.errno):
            raise for_code(code)(f"creating topic {name}")


async def delete_topics(admin: AIOKafkaAdminClient, names: Iterable[str]) -> None:
    wanted = list(names)
    if not wanted:
        return
    response = await admin.delete_topics(wanted)
    for name, code in response.topic_error_codes:
        if code not in (0, UnknownTopicOrPartitionError.errno):
            raise for_code(code)(f"deleting topic {name}")


def producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer for tools; acks from all in-sync replicas, generous batching."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )


async def produce_all(
    bootstrap: str, records: Iterable[tuple[str, bytes | None, bytes]], *, window: int = 5000
) -> int:
    """Send ``(topic, key, value)`` records and wait until all are acknowledged."""
    prod = producer(bootstrap)
    await prod.start()
    sent = 0
    try:
        pending: list[asyncio.Future[object]] = []
        for topic, key, value in records:
            pending.append(await prod.send(topic, value, key=key))
            sent += 1
            if len(pending) >= window:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await prod.stop()
    return sent
