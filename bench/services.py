"""The services one bench run owns: a private tansu broker, a scratch database, worker processes.

Everything is started on a free port / under a fresh name and stopped by PID at the end, so a
bench run never touches a developer's broker, database or ``.leadcycle`` state.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from infra import db
from infra.broker import start_broker, stop_broker
from infra.postgres import NotOurDatabase, drop_database, local_server_dsn
from infra.processes import ServiceError, free_port
from infra.settings import Settings
from workers.process import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]
#: Comment the bench puts on the database it creates; it drops no database without it.
MARKER = "bench"


def bench_database_name(database_name: str) -> str:
    """The bench's scratch database: ``<LEADCYCLE_DATABASE_NAME>_bench``."""
    return f"{database_name}_bench"


def say(text: str) -> None:
    """Progress goes to stderr; the figures table goes to stdout."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Services:
    kafka_url: str
    server_dsn: str
    state_dir: Path
    database: str

    @property
    def dsn(self) -> str:
        from infra.postgres import with_database

        return with_database(self.server_dsn, self.database)

    def fresh_database(self) -> str:
        """Drop and recreate the bench database, migrated: every measured pass starts empty.
        Only a database the bench marked as its own is dropped (else NotOurDatabase)."""
        return asyncio.run(recreate_database(self.server_dsn, self.database))


async def recreate_database(server_dsn: str, name: str) -> str:
    """``name`` dropped if the bench made it, then created (marked) and migrated."""
    return await db.migrated_database(server_dsn, name, marker=MARKER, fresh=True)


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (from /proc/stat): the machine-wide
    utilisation over a window is the difference of two readings over its wall time."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _server_dsn() -> str:
    configured = os.environ.get("LEADCYCLE_DATABASE_URL")
    if configured:
        from infra.postgres import with_database

        return with_database(configured, "postgres")
    local = local_server_dsn()
    if local is None:
        raise ServiceError("the bench needs PostgreSQL on 127.0.0.1:5432 or LEADCYCLE_DATABASE_URL")
    return local


@contextmanager
def running_services() -> Iterator[Services]:
    """A broker on a free port and a scratch database; both gone when the block exits."""
    server = _server_dsn()
    database = bench_database_name(Settings().database_name)
    # Refuse before starting anything if the name is taken by a database the bench did not
    # make: the user's data stays, and nothing is left running.
    try:
        asyncio.run(drop_database(server, database, marker=MARKER))
    except NotOurDatabase as exc:
        raise SystemExit(f"bench: {exc}") from exc
    state_dir = Path(tempfile.mkdtemp(prefix="leadcycle-bench-"))
    broker = start_broker(state_dir / "broker", free_port())
    say(f"broker on {broker.url} (pid {broker.pid}); state in {state_dir}; database {database}")
    try:
        yield Services(broker.url, server, state_dir, database)
    finally:
        stop_broker(broker.pid)
        asyncio.run(drop_database(server, database, marker=MARKER))
        shutil.rmtree(state_dir, ignore_errors=True)
        say(f"stopped the broker, dropped the bench database {database}, removed the state dir")


class Worker(WorkerProcess):
    """One ``leadcycle worker`` process on the bench's services, with /proc readings."""

    def __init__(self, services: Services, *, app_id: str, prefix: str, **env: str) -> None:
        super().__init__(
            services.state_dir / f"{app_id}-{time.monotonic_ns()}.log",
            {
                "LEADCYCLE_KAFKA_URL": services.kafka_url,
                "LEADCYCLE_DATABASE_URL": services.dsn,
                "LEADCYCLE_APP_ID": app_id,
                "LEADCYCLE_TOPIC_PREFIX": prefix,
                "LEADCYCLE_STATE_DIR": str(services.state_dir / app_id),
                # The sweep is not part of the ingest path; keep it out of the measured window.
                "LEADCYCLE_SWEEP_INTERVAL": "3600",
                **env,
            },
        )

    def peak_rss_mb(self) -> float | None:
        """Peak resident set size (VmHWM) so far, read before the process is stopped."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the process has used so far (from /proc)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # utime and stime are fields 14 and 15 of stat(5); the split starts at field 3.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, chars: int = 3000) -> str:
        return self.log(chars)

    def owns_partitions(self) -> bool:
        """Whether the worker's latest assignment (workers/consumer.py logs each) is not empty."""
        assigned = re.findall(r"partitions assigned: (.*)", self.log())
        return bool(assigned) and assigned[-1].strip() != "none"


@dataclass(frozen=True)
class Progress:
    """Rows committed at two instants: the first commit seen and the moment all were in."""

    first_at: float
    first_rows: int
    done_at: float
    total: int

    @property
    def rate(self) -> float:
        """Steady-state events/s: rows after the first commit over the time they took.

        The first batch is left out because it includes consumer-group join and fetch warm-up,
        which is start-up cost, not throughput.
        """
        return (self.total - self.first_rows) / max(self.done_at - self.first_at, 1e-9)


async def wait_committed(
    dsn: str,
    *,
    events: int,
    letters: int,
    workers: list[Worker],
    seconds: float,
    steady: bool = False,
) -> Progress:
    """Poll event_log + dead_letters until they hold the expected totals (never end offsets:
    tansu reports wrong ones, see shared/notes/stack.md). With ``steady``, the clock starts
    only once every worker owns partitions (the group's start-up rebalances are over)."""
    conn = await asyncpg.connect(dsn)
    deadline = time.monotonic() + seconds
    first: tuple[float, int] | None = None
    target = events + letters
    try:
        while True:
            # Work forwarded to another shard's owner and not done yet is not done.
            n = await conn.fetchval(
                "SELECT (SELECT count(*) FROM event_log) + (SELECT count(*) FROM dead_letters)"
                " - (SELECT count(*) FROM inbox)"
            )
            now = time.monotonic()
            if n and first is None and (not steady or all(w.owns_partitions() for w in workers)):
                first = (now, n)
            if n >= target:
                assert first is not None
                return Progress(first[0], first[1], now, n)
            for w in workers:
                if not w.alive():
                    raise ServiceError(f"a worker exited:\n{w.tail()}")
            if now > deadline:
                raise ServiceError(f"timed out at {n}/{target} rows")
            # count(*) costs a few ms of a shared core: poll gently (figures carry ±0.2 s).
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
