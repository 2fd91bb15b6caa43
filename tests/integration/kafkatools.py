"""Produce to and consume from the real test broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer

from infra.kafka import ensure_topics, produce_all


async def consume_all(kafka_url: str, topic: str, *, expect: int, seconds: float) -> list[Any]:
    """Read ``topic`` from the beginning until ``expect`` messages arrived (or time runs out)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_url,
        group_id=f"test-reader-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while len(found) < expect and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                found.extend(json.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return found


__all__ = ["consume_all", "ensure_topics", "produce_all"]
