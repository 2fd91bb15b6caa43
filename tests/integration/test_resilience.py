"""Crashes, broker restarts, poison and scale-out: nothing lost, nothing counted twice.

The oracle is the pure core folded over the same stream (bench/oracle.py):
fit and behaviour scores do not depend on the order or batching of events, so every lead's
stored scores and applied events must equal it exactly, however the worker was interrupted.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from bench.oracle import expected_states, score_mismatches, stored_states
from infra.broker import start_broker, stop_broker
from infra.postgres import drop_database
from infra.processes import free_port
from scoring.rules import load_rules
from tests.conftest import TEST_MARKER, RunningServices
from tests.integration.conftest import Scenario, make_scenario
from tests.integration.kafkatools import produce_all
from tests.integration.workerproc import WorkerProcess, eventually
from workers.traffic import Message, TrafficSpec, generate

pytestmark = pytest.mark.integration
RULES = load_rules("rules/default.toml")
AT = datetime(2030, 1, 1, tzinfo=UTC)  # scores are compared decayed to one fixed time


def stream(leads: int, seed: int) -> list[Message]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=60)
    spec = TrafficSpec(
        leads=leads, seed=seed, start=start, days=60, duplicate_rate=0.02, invalid_rate=0.01
    )
    return list(generate(spec))


def expected_counts(messages: list[Message]) -> tuple[int, int]:
    """Distinct valid events (bots included: they are logged, not scored) and invalid ones."""
    ids = {json.loads(m.value)["event_id"] for m in messages if m.valid}
    return len(ids), sum(1 for m in messages if not m.valid)


async def counts(dsn: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM event_log) AS e, (SELECT count(*) FROM dead_letters)"
            # Pending: outputs to publish, and work forwarded to a shard's owner not done yet.
            " AS d, (SELECT count(*) FROM outbox) + (SELECT count(*) FROM inbox) AS o"
        )
    finally:
        await conn.close()
    return row["e"], row["d"], row["o"]


async def publish(sc: Scenario, messages: list[Message]) -> None:
    await produce_all(
        sc.services.kafka_url, [(sc.topics.name(m.topic), m.key, m.value) for m in messages]
    )


async def wait_done(
    sc: Scenario, messages: list[Message], workers: tuple[WorkerProcess, ...], seconds: float = 120
) -> None:
    events, invalid = expected_counts(messages)

    async def done() -> bool:
        e, d, o = await counts(sc.dsn)
        return e == events and d == invalid and o == 0  # outbox drained too

    await eventually(
        done, seconds=seconds, what=f"{events} events, {invalid} dead letters", workers=workers
    )


def assert_matches_oracle(messages: list[Message], stored: dict[str, object]) -> None:
    want = expected_states([(m.topic, m.value) for m in messages], RULES, now=AT)
    problems = score_mismatches(want, stored, RULES, at=AT)  # type: ignore[arg-type]
    assert problems == [], f"{len(problems)} leads differ, e.g. {problems[:5]}"
    assert len(want) > 100


def worker_for(sc: Scenario, label: str, **env: str) -> WorkerProcess:
    return WorkerProcess(
        sc.services,
        app_id=f"{sc.name}-{label}",
        prefix=sc.topics.prefix,
        LEADCYCLE_BATCH_SIZE="500",
        **env,
    )


async def test_kill_9_mid_stream_loses_and_doubles_nothing(scenario: Scenario) -> None:
    messages = stream(leads=1500, seed=21)
    events, _ = expected_counts(messages)
    await publish(scenario, messages)
    kills = 0
    for fraction in (0.2, 0.55):
        worker = worker_for(scenario, "crashy").start()

        async def progressed(goal: int = int(events * fraction)) -> bool:
            return (await counts(scenario.dsn))[0] >= goal

        await eventually(
            progressed,
            seconds=90,
            what="progress before the kill",
            workers=(worker,),
            interval=0.05,
        )
        worker.kill()
        kills += 1
        assert (await counts(scenario.dsn))[0] < events, "finished before it could be killed"
    worker = worker_for(scenario, "crashy").start()
    try:
        await wait_done(scenario, messages, (worker,))
    finally:
        worker.stop()
    assert kills == 2
    assert_matches_oracle(messages, await stored_states(scenario.dsn))


@pytest.mark.parametrize("restart_worker", [True, False], ids=["worker-restarted", "worker-kept"])
async def test_broker_restart_between_halves(
    services: RunningServices, restart_worker: bool
) -> None:
    """The memory broker restarts between two halves of a stream (topics, offsets and group
    gone), the second half is published after the restart. Either the worker is restarted
    with it (it recreates the topics at start), or it is left running (it rejoins, its relay
    timer recreates the topics, it reads the new log from its start). Lead state lives in
    PostgreSQL, so the result equals one uninterrupted run."""
    port = free_port()
    broker = start_broker(services.state_dir / f"broker-{port}", port)
    try:
        sc = await make_scenario(replace(services, kafka_url=broker.url), "restart")
    except BaseException:
        stop_broker(broker.pid)  # started here, stopped here, whatever failed
        raise
    messages = stream(leads=600, seed=22 if restart_worker else 24)
    half = len(messages) // 2
    worker = worker_for(sc, "w").start()
    try:
        await publish(sc, messages[:half])
        await wait_done(sc, messages[:half], (worker,))
        if restart_worker:
            worker.kill()
        stop_broker(broker.pid)  # memory store: every topic, offset and group is gone
        broker = start_broker(services.state_dir / f"broker-{port}", port)
        if restart_worker:
            worker = worker_for(sc, "w").start()
        await eventually(
            lambda: _topics_exist(broker.url, sc),
            seconds=60,
            what="the worker to recreate the topics",
            workers=(worker,),
        )
        await publish(sc, messages[half:])
        await wait_done(sc, messages, (worker,))
        assert worker.alive(), "the worker did not survive the restart"
    finally:
        worker.stop()
        stop_broker(broker.pid)
    try:
        assert_matches_oracle(messages, await stored_states(sc.dsn))
    finally:
        await drop_database(services.server_dsn, sc.name, marker=TEST_MARKER)


async def _topics_exist(kafka_url: str, sc: Scenario) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_url)
    await admin.start()
    try:
        return set(sc.topics.all()) <= set(await admin.list_topics())
    finally:
        await admin.close()


async def test_two_workers_in_one_group_match_one(scenario: Scenario) -> None:
    messages = stream(leads=1500, seed=23)
    workers = (worker_for(scenario, "pair").start(), worker_for(scenario, "pair").start())
    try:
        await asyncio.sleep(8)  # both joined: the group splits the partitions between them
        await publish(scenario, messages)
        await wait_done(scenario, messages, workers)
    finally:
        for w in workers:
            w.stop()
    applied = [new_events_in_log(w) for w in workers]
    assert all(n > 0 for n in applied), f"a worker never got a partition: {applied}"
    assert_matches_oracle(messages, await stored_states(scenario.dsn))


def new_events_in_log(worker: WorkerProcess) -> int:
    """Sum of the "N new" counts of the worker's batch log lines."""
    return sum(int(m) for m in re.findall(r"batch: \d+ received, (\d+) new", worker.log()))


