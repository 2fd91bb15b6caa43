"""``leadcycle demo``: the whole product on embedded services with generated traffic.

Starts (only) what is not configured: a broker, a database, the worker as its own process;
publishes a seeded stream of journeys; waits until the worker has processed every message;
prints a summary; stops everything it started, by PID.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime

import asyncpg

from events.topics import TopicNames
from infra import db, services
from infra.broker import start_broker, stop_broker
from infra.calllist import open_followups
from infra.kafka import ensure_contract_topics, produce_all
from infra.postgres import (
    drop_database,
    ensure_database,
    local_server_dsn,
    start_private_cluster,
    stop_private_cluster,
    with_database,
)
from infra.processes import ServiceError, free_port
from infra.settings import Settings
from scoring.rules import load_rules
from workers.process import WorkerProcess
from workers.render import call_list_table
from workers.report import summary_lines
from workers.traffic import Message, generate, recent_spec

#: Comment the demo puts on the database it creates; it drops no database without it.
DEMO_MARKER = "demo"
CHUNK_DAYS = 5


def say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def run_demo(settings: Settings, *, leads: int, seed: int, timeout: float) -> int:
    with ExitStack() as cleanup:
        # The database first: a name taken by someone else's database stops the demo before
        # it has started anything.
        dsn = _database(settings, cleanup.callback)
        kafka_url = _broker(settings, cleanup.callback)
        asyncio.run(_prepare(settings, kafka_url, dsn))
        worker = _start_worker(settings, kafka_url, dsn)
        cleanup.callback(worker.stop)

        spec = recent_spec(leads=leads, seed=seed, now=datetime.now(UTC))
        messages = list(generate(spec))
        topics = settings.topics
        valid_ids = {json.loads(m.value)["event_id"] for m in messages if m.valid}
        invalid = sum(1 for m in messages if not m.valid)
        say(
            f"publishing {len(messages)} messages for {leads} leads "
            f"({len(valid_ids)} distinct valid events, {invalid} invalid on purpose)"
        )
        # Publish the timeline in chunks of days and let the worker catch up after each, as
        # if those days passed: outcomes then follow the behaviour that led to them.
        started = time.monotonic()
        asyncio.run(
            _replay_timeline(
                kafka_url, dsn, topics, messages, worker, timeout, chunk_days=CHUNK_DAYS
            )
        )
        say(f"worker processed everything in {time.monotonic() - started:.1f} s")
        lines = asyncio.run(_summary(dsn, load_rules(settings.rules_file).calendar.timezone))
        print("\n".join(lines))
    say("stopped everything it started")
    return 0


def _broker(settings: Settings, on_exit: Callable[..., object]) -> str:
    if settings.kafka_url:
        say(f"using the configured broker {settings.kafka_url}")
        return settings.kafka_url
    broker = start_broker(settings.state_dir / "demo", free_port())
    on_exit(stop_broker, broker.pid)
    say(f"started the embedded broker on {broker.url} (pid {broker.pid})")
    return broker.url


def _database(settings: Settings, on_exit: Callable[..., object]) -> str:
    if settings.database_url is not None:
        say("using the configured database (LEADCYCLE_DATABASE_URL); its existing data is kept")
        return settings.database_url.get_secret_value()
    state = services.load_state(settings)
    server = local_server_dsn()
    if state.postgres_pid is not None and state.postgres_dsn:
        server = state.postgres_dsn
    if server is None:
        base = settings.state_dir.resolve() / "demo-pg"
        cluster = start_private_cluster(base, free_port())
        on_exit(stop_private_cluster, cluster.data_dir)
        server = f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
        say(f"started a private PostgreSQL cluster (pid {cluster.pid})")
    return asyncio.run(demo_database(server, settings.database_name))


def demo_database_name(database_name: str) -> str:
    """The demo's database: ``<LEADCYCLE_DATABASE_NAME>_demo``, never the user's own."""
    return f"{database_name}_demo"


async def demo_database(server_dsn: str, database_name: str) -> str:
    """A fresh demo database each run, so the summary describes exactly this run.

    The previous run's database is dropped only if it carries the demo's marker: a database of
    that name someone else made stops the demo with an error instead (NotOurDatabase).
    """
    name = demo_database_name(database_name)
    await drop_database(server_dsn, name, marker=DEMO_MARKER)
    dsn = await ensure_database(server_dsn, name, marker=DEMO_MARKER)
    say(f"using database {with_database(server_dsn, name)} (created by this demo)")
    return dsn


async def _prepare(settings: Settings, kafka_url: str, dsn: str) -> None:
    conn = await db.connect(dsn)
    try:
        applied = await db.migrate(conn)
    finally:
        await conn.close()
    say(f"applied migrations: {', '.join(applied) or 'none needed'}")
    await ensure_contract_topics(kafka_url, settings.topics, settings.partitions)


def _start_worker(settings: Settings, kafka_url: str, dsn: str) -> WorkerProcess:
    env = {
        "LEADCYCLE_KAFKA_URL": kafka_url,
        "LEADCYCLE_DATABASE_URL": dsn,
        "LEADCYCLE_APP_ID": f"{settings.app_id}-demo",
    }
    worker = WorkerProcess(settings.state_dir / "demo-worker.log", env).start()
    say(f"started the worker (pid {worker.pid}); log: {worker.log_path}")
    return worker


async def _replay_timeline(
    kafka_url: str,
    dsn: str,
    topics: TopicNames,
    messages: list[Message],
    worker: WorkerProcess,
    seconds: float,
    *,
    chunk_days: int,
) -> None:
    ordered = sorted(messages, key=lambda m: m.timestamp)
    first = ordered[0].timestamp
    chunks: dict[int, list[Message]] = {}
    for m in ordered:
        chunks.setdefault((m.timestamp - first).days // chunk_days, []).append(m)
    valid_ids: set[str] = set()
    invalid = 0
    deadline = time.monotonic() + seconds
    for chunk in chunks.values():
        valid_ids |= {json.loads(m.value)["event_id"] for m in chunk if m.valid}
        invalid += sum(1 for m in chunk if not m.valid)
        await produce_all(kafka_url, ((topics.name(m.topic), m.key, m.value) for m in chunk))
        await _wait_processed(dsn, len(valid_ids), invalid, worker, deadline - time.monotonic())


async def _wait_processed(
    dsn: str, events: int, invalid: int, worker: WorkerProcess, seconds: float
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        deadline = started + seconds
        last = -1
        while True:
            done = await conn.fetchval("SELECT count(*) FROM event_log")
            letters = await conn.fetchval("SELECT count(*) FROM dead_letters")
            if done >= events and letters >= invalid:
                return
            if not worker.alive():
                raise ServiceError(f"the worker exited; see {worker.log_path}")
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"timed out: {done}/{events} events and {letters}/{invalid} dead letters"
                )
            if done != last and time.monotonic() - started > 5:
                say(f"processed {done}/{events} events, {letters}/{invalid} dead letters")
            last = done
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def _summary(dsn: str, tz: str) -> list[str]:
    conn = await db.connect(dsn)
    try:
        lines = await summary_lines(conn)
        entries = await open_followups(conn, tz=tz)
    finally:
        await conn.close()
    return [
        *lines,
        "",
        "== call list (open follow-ups, by due time then priority)",
        call_list_table(entries, tz),
    ]
