"""What every drill shares: its own services, a supervised worker, paced production, counts.

A :class:`Rig` owns everything one drill starts — a tansu broker on a free port, a scratch
database (or a whole private PostgreSQL cluster), worker processes, a temporary directory — and
stops/removes all of it, by PID and by name, when the drill ends, fails or is interrupted.
The machine's own PostgreSQL is only ever used to create and drop the drill's scratch database.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import asyncpg
from aiokafka import AIOKafkaProducer

from events.topics import TopicNames
from infra import db
from infra.broker import PROCESS_NAME as BROKER_PROCESS
from infra.broker import RunningBroker, start_broker, stop_broker
from infra.kafka import ensure_contract_topics, producer
from infra.postgres import (
    PrivateCluster,
    drop_database,
    local_server_dsn,
    start_private_cluster,
    stop_private_cluster,
    with_database,
)
from infra.processes import alive, free_port
from workers.process import WorkerProcess
from workers.traffic import Message

from .outputs import OutputTap
from .report import say

PARTITIONS = 4
#: Comment on the scratch databases drills create; only those are dropped.
DRILL_MARKER = "drill"


@dataclass(frozen=True)
class DrillConfig:
    """How big a drill run is and which PostgreSQL server holds its scratch databases."""

    quick: bool = False
    seed: int = 7
    #: Maintenance DSN of the server for scratch databases; None = LEADCYCLE_DATABASE_URL's
    #: server, else 127.0.0.1:5432, else a private cluster started for the drill.
    server_dsn: str | None = None


class Broker:
    """The drill's own tansu on a fixed port; a restart on that port forgets everything."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.running: RunningBroker | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.running = start_broker(self.state_dir, self.port)

    def stop(self) -> None:
        if self.running is not None:
            stop_broker(self.running.pid)
            self.running = None

    def crash(self) -> None:
        """SIGKILL the broker: no drain of what it holds (tansu's SIGTERM serves on for ~5 s)."""
        if self.running is not None:
            pid, self.running = self.running.pid, None
            if alive(pid, expect=BROKER_PROCESS):
                os.kill(pid, signal.SIGKILL)
            while alive(pid, expect=BROKER_PROCESS):
                reap(pid)
                time.sleep(0.02)


