"""Run ``leadcycle worker`` as a real OS process for integration tests (kill -9 included)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tests.conftest import RunningServices
from workers.process import WorkerProcess as BaseWorkerProcess

ROOT = Path(__file__).resolve().parents[2]

if TYPE_CHECKING:
    from tests.integration.conftest import Scenario


def leadcycle_cli(sc: Scenario, *args: str, timeout: float = 120.0, **env: str) -> str:
    """``leadcycle ARGS`` against the scenario's database and topics (plus ``env``); its
    stdout. A non-zero exit fails the test with its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=ROOT,
        env={
            **os.environ,
            "LEADCYCLE_DATABASE_URL": sc.dsn,
            "LEADCYCLE_KAFKA_URL": sc.services.kafka_url,
            "LEADCYCLE_TOPIC_PREFIX": sc.topics.prefix,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class WorkerProcess(BaseWorkerProcess):
    """A worker on the test session's services, isolated by app id and topic prefix."""

    def __init__(self, services: RunningServices, *, app_id: str, prefix: str, **env: str) -> None:
        super().__init__(
            services.state_dir / f"{app_id}-{time.monotonic_ns()}.log",
            {
                "LEADCYCLE_KAFKA_URL": services.kafka_url,
                "LEADCYCLE_DATABASE_URL": services.database_dsn,
                "LEADCYCLE_APP_ID": app_id,
                "LEADCYCLE_TOPIC_PREFIX": prefix,
                "LEADCYCLE_STATE_DIR": str(services.state_dir / app_id),
                "LEADCYCLE_BATCH_WITHIN": "0.1",
                **env,
            },
        )


async def eventually(
    check: Callable[[], Awaitable[bool]],
    *,
    seconds: float,
    what: str,
    workers: tuple[WorkerProcess, ...] = (),
    interval: float = 0.25,
) -> None:
    """Poll an async ``check`` until true; fail with ``what`` after ``seconds``.

    Fails at once, with the log's tail, when one of ``workers`` has died meanwhile.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        for worker in workers:
            if not worker.alive():
                raise AssertionError(f"worker died while waiting for {what}:\n{worker.log(4000)}")
        await asyncio.sleep(interval)
    logs = "".join(f"\n--- {w.log_path.name}\n{w.log(12000)}" for w in workers)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}{logs}")


async def all_applied(
    dsn: str, rows: int, *, workers: tuple[WorkerProcess, ...], seconds: float = 60
) -> None:
    """Wait until the event log holds ``rows`` rows and nothing is pending: the outbox is
    drained (every output published) and no forwarded work waits in the inbox (every event
    applied by its lead's owner)."""
    import asyncpg  # the test rig's own connection, not the worker's

    async def done() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            n = await conn.fetchval(
                "SELECT (SELECT count(*) FROM event_log) * 1000"
                " + (SELECT count(*) FROM outbox) + (SELECT count(*) FROM inbox)"
            )
        finally:
            await conn.close()
        return bool(n == rows * 1000)

    await eventually(done, seconds=seconds, what=f"{rows} logged events", workers=workers)
