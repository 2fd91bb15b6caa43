"""kill -9 the worker at seeded random points of a stream, restart it each time, then verify.

The stream is published at a steady pace spread over the whole drill, so every kill lands while
messages are still arriving. Each round waits until the current worker has committed a batch,
then a seeded random 0-2 s more (so kills land anywhere in a batch: decoding, mid-transaction,
between the commit and the offset commit, while publishing the outbox), then SIGKILLs the
process - no shutdown hook, no offset commit - and starts a new one in the same consumer group
at once.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time

from bench.load import make_traffic

from .harness import DrillConfig, Feed, Rig, events_at_least, wait_for
from .report import DrillResult, say
from .verify import conclude, expect, wait_all_in

#: What one kill costs until the next commit (start-up plus the group rejoin), with a margin.
RESTART_SECONDS = 15.0


async def run(cfg: DrillConfig) -> DrillResult:
    result = DrillResult("kill-9")
    started = time.monotonic()
    leads, kills = (150, 5) if cfg.quick else (1500, 8)
    traffic = make_traffic(leads=leads, seed=cfg.seed, events=None)
    exp = expect((m.topic, m.value) for m in traffic.messages)
    rng = random.Random(cfg.seed)
    # Spread the stream over all the kills, so each lands while messages still arrive.
    rate = len(traffic.messages) / (kills * RESTART_SECONDS + 5)
    async with Rig("kill9", cfg) as rig:
        broker = rig.broker()
        dsn = await rig.database(await rig.server())
        await rig.topics_on(broker.url)
        # Small batches: many commit/ack boundaries for a kill to fall between.
        sup = await rig.supervisor(broker.url, dsn, LEADCYCLE_BATCH_SIZE="100")
        feed = Feed(broker.url, rig.topics, traffic.messages, rate=rate)
        producing = asyncio.create_task(feed.run())
        say(f"kill-9: {len(traffic.messages):,} messages at {rate:.0f}/s, {kills} kills planned")
        resumed: list[float] = []
        ok, _, _ = await wait_for(dsn, events_at_least(1), seconds=120, sup=sup, interval=0.05)
        points: list[str] = []
        while ok and sup.kills < kills:
            await asyncio.sleep(rng.uniform(0.0, 2.0))
            _, at_kill, _ = await wait_for(dsn, lambda c: True, seconds=1)
            if feed.produced >= len(traffic.messages) and at_kill.events >= len(exp.ids):
                result.notes.append(f"stream finished before kill {sup.kills + 1}")
                break
            old = sup.current.pid
            sup.kill_and_restart()
            points.append(f"{at_kill.events:,}")
            say(
                f"kill-9: killed pid {old} at {at_kill.events:,}/{len(exp.ids):,} events "
                f"({feed.produced:,} produced); restarted as pid {sup.current.pid}"
            )
            ok, _, waited = await wait_for(
                dsn, events_at_least(at_kill.events + 1), seconds=120, sup=sup, interval=0.05
            )
            if ok:
                resumed.append(waited)
            else:
                result.fail(f"no commit within 120 s of restart {sup.kills}:\n{sup.tail()}")
        await producing
        await wait_all_in(dsn, exp, sup, result, seconds=180)
        if sup.kills < 5:
            result.fail(f"only {sup.kills} kills landed mid-stream; the drill wants at least 5")
        result.notes.append(f"{sup.kills} kill -9 mid-stream, at {', '.join(points)} events")
        if resumed:
            result.recovery["kill->next commit p50"] = statistics.median(resumed)
            result.recovery["max"] = max(resumed)
        await conclude(dsn, sup, exp, result)
    result.seconds = time.monotonic() - started
    return result