class Cluster:
    """A private PostgreSQL cluster the drill may stop and start (never the machine's own)."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.port = free_port()
        self.running: PrivateCluster | None = None

    @property
    def server_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self.running = start_private_cluster(self.base_dir, self.port)

    def stop(self) -> None:
        if self.running is not None:
            stop_private_cluster(self.running.data_dir)
            self.running = None


def _proc_status_mb(pid: int, key: str) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return None


class DrillWorker(WorkerProcess):
    """A ``leadcycle worker`` process with its memory readings."""

    def rss_mb(self) -> float | None:
        return _proc_status_mb(self.pid, "VmRSS")

    def peak_rss_mb(self) -> float | None:
        return _proc_status_mb(self.pid, "VmHWM")

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()


_DUPLICATES = re.compile(r"batch: \d+ received, \d+ new, (\d+) duplicate")


class Supervisor:
    """Runs the worker as a service manager would: restarted when it exits, every exit counted.

    Deliberate kills (:meth:`kill_and_restart`) are counted apart from exits the drill did not
    cause; after ``max_restarts`` unplanned exits it stops restarting (a crash loop).
    """

    def __init__(self, log_dir: Path, env: dict[str, str], *, max_restarts: int = 3) -> None:
        self.log_dir = log_dir
        self.env = env
        self.max_restarts = max_restarts
        self.workers: list[DrillWorker] = []
        self.exit_codes: list[int] = []
        self.kills = 0
        self._watch: asyncio.Task[None] | None = None

    @property
    def current(self) -> DrillWorker:
        return self.workers[-1]

    @property
    def restarts(self) -> int:
        return max(len(self.workers) - 1, 0)

    @property
    def crash_loop(self) -> bool:
        return len(self.exit_codes) > self.max_restarts

    def _spawn(self) -> DrillWorker:
        log = self.log_dir / f"worker-{len(self.workers) + 1}.log"
        worker = DrillWorker(log, self.env)
        worker.start()
        self.workers.append(worker)
        return worker

    def start(self) -> DrillWorker:
        worker = self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._watch_exits())
        return worker

    def kill_and_restart(self) -> DrillWorker:
        """kill -9 the current worker and start a new one at once (no await in between, so
        the watcher never mistakes the kill for a crash)."""
        self.current.kill()
        self.kills += 1
        return self._spawn()

    async def _watch_exits(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            code = self.current.exit_code()
            if code is None:
                continue
            self.exit_codes.append(code)
            say(f"worker pid {self.current.pid} exited with code {code}")
            if self.crash_loop:
                say(f"not restarting: {len(self.exit_codes)} exits (crash loop)")
                return
            self._spawn()

    def alive(self) -> bool:
        return self.current.alive()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        for worker in self.workers:
            worker.stop()

    def logs(self) -> str:
        return "".join(w.log() for w in self.workers if w.log_path.exists())

    def tail(self, chars: int = 3000) -> str:
        return self.current.log(chars) if self.current.log_path.exists() else ""

    def duplicates_suppressed(self) -> int | None:
        found = _DUPLICATES.findall(self.logs())
        return sum(int(n) for n in found) if found else None


class Rig:
    """Everything one drill starts, torn down in reverse order on exit, failure or Ctrl-C."""

    def __init__(self, name: str, cfg: DrillConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.stack = AsyncExitStack()
        self.run_id = uuid.uuid4().hex[:8]
        self.topics = TopicNames(f"drill-{name}-{self.run_id}.")
        self.dir = Path(tempfile.mkdtemp(prefix=f"leadcycle-drill-{name}-"))
        self.dir.chmod(0o755)  # a private cluster runs as the postgres user when we are root
        self.stack.callback(shutil.rmtree, self.dir, True)
        # For a post-mortem: the worker logs are copied there before the directory goes.
        keep = os.environ.get("LEADCYCLE_DRILL_KEEP_LOGS")
        if keep:
            target = Path(keep) / f"{name}-{self.run_id}"
            self.stack.callback(_copy_logs, self.dir / "logs", target)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stack.aclose()

    def broker(self) -> Broker:
        broker = Broker(self.dir / "broker")
        broker.start()
        self.stack.callback(broker.stop)
        say(f"{self.name}: broker on {broker.url}")
        return broker

    def cluster(self) -> Cluster:
        """A private PostgreSQL cluster under the drill's directory, on a free port."""
        cluster = Cluster(self.dir / "pg")
        cluster.start()
        self.stack.callback(cluster.stop)
        say(f"{self.name}: private PostgreSQL on 127.0.0.1:{cluster.port}")
        return cluster

    async def server(self) -> str:
        """The maintenance DSN of the server that will hold the drill's scratch database."""
        if self.cfg.server_dsn is not None:
            return self.cfg.server_dsn
        configured = os.environ.get("LEADCYCLE_DATABASE_URL")
        if configured:
            return with_database(configured, "postgres")
        return local_server_dsn() or self.cluster().server_dsn

    async def database(self, server_dsn: str) -> str:
        """A fresh, migrated scratch database, dropped when the drill ends."""
        name = f"lc_drill_{self.name.replace('-', '_')}_{self.run_id}"
        self.stack.push_async_callback(_drop_quietly, server_dsn, name)
        return await db.migrated_database(server_dsn, name, marker=DRILL_MARKER)

    async def topics_on(self, kafka_url: str) -> OutputTap:
        """Create the drill's topics and start reading its output topics (see outputs.py)."""
        await ensure_contract_topics(kafka_url, self.topics, PARTITIONS)
        tap = OutputTap(kafka_url, self.topics)
        await tap.start()
        self.stack.push_async_callback(tap.stop)
        return tap

    async def supervisor(
        self, kafka_url: str, dsn: str, *, max_restarts: int = 3, **env: str
    ) -> Supervisor:
        """A supervised worker on the drill's broker, database and topics, started."""
        sup = Supervisor(
            self.dir / "logs",
            {
                "LEADCYCLE_KAFKA_URL": kafka_url,
                "LEADCYCLE_DATABASE_URL": dsn,
                "LEADCYCLE_APP_ID": f"drill-{self.name}-{self.run_id}",
                "LEADCYCLE_TOPIC_PREFIX": self.topics.prefix,
                "LEADCYCLE_STATE_DIR": str(self.dir / "worker-state"),
                "LEADCYCLE_PARTITIONS": str(PARTITIONS),
                "LEADCYCLE_BATCH_WITHIN": "0.1",
                # The sweep applies time rules the oracle does not model; keep it out.
                "LEADCYCLE_SWEEP_INTERVAL": "3600",
                **env,
            },
            max_restarts=max_restarts,
        )
        sup.start()
        self.stack.push_async_callback(sup.stop)
        return sup


