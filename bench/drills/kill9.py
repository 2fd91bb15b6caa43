"""kill -9 the worker mid-stream, restart it each time, prove the redelivery was absorbed.

The stream is published at a steady pace spread over the whole drill, so every kill lands while
messages are still arriving. The worker runs with the consumer's test hook
``LEADCYCLE_DRILL_HOLD_ACK_SECONDS`` (workers/consumer.py; off by default): after each batch's
transaction has committed it logs ``drill hook: batch in PostgreSQL, offsets held`` and waits
that long before committing the batch's offsets. Every other kill is *aimed* at that window:
the drill watches the worker's log and SIGKILLs it as soon as the line appears, so the batch
is in PostgreSQL and its offsets are not - the next worker must get it again. The kills in
between fall a seeded random 0-0.1 s after an offset commit (polling, decoding, the next
transaction, publishing the outbox).

After each kill the drill reads the dead worker's log: a kill landed between the database
commit and the offset commit when the last hook line is "offsets held". At the end it counts
the valid messages delivered again (``redelivered``: duplicates in the workers' batch lines
beyond the stream's own) and requires that the kills landed in the window
at least once, that at least the valid messages of those held batches came back, and - through
the shared verification - that not one of them was counted twice.
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import time

from bench.load import make_traffic

from .harness import DrillConfig, DrillWorker, Feed, Rig, events_at_least, wait_for
from .report import DrillResult, say
from .verify import conclude, expect, wait_all_in

#: What one kill costs until the next commit (start-up plus the group rejoin), with a margin.
RESTART_SECONDS = 15.0
#: How long the hook holds each batch's offsets: ample for the drill to see the line and kill.
HOLD_ACK_SECONDS = 1.0
HELD = "drill hook: batch in PostgreSQL, offsets held"
RELEASED = "drill hook: committing offsets"
_BATCH = re.compile(r"batch: (\d+) received, (\d+) new, (\d+) duplicate")


def held_batch(worker: DrillWorker) -> int | None:
    """For a killed worker: the valid messages of the batch whose offsets it was holding when
    it died (in PostgreSQL, offsets not committed), or None if it died elsewhere."""
    text = worker.log()
    held, released = text.rfind(HELD), text.rfind(RELEASED)
    if held < 0 or released > held:
        return None
    batches = _BATCH.findall(text[:held])
    if not batches:
        return None
    _, new, duplicate = batches[-1]
    return int(new) + int(duplicate)


async def next_line(worker: DrillWorker, marker: str, *, seconds: float) -> bool:
    """Wait until ``worker`` logs a new line with ``marker`` (True), or dies / times out."""
    start = worker.log_path.stat().st_size if worker.log_path.exists() else 0
    deadline = time.monotonic() + seconds
    with worker.log_path.open("rb") as log:
        log.seek(start)
        seen = b""
        while time.monotonic() < deadline and worker.alive():
            seen = seen[-200:] + log.read()
            if marker.encode() in seen:
                return True
            await asyncio.sleep(0.02)
    return False


async def run(cfg: DrillConfig) -> DrillResult:
    result = DrillResult("kill-9")
    started = time.monotonic()
    leads, kills, batch = (150, 6, 100) if cfg.quick else (1500, 10, 400)
    traffic = make_traffic(leads=leads, seed=cfg.seed, events=None)
    exp = expect((m.topic, m.value) for m in traffic.messages)
    rng = random.Random(cfg.seed)
    # Spread the stream over all the kills, so each lands while messages still arrive.
    rate = len(traffic.messages) / (kills * RESTART_SECONDS + 5)
    async with Rig("kill9", cfg) as rig:
        broker = rig.broker()
        dsn = await rig.database(await rig.server())
        tap = await rig.topics_on(broker.url)
        # Small batches: many commit/ack boundaries for a kill to fall between.
        sup = await rig.supervisor(
            broker.url,
            dsn,
            LEADCYCLE_BATCH_SIZE=str(batch),
            LEADCYCLE_DRILL_HOLD_ACK_SECONDS=str(HOLD_ACK_SECONDS),
        )
        feed = Feed(broker.url, rig.topics, traffic.messages, rate=rate)
        producing = asyncio.create_task(feed.run())
        say(f"kill-9: {len(traffic.messages):,} messages at {rate:.0f}/s, {kills} kills planned")
        resumed: list[float] = []
        ok, _, _ = await wait_for(dsn, events_at_least(1), seconds=120, sup=sup, interval=0.05)
        points: list[str] = []
        aimed = landed = held_messages = 0
        while ok and sup.kills < kills:
            aim = sup.kills % 2 == 0  # kills 1, 3, 5...: into the commit/ack window
            # Aimed: the moment the batch is in PostgreSQL with its offsets held. Otherwise
            # just after an offset commit: polling, decoding, the next transaction, publishing.
            if not await next_line(sup.current, HELD if aim else RELEASED, seconds=60):
                result.fail(f"the worker never committed a batch:\n{sup.tail()}")
                break
            if not aim:
                await asyncio.sleep(rng.uniform(0.0, 0.1))
            _, at_kill, _ = await wait_for(dsn, lambda c: True, seconds=1)
            if feed.produced >= len(traffic.messages) and at_kill.events >= len(exp.ids):
                result.notes.append(f"stream finished before kill {sup.kills + 1}")
                break
            victim = sup.current
            sup.kill_and_restart()
            aimed += aim
            held = held_batch(victim)
            if held is not None:
                landed += 1
                held_messages += held
            where = "after commit, before ack" if held is not None else "elsewhere"
            points.append(f"{at_kill.events:,} ({'aimed, ' if aim else ''}{where})")
            say(
                f"kill-9: killed pid {victim.pid} {where} at {at_kill.events:,}/{len(exp.ids):,}"
                f" events ({feed.produced:,} produced); restarted as pid {sup.current.pid}"
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
        result.notes.append(f"{sup.kills} kill -9 mid-stream, at {'; '.join(points)} events")
        if resumed:
            result.recovery["kill->next commit p50"] = statistics.median(resumed)
            result.recovery["max"] = max(resumed)
        await conclude(dsn, sup, exp, result, tap)
        result.kills_in_ack_window = landed
        # Every delivery of a valid message is logged as new or duplicate; duplicates beyond
        # the stream's own are deliveries again. (A kill after a commit but before the batch
        # line is logged shows here too, though it cannot be told from the log which kill.)
        result.redelivered = (result.duplicates_suppressed or 0) - exp.stream_duplicates
        result.notes.append(
            f"{landed} kills ({aimed} aimed) landed between a batch's database commit and its "
            f"offset commit, holding {held_messages:,} valid messages; "
            f"{result.redelivered:,} valid messages were delivered again"
        )
        if landed == 0:
            result.fail("no kill landed between a database commit and its offset commit")
        if result.redelivered < max(held_messages, 1):
            result.fail(
                f"only {result.redelivered} messages redelivered, but the killed workers held "
                f"the offsets of {held_messages} (a redelivery was never observed)"
            )
    result.seconds = time.monotonic() - started
    return result