HOSTILE = [
    b"\xc3\x28\xa0\xa1",  # invalid UTF-8
    b"{" + b'"x": "' + b"A" * 1_000_000 + b'"}',  # 1 MB
    json.dumps(
        {
            "event_id": 5,
            "type": "page_view",
            "occurred_at": "2026-01-01T00:00:00Z",
            "anonymous_id": ["a"],
        }
    ).encode(),  # wrong types
    json.dumps(
        {
            "event_id": "x'; DROP TABLE leads; --",
            "type": "page_view",
            "occurred_at": "2026-01-01T00:00:00Z",
            "anonymous_id": "a1",
        }
    ).encode(),
    b"null",
    b'{"__proto__": {"admin": true}}',
    json.dumps(
        {
            "event_id": "nul-1",
            "type": "page_view",
            "occurred_at": "2026-01-01T00:00:00Z",
            "anonymous_id": "a1",
            "properties": {"title": "a\u0000b"},
        }
    ).encode(),
    json.dumps(
        {
            "event_id": "deep",
            "type": "page_view",
            "occurred_at": "2026-01-01T00:00:00Z",
            "anonymous_id": "a1",
            "properties": {"x": [[[[[[1]]]]]]},
        }
    ).encode(),
]


async def test_poison_stream_is_dead_lettered_and_the_rest_processed(scenario: Scenario) -> None:
    messages = stream(leads=200, seed=24)
    sqlish = {
        "event_id": "sql-1",
        "type": "page_view",
        "occurred_at": "2026-11-01T00:00:00Z",
        "anonymous_id": "robert",
        "properties": {"title": "Robert'); DROP TABLE event_log;--", "url": "/?q=1' OR '1'='1"},
    }
    worker = worker_for(scenario, "poison").start()
    try:
        mixed = [(scenario.topics.name(m.topic), m.key, m.value) for m in messages]
        for i, bad in enumerate(HOSTILE):
            mixed.insert(i * 50, (scenario.topics.events, b"evil", bad))
        mixed.append((scenario.topics.events, b"robert", json.dumps(sqlish).encode()))
        await produce_all(scenario.services.kafka_url, mixed)
        events, invalid = expected_counts(messages)

        async def done() -> bool:
            e, d, _ = await counts(scenario.dsn)
            return e == events + 1 and d == invalid + len(HOSTILE)

        await eventually(done, seconds=90, what="poison and valid events", workers=(worker,))
        assert worker.alive()
    finally:
        worker.stop()
    conn = await asyncpg.connect(scenario.dsn)
    try:
        stored = await conn.fetchval(
            "SELECT payload->'properties'->>'title' FROM event_log WHERE event_id = 'sql-1'"
        )
        assert stored == "Robert'); DROP TABLE event_log;--"  # data, never SQL
        reasons = {
            r["reason"]
            for r in await conn.fetch(
                "SELECT reason FROM dead_letters WHERE source_topic = $1", scenario.topics.events
            )
        }
        assert {"invalid_utf8", "too_large", "schema"} <= reasons
        assert await conn.fetchval("SELECT count(*) FROM dead_letters WHERE error = ''") == 0
    finally:
        await conn.close()
    # The poison was interleaved with a real stream: that stream scored exactly as without it.
    assert_matches_oracle(messages, await stored_states(scenario.dsn))