def reap(pid: int) -> None:
    """Collect a child that exited (it looks alive until waited for)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _copy_logs(source: Path, target: Path) -> None:
    if source.exists():
        shutil.copytree(source, target, dirs_exist_ok=True)
        say(f"worker logs kept in {target}")


async def _drop_quietly(server_dsn: str, name: str) -> None:
    try:
        await drop_database(server_dsn, name, marker=DRILL_MARKER)
    except (OSError, asyncpg.PostgresError) as exc:  # the drill's cluster may be down already
        say(f"could not drop scratch database {name}: {exc!r}")


class Feed:
    """Publishes messages to the drill's input topics, optionally paced, and remembers where
    each landed (topic, partition, offset): a stall report can then name the exact offsets.

    A send the broker does not acknowledge (it is away, or restarting) is retried, as a
    producer with retries does, until it is; :attr:`acked` records every acknowledged
    publication (a message sent twice that way is two publications) and when it was.
    """

    def __init__(
        self,
        kafka_url: str,
        topics: TopicNames,
        messages: Sequence[Message],
        *,
        rate: float | None = None,
        chunk: int = 250,
        burst: int = 0,
    ) -> None:
        self.kafka_url = kafka_url
        self.burst = burst  # the first ``burst`` messages go out as fast as they can
        self.topics = topics
        self.messages = messages
        self.rate = rate
        self.chunk = chunk
        self.produced = 0
        self.positions: list[tuple[str, int, int]] = []
        #: (message, (topic suffix, partition, offset), loop time of the acknowledgement)
        self.acked: list[tuple[Message, tuple[str, int, int], float]] = []
        self.retried = 0  # sends that failed and were sent again
        self._producer: AIOKafkaProducer | None = None
        #: Cleared: new sends and retries wait (a producer holding its sends while it cannot
        #: reach the cluster). Sends already on their way are not held.
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self) -> None:
        started = time.monotonic()
        try:
            for i in range(0, len(self.messages), self.chunk):
                part = self.messages[i : i + self.chunk]
                self.positions += await self.publish(part)
                self.produced += len(part)
                if self.produced <= self.burst:
                    started = time.monotonic()
                elif self.rate:
                    paced = self.produced - self.burst
                    ahead = started + paced / self.rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._producer is not None:
            prod, self._producer = self._producer, None
            await prod.stop()

    async def publish(self, part: Sequence[Message]) -> list[tuple[str, int, int]]:
        """Send ``part`` until every message is acknowledged; where each landed."""
        loop = asyncio.get_running_loop()
        where: dict[int, tuple[str, int, int]] = {}

        def landed(n: int, future: asyncio.Future[Any]) -> None:
            # Recorded as the acknowledgement arrives, even for a send given up on below.
            if future.cancelled() or future.exception() is not None or n in where:
                return
            meta = future.result()
            where[n] = (part[n].topic, meta.partition, meta.offset)
            self.acked.append((part[n], where[n], loop.time()))

        while len(where) < len(part):
            await self.gate.wait()
            try:
                if self._producer is None:
                    self._producer = producer(self.kafka_url)
                    await self._producer.start()
                futures = []
                for n in [n for n in range(len(part)) if n not in where]:
                    m = part[n]
                    future = await self._producer.send(
                        self.topics.name(m.topic), m.value, key=m.key
                    )
                    future.add_done_callback(functools.partial(landed, n))
                    futures.append(future)
                await asyncio.gather(*futures, return_exceptions=True)
            except Exception as exc:  # the broker is away: retry what it did not acknowledge
                say(f"producer: {exc!r}; retrying {len(part) - len(where)} messages")
            if len(where) < len(part):
                self.retried += len(part) - len(where)
                await self.close()  # a fresh producer for the retry, as after a restart
                await asyncio.sleep(0.5)
        return [where[n] for n in range(len(part))]


@dataclass(frozen=True)
class Counts:
    events: int
    letters: int
    outbox: int


def events_at_least(n: int) -> Callable[[Counts], bool]:
    return lambda c: c.events >= n


async def counts(conn: asyncpg.Connection) -> Counts:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM event_log) AS e, (SELECT count(*) FROM dead_letters) AS d,"
        # Pending: outputs not published yet, and work forwarded to a shard's owner not done.
        " (SELECT count(*) FROM outbox) + (SELECT count(*) FROM inbox) AS o"
    )
    assert row is not None
    return Counts(row["e"], row["d"], row["o"])


async def wait_for(
    dsn: str,
    done: Callable[[Counts], bool],
    *,
    seconds: float,
    sup: Supervisor | None = None,
    interval: float = 0.2,
    stall: float | None = None,
) -> tuple[bool, Counts, float]:
    """Poll the counts until ``done`` holds; (whether it did, the last counts, seconds waited).

    Gives up early when the supervised worker is in a crash loop (nothing will move any more),
    or when ``stall`` is given and the counts have not moved for that many seconds.
    """
    conn = await asyncpg.connect(dsn)
    started = moved = time.monotonic()
    last: Counts | None = None
    try:
        while True:
            now = await counts(conn)
            waited = time.monotonic() - started
            if done(now):
                return True, now, waited
            if now != last:
                last, moved = now, time.monotonic()
            stalled = stall is not None and time.monotonic() - moved > stall
            if waited > seconds or stalled or (sup is not None and sup.crash_loop):
                return False, now, waited
            await asyncio.sleep(interval)
    finally:
        await conn.close()


async def present_ids(dsn: str, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` event_log holds."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT event_id FROM event_log WHERE event_id = ANY($1)", list(ids)
        )
    finally:
        await conn.close()
    return {r["event_id"] for r in rows}
