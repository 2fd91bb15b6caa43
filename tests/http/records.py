"""Test-side helpers: read a topic with keys, publish a hot lead through the real input path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from events.topics import TopicNames
from infra.kafka import produce_all

Record = tuple[bytes | None, dict[str, Any]]


async def read_topic(
    kafka_url: str,
    topic: str,
    *,
    until: Callable[[list[Record]], bool],
    seconds: float = 20,
) -> list[Record]:
    """Every ``(key, value)`` of ``topic`` from the start, once ``until`` holds (or time is up)."""
    # Assigned partitions, no consumer group: joining a group costs seconds on tansu.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_url, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    await consumer.topics()  # loads metadata
    partitions = consumer.partitions_for_topic(topic) or set()
    consumer.assign([TopicPartition(topic, p) for p in partitions])
    await consumer.seek_to_beginning()
    found: list[Record] = []
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while not until(found) and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                found.extend((r.key, json.loads(r.value)) for r in records)
    finally:
        await consumer.stop()
    return found


def ids_in(records: list[Record]) -> set[str]:
    return {str(v.get("event_id")) for _, v in records}


async def publish_hot_lead(
    kafka_url: str, topics: TopicNames, lead_id: str, *, owner: str, email: str | None = None
) -> None:
    """A strong profile plus a demo request and pricing visits: the worker opens a follow-up."""
    now = datetime.now(UTC)
    at = (now - timedelta(minutes=5)).isoformat()
    profile = {
        "event_id": f"{lead_id}-profile",
        "type": "profile_updated",
        "lead_id": lead_id,
        "occurred_at": (now - timedelta(minutes=10)).isoformat(),
        "email": email or f"{lead_id.lower()}@acme-mfg.example",
        "company_name": f"Acme Manufacturing {lead_id}",
        "company_size": 1500,
        "industry": "manufacturing",
        "job_title": "VP Operations",
        "country": "JP",
        "source": "demo_request",
        "owner": owner,
    }
    behaviour = [
        {
            "event_id": f"{lead_id}-{kind}-{i}",
            "type": kind,
            "occurred_at": at,
            "lead_id": lead_id,
            "properties": {"url": "https://vendor.example/pricing"},
        }
        for i, kind in enumerate(["page_view", "page_view", "demo_request"])
    ]
    key = lead_id.encode()
    await produce_all(
        kafka_url,
        [(topics.profiles, key, json.dumps(profile).encode())]
        + [(topics.events, key, json.dumps(b).encode()) for b in behaviour],
    )
