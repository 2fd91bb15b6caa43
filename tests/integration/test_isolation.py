"""What the database would refuse never reaches it, and a batch that fails anyway is bisected.

Real broker and real PostgreSQL: a worker fed numbers and text that jsonb refuses among good
events scores every good one and dead-letters the bad ones naming the field; an Ingestor whose
apply step fails for one chosen event commits every other event once, in about 2 log2 n commits.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import pytest

from events.decode import InputEvent
from infra import db
from infra.store import OutboxRecord
from scoring.intake import split
from tests.integration.conftest import Scenario
from tests.integration.kafkatools import produce_all
from tests.integration.workerproc import WorkerProcess, eventually
from workers.ingest import Incoming, Ingestor

pytestmark = pytest.mark.integration


def demo_request(event_id: str, lead_id: str, extra: str = "") -> bytes:
    """A demo request (it always scores) whose properties end with raw JSON text ``extra``."""
    doc = {
        "event_id": event_id,
        "type": "demo_request",
        "occurred_at": "2026-11-02T09:30:00Z",
        "lead_id": lead_id,
        "properties": {"form_id": "demo"},
        "context": {"user_agent": "Mozilla/5.0 (X11; Linux x86_64)"},
    }
    text = json.dumps(doc).encode()
    return text.replace(b'"demo"', b'"demo"' + (b", " + extra.encode() if extra else b""))


#: What used to pass the decoder and fail in PostgreSQL (or change on the way), and the field
#: each rejection must name.
BAD: dict[str, tuple[str, str]] = {
    "overflow": ('"n": 1e400', "properties.n"),
    "negative-overflow": ('"n": -1e400', "properties.n"),
    "nan": ('"n": NaN', "properties.n"),
    "infinity": ('"n": Infinity', "properties.n"),
    "underflow": ('"n": 1e-400', "properties.n"),
    "huge-int": ('"n": ' + "7" * 400, "properties.n"),
    "int64-plus-one": (f'"n": {2**63}', "properties.n"),
    "surrogate": ('"n": "\\ud800"', "properties.n"),
    "surrogate-key": ('"\\udfff": "x"', "properties.\\udfff"),
}


async def test_worker_dead_letters_what_postgres_refuses_and_scores_the_rest(
    scenario: Scenario,
) -> None:
    run = uuid.uuid4().hex[:6]
    good = [f"{run}-good-{i}" for i in range(30)]
    records = [(scenario.topics.events, b"k", demo_request(g, f"L-{g}")) for g in good]
    bad_ids = {}
    for i, (label, (extra, _)) in enumerate(BAD.items()):
        event_id = f"{run}-bad-{label}"
        bad_ids[label] = event_id
        records.insert(
            3 * i + 1, (scenario.topics.events, b"k", demo_request(event_id, "L-x", extra))
        )
    # A lone surrogate as bytes (CESU-8), as a producer that encodes with surrogatepass sends it.
    cesu = demo_request(f"{run}-bad-cesu", "L-x", '"n": "\\udc80"').replace(
        b"\\udc80", b"\xed\xb2\x80"
    )
    records.append((scenario.topics.events, b"k", cesu))
    worker = WorkerProcess(
        scenario.services, app_id=f"{scenario.name}-iso", prefix=scenario.topics.prefix
    ).start()
    conn = await asyncpg.connect(scenario.dsn)
    try:
        await produce_all(scenario.services.kafka_url, records)

        async def done() -> bool:
            scored = await conn.fetchval(
                "SELECT count(DISTINCT event_id) FROM score_ledger"
                " WHERE split_part(event_id, '|', 2) = ANY($1)",
                good,
            )
            letters = await conn.fetchval(
                "SELECT count(*) FROM dead_letters WHERE source_topic = $1", scenario.topics.events
            )
            return bool(scored == len(good) and letters == len(BAD) + 1)

        await eventually(
            done, seconds=90, what="good events scored, bad ones dead-lettered", workers=(worker,)
        )
        assert worker.alive()
        logged = await conn.fetch("SELECT event_id, count(*) AS n FROM event_log GROUP BY event_id")
        assert {r["event_id"]: r["n"] for r in logged} == dict.fromkeys(good, 1)
        letters = await conn.fetch(
            "SELECT reason, error FROM dead_letters WHERE source_topic = $1", scenario.topics.events
        )
        assert {r["reason"] for r in letters} == {"schema"}  # refused at decode, not by the DB
        errors = sorted(r["error"] for r in letters)
        for label, (_, field) in BAD.items():
            assert any(e.startswith(f"{field}: ") for e in errors), (label, errors)
        assert sum(e.startswith("properties.n: ") for e in errors) == len(BAD)  # + the CESU one
        # Nothing reached PostgreSQL to fail there: no batch had to be bisected.
        assert "bisecting" not in worker.log()
    finally:
        await conn.close()
        worker.stop()


class Recorder:
    async def publish(self, records: Sequence[OutboxRecord]) -> None:
        pass


async def test_a_failing_batch_is_bisected_not_replayed_one_by_one(scenario: Scenario) -> None:
    n = 64
    poison = "ev-41"
    applies: list[list[str]] = []

    async def apply(
        conn: asyncpg.Connection, events: Sequence[InputEvent], now: datetime
    ) -> list[OutboxRecord]:
        ids = [split(e.event_id)[1] for e in events]  # the producer's ids (inside: qualified)
        applies.append(ids)
        # What the batch changes, in the batch's transaction: rolled back when it fails.
        await conn.executemany("INSERT INTO applied (event_id) VALUES ($1)", [(i,) for i in ids])
        if poison in ids:
            raise ValueError(f"cannot apply {poison}")  # not transient: retrying cannot help
        return []

    pool = await db.create_pool(scenario.dsn)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE applied (seq serial PRIMARY KEY, event_id text)")
        ingestor = Ingestor(pool, scenario.topics, Recorder(), max_message_bytes=65536, apply=apply)
        batch = [
            Incoming("events", 0, i, b"k", demo_request(f"ev-{i}", f"L-{i}")) for i in range(n)
        ]
        batch.insert(10, Incoming("events", 0, 999, b"k", b"{not json"))  # rejected at decode
        report = await ingestor.handle(batch)
        await ingestor.drain()

        async with pool.acquire() as conn:
            applied = [
                r["event_id"] for r in await conn.fetch("SELECT event_id FROM applied ORDER BY seq")
            ]
            logged = await conn.fetch("SELECT event_id FROM event_log")
            letters = await conn.fetch(
                'SELECT reason, error, "offset" FROM dead_letters ORDER BY "offset"'
            )
        expected = [f"ev-{i}" for i in range(n) if f"ev-{i}" != poison]
        # Every other event committed exactly once, in the batch's order.
        assert applied == expected
        assert sorted(r["event_id"] for r in logged) == sorted(expected)
        assert [(r["reason"], r["offset"]) for r in letters] == [
            ("processing_error", 41),
            ("invalid_json", 999),
        ]
        assert "cannot apply ev-41" in letters[0]["error"]
        assert report.new_events == n - 1
        assert report.dead_letters == 2
        # The whole batch once, then at most two tries per level of halving and the dead
        # letter: about 2 log2 n, where one message at a time took n + 2.
        bound = 1 + 2 * math.ceil(math.log2(n)) + 1 + 1  # + the decode rejections' own commit
        assert report.attempts == len(applies)  # every transaction calls apply, even empty
        assert report.attempts <= bound, (report.attempts, applies)
        assert report.attempts < n // 4
    finally:
        await pool.close()
