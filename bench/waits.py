"""What the worker's database sessions are doing, sampled at 10 Hz during a run.

Throughput that does not grow with a second worker while cores sit idle means the
transactions wait for each other; ``pg_stat_activity`` says on what (a lock on a row, an
advisory lock, the client — i.e. the worker is computing between statements).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import asyncpg

_QUERY = """
SELECT coalesce(wait_event_type || ':' || wait_event,
                CASE WHEN state = 'active' THEN 'running' ELSE state END) AS what
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
   AND backend_type = 'client backend' AND state <> 'idle'"""


class WaitSampler:
    """A thread that counts non-idle session states until :meth:`stop`."""

    def __init__(self, dsn: str, interval: float = 0.1) -> None:
        self.dsn, self.interval = dsn, interval
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self._stop.is_set():
                for row in await conn.fetch(_QUERY):
                    self.counts[row["what"]] += 1
                self.samples += 1
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    def stop(self) -> dict[str, float]:
        """Average number of sessions in each state (0.5 = half the time, one session)."""
        self._stop.set()
        self._thread.join(10)
        n = max(self.samples, 1)
        return {what: round(c / n, 3) for what, c in self.counts.most_common(8)}
