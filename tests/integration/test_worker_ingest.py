"""The worker process on the real broker and database: accepts, dedupes, dead-letters, survives."""

from __future__ import annotations

import json
import uuid

import pytest

from events.topics import TopicNames
from infra import db
from infra.kafka import ensure_contract_topics
from tests.conftest import RunningServices
from tests.integration.kafkatools import consume_all, produce_all
from tests.integration.workerproc import WorkerProcess, eventually

pytestmark = pytest.mark.integration


def ev(event_id: str, **over: object) -> bytes:
    doc = {
        "event_id": event_id,
        "type": "page_view",
        "occurred_at": "2026-11-02T09:30:00+09:00",
        "anonymous_id": "a-77",
        "properties": {"url": "https://example.com/pricing"},
        "context": {"user_agent": "Mozilla/5.0 (X11; Linux x86_64)"},
    }
    doc.update(over)
    return json.dumps(doc).encode()


async def test_worker_ingests_dedupes_and_dead_letters(services: RunningServices) -> None:
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(f"t-{run}.")
    await ensure_contract_topics(services.kafka_url, topics, 4)
    worker = WorkerProcess(services, app_id=f"ingest-{run}", prefix=topics.prefix).start()
    conn = await db.connect(services.database_dsn)
    try:
        good = [f"{run}-e{i}" for i in range(20)]
        records = [(topics.events, b"a-77", ev(i)) for i in good]
        records += [(topics.events, b"a-77", ev(good[0]))]  # duplicate delivery
        records += [
            (
                topics.profiles,
                b"L1",
                json.dumps(
                    {
                        "event_id": f"{run}-p1",
                        "type": "profile_updated",
                        "lead_id": "L1",
                        "occurred_at": "2026-11-02T00:00:00Z",
                        "company_size": 300,
                    }
                ).encode(),
            ),
            (
                topics.outcomes,
                b"L1",
                json.dumps(
                    {
                        "event_id": f"{run}-o1",
                        "type": "sales_outcome",
                        "lead_id": "L1",
                        "occurred_at": "2026-11-03T00:00:00Z",
                        "outcome": "contacted",
                    }
                ).encode(),
            ),
            (topics.events, b"bot", ev(f"{run}-bot", context={"user_agent": "Googlebot/2.1"})),
        ]
        bad = [
            (topics.events, b"x", b"\xff\xfe\xfa"),
            (topics.events, b"x", ev(f"{run}-naive", occurred_at="2026-11-02T09:30:00")),
            (topics.events, b"x", ev(f"{run}-big", properties={"title": "t" * 70_000})),
            (topics.events, b"x", ev(f"{run}-type", type="purchase")),
            (topics.outcomes, b"x", b"{'sql': 'x'); DROP TABLE event_log; --"),
        ]
        await produce_all(services.kafka_url, records + bad)

        ids = [*good, f"{run}-p1", f"{run}-o1", f"{run}-bot"]

        async def all_logged() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM event_log WHERE event_id = ANY($1)", ids)
            d = await conn.fetchval(
                "SELECT count(*) FROM dead_letters WHERE source_topic LIKE $1", f"t-{run}.%"
            )
            return bool(n == len(ids) and d == len(bad))

        await eventually(
            all_logged, seconds=60, what="the worker to log every message", workers=(worker,)
        )
        rows = await conn.fetch(
            "SELECT event_id, disposition, subject FROM event_log WHERE event_id = ANY($1)", ids
        )
        assert {r["event_id"]: r["disposition"] for r in rows}[f"{run}-bot"] == "bot"
        assert {r["subject"] for r in rows if r["event_id"] in good} == {"anon:a-77"}
        reasons = await conn.fetch(
            "SELECT reason, error FROM dead_letters WHERE source_topic LIKE $1 ORDER BY reason",
            f"t-{run}.%",
        )
        assert sorted(r["reason"] for r in reasons) == [
            "invalid_json",
            "invalid_utf8",
            "schema",
            "too_large",
            "unknown_type",
        ]
        assert any("occurred_at" in r["error"] for r in reasons)

        letters = await consume_all(services.kafka_url, topics.dead_letters, expect=5, seconds=20)
        assert len(letters) == 5
        assert {m["source_topic"] for m in letters} == {topics.events, topics.outcomes}
        assert all(m["payload_size"] > 0 and m["error"] for m in letters)
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0

        # Still alive and still consuming after the bad input.
        assert worker.alive()
        await produce_all(services.kafka_url, [(topics.events, b"a-77", ev(f"{run}-after"))])

        async def after_logged() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM event_log WHERE event_id = $1", f"{run}-after"
                )
            )

        await eventually(after_logged, seconds=30, what="an event after the poison")
    finally:
        worker.stop()
        await conn.close()
    assert worker.proc is not None
    assert worker.proc.returncode == 0, worker.log()[-3000:]
