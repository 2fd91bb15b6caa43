"""The traffic every pipeline reads: generated once (workers/traffic.py), published once."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from events.topics import TopicNames
from infra.kafka import ensure_topics, produce_all
from workers.traffic import Message, generate, recent_spec

PARTITIONS = 4
#: Journeys average ~11 messages a lead; the issue's mix is 500k events for 50k leads.
EVENTS_PER_LEAD = 11


@dataclass(frozen=True)
class Traffic:
    """A generated stream and the totals a consumer must reach to have read all of it."""

    messages: list[Message]
    distinct_valid: int  # rows event_log holds when all is done (bots included)
    invalid: int  # rows dead_letters holds when all is done

    @property
    def total(self) -> int:
        return len(self.messages)

    @property
    def mean_bytes(self) -> float:
        return sum(len(m.value) for m in self.messages) / max(self.total, 1)


def make_traffic(*, leads: int, seed: int, events: int | None = None) -> Traffic:
    """Seeded realistic traffic ending today, ~1 % duplicates, ~0.5 % invalid, truncated to
    ``events`` messages when given (the tail of the window is cut, not a sample)."""
    spec = recent_spec(leads=leads, seed=seed, now=datetime.now(UTC))
    messages = []
    for m in generate(spec):
        messages.append(m)
        if events is not None and len(messages) >= events:
            break
    ids = {json.loads(m.value)["event_id"] for m in messages if m.valid}
    return Traffic(messages, len(ids), sum(1 for m in messages if not m.valid))


async def preload(kafka_url: str, topics: TopicNames, traffic: Traffic) -> float:
    """Create every contract topic under ``topics`` and publish the stream; return seconds."""
    await ensure_topics(kafka_url, topics.all(), partitions=PARTITIONS)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await produce_all(kafka_url, ((topics.name(m.topic), m.key, m.value) for m in traffic.messages))
    return loop.time() - started
