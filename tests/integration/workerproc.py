"""Run ``leadcycle worker`` as a real OS process for integration tests (kill -9 included)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.conftest import RunningServices

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(self, services: RunningServices, *, app_id: str, prefix: str, **env: str) -> None:
        self.log_path = services.state_dir / f"{app_id}-{time.monotonic_ns()}.log"
        self.env = {
            **os.environ,
            "LEADCYCLE_KAFKA_URL": services.kafka_url,
            "LEADCYCLE_DATABASE_URL": services.database_dsn,
            "LEADCYCLE_APP_ID": app_id,
            "LEADCYCLE_TOPIC_PREFIX": prefix,
            "LEADCYCLE_STATE_DIR": str(services.state_dir / app_id),
            "LEADCYCLE_BATCH_WITHIN": "0.1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", "worker", "--loglevel", "info"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no shutdown hook runs, nothing is flushed or committed."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


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
                raise AssertionError(
                    f"worker died while waiting for {what}:\n{worker.log()[-4000:]}"
                )
        await asyncio.sleep(interval)
    logs = "".join(f"\n--- {w.log_path.name}\n{w.log()[-12000:]}" for w in workers)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}{logs}")
