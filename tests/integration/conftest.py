"""Per-test isolation on the session's services: a fresh database and topic prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from events.topics import TopicNames
from infra import db
from infra.kafka import ensure_contract_topics
from infra.postgres import drop_database
from tests.conftest import TEST_MARKER, RunningServices


@dataclass(frozen=True)
class Scenario:
    """A test's own database and topics on the shared broker and server."""

    services: RunningServices
    name: str
    topics: TopicNames

    @property
    def dsn(self) -> str:
        return self.services.database_dsn


async def make_scenario(services: RunningServices, label: str) -> Scenario:
    name = f"lc_{label}_{uuid.uuid4().hex[:8]}"
    dsn = await db.migrated_database(services.server_dsn, name, marker=TEST_MARKER)
    topics = TopicNames(f"{name}.")
    await ensure_contract_topics(services.kafka_url, topics, 4)
    return Scenario(replace(services, database_dsn=dsn), name, topics)


@pytest.fixture
async def scenario(services: RunningServices) -> AsyncIterator[Scenario]:
    made = await make_scenario(services, "s")
    yield made
    await drop_database(services.server_dsn, made.name, marker=TEST_MARKER)
