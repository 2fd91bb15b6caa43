"""Stop PostgreSQL mid-stream for a while, start it again, and check nothing was acked unwritten.

The drill runs its own private cluster (``infra/postgres.py``: initdb/pg_ctl, as the postgres
user when root) on a free port and stops only that one — never the machine's server. While the
stream keeps arriving the database is stopped (``pg_ctl stop -m fast``: every session is cut)
for 30 s (5 s in the short form). The worker must stay up (same PID, no exit, no crash loop),
retry its batch with backoff instead of acknowledging it, and catch up once PostgreSQL is back;
the final database must equal the pure core over the whole stream.
"""

from __future__ import annotations

import asyncio
import re
import time

from bench.load import make_traffic

from .harness import DrillConfig, Feed, Rig, present_ids, wait_for
from .report import DrillResult, say
from .verify import conclude, event_id, expect, wait_all_in

_RETRY = re.compile(r"database unavailable .*retrying the batch in ([\d.]+) s")


async def run(cfg: DrillConfig) -> DrillResult:
    result = DrillResult("postgres-outage")
    started = time.monotonic()
    leads, outage, rate = (200, 5.0, 300.0) if cfg.quick else (1200, 30.0, 300.0)
    traffic = make_traffic(leads=leads, seed=cfg.seed, events=None)
    exp = expect((m.topic, m.value) for m in traffic.messages)
    async with Rig("pgdown", cfg) as rig:
        broker = rig.broker()
        cluster = rig.cluster()  # the only PostgreSQL this drill ever stops
        dsn = await rig.database(cluster.server_dsn)
        tap = await rig.topics_on(broker.url)
        sup = await rig.supervisor(broker.url, dsn, LEADCYCLE_BATCH_SIZE="200")
        feed = Feed(broker.url, rig.topics, traffic.messages, rate=rate)
        producing = asyncio.create_task(feed.run())
        ok, now, _ = await wait_for(
            dsn, lambda c: c.events >= len(exp.ids) // 5, seconds=120, sup=sup
        )
        if not ok:
            result.fail(f"no progress before the outage ({now}):\n{sup.tail()}")
        pid = sup.current.pid
        say(f"postgres-outage: {now.events:,} events in; stopping PostgreSQL for {outage:.0f} s")
        await asyncio.to_thread(cluster.stop)
        await asyncio.sleep(outage)
        await asyncio.to_thread(cluster.start)
        produced = feed.produced
        say(f"postgres-outage: PostgreSQL is back; {produced:,} messages produced so far")
        backlog = [i for m in traffic.messages[:produced] if (i := event_id(m.value)) in exp.ids]
        caught = await _catch_up(dsn, backlog, seconds=180)
        if caught is None:
            result.fail(f"did not catch up with the {len(set(backlog)):,} events produced by then")
        else:
            result.recovery["catch-up after PostgreSQL returned"] = caught
        await producing
        await wait_all_in(dsn, exp, sup, result, seconds=180)
        if sup.current.pid != pid or not sup.alive():
            result.fail(f"the worker did not stay up: pid {pid} -> {sup.current.pid}")
        retries = _RETRY.findall(sup.logs())
        result.notes.append(
            f"outage {outage:.0f} s; the worker logged {len(retries)} batch retries"
            + (f" (longest wait {max(float(r) for r in retries):.1f} s)" if retries else "")
        )
        await conclude(dsn, sup, exp, result, tap)
    result.seconds = time.monotonic() - started
    return result


async def _catch_up(dsn: str, ids: list[str], *, seconds: float) -> float | None:
    """Seconds until event_log holds every id in ``ids`` (polled), or None."""
    started = time.monotonic()
    wanted = set(ids)
    while time.monotonic() - started < seconds:
        try:
            wanted -= await present_ids(dsn, list(wanted))
        except OSError:
            pass  # the server is still finishing its start-up
        if not wanted:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    return None
