"""leadcycle end to end: real ``leadcycle worker`` processes until PostgreSQL holds every effect.

"Done" is counted in the database (event_log + dead_letters reach the traffic's totals), never
judged from consumer lag: tansu's end offsets are wrong (shared/notes/stack.md).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .load import Traffic
from .profile import Profile, Sampler
from .services import (
    Progress,
    Services,
    Worker,
    machine_busy_seconds,
    say,
    wait_committed,
)
from .waits import WaitSampler


@dataclass(frozen=True)
class EndToEnd:
    progress: Progress
    workers: int
    peak_rss_mb: list[float]
    #: CPU used per worker process, in cores, over the whole life of the process.
    worker_cores: list[float]
    #: Cores the whole machine kept busy (all processes, ours and others') during the run.
    machine_cores: float
    #: Average number of the workers' database sessions in each non-idle state.
    db_sessions: dict[str, float]
    profile: Profile | None
    #: From the workers' logs: items forwarded to another shard's owner, and batches done
    #: again because a lead row changed after it was read (no other re-scoring exists).
    forwarded: int = 0
    redone: int = 0


def run_leadcycle(
    services: Services,
    traffic: Traffic,
    *,
    prefix: str,
    group: str,
    processes: int,
    worker_env: dict[str, str],
    profile_to: Path | None = None,
    seconds: float = 900,
) -> EndToEnd:
    """Fresh database, ``processes`` workers in one consumer group, wait for every row."""
    services.fresh_database()
    workers = [
        Worker(services, app_id=group, prefix=prefix, **worker_env) for _ in range(processes)
    ]
    sampler, waits = None, WaitSampler(services.dsn)
    started, busy = time.monotonic(), machine_busy_seconds()
    try:
        for w in workers:
            w.start()
        if profile_to is not None:
            time.sleep(1.0)  # let the interpreter come up before py-spy attaches
            sampler = Sampler(workers[0].pid, profile_to)
        progress = asyncio.run(
            wait_committed(
                services.dsn,
                events=traffic.distinct_valid,
                letters=traffic.invalid,
                workers=workers,
                seconds=seconds,
                steady=processes > 1,
            )
        )
        profile = sampler.stop() if sampler is not None else None
        sampler = None
        db_sessions = waits.stop()
        rss = [r for r in (w.peak_rss_mb() for w in workers) if r is not None]
        wall = time.monotonic() - started
        machine = (machine_busy_seconds() - busy) / wall
        cores = [c / wall for c in (w.cpu_seconds() for w in workers) if c is not None]
        logs = [w.log() for w in workers]
    finally:
        if sampler is not None:
            sampler.stop()
        waits.stop()
        for w in workers:
            w.stop()
    say(
        f"leadcycle x{processes}: {progress.total} rows in "
        f"{progress.done_at - progress.first_at:.1f} s = {progress.rate:,.0f} events/s; "
        f"worker CPU {', '.join(f'{c:.2f}' for c in cores)} cores, machine {machine:.2f} cores"
    )
    forwarded = sum(int(n) for t in logs for n in re.findall(r"(\d+) forwarded to other", t))
    redone = sum(t.count("batch not committed (StaleState") for t in logs)
    return EndToEnd(
        progress, processes, rss, cores, machine, db_sessions, profile, forwarded, redone
    )
