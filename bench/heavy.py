"""What one batch costs for a lead with a long history: N = 100,000 past events against N = 10.

``python -m bench.heavy [--past N] [--repeat K] [--quick]``: in a scratch database (marked
``leadcycle:bench``, dropped at the end; ``./run bench`` passes its own) one heavy lead gets a
history of N behaviour events (``--past``; 10,000 with ``--quick``) and each light lead one of
10, spread over the past 120 days: page views of plain, pricing, case-study and careers pages,
email clicks, downloads, now and then a webinar, a form or a demo request, so caps and decay
both work. Histories go through the worker's own write path (``Ingestor`` + ``LeadProcessor``
under ``rules/default.toml``, batches of 2,000, outputs discarded, no broker): that is the
setup, not timed. Then, after two untimed warm-up rounds, K rounds each time one batch on the
heavy lead and one on a light lead, in alternating order: 20 new events for the lead plus 2
for each of 4 other leads, one transaction, as a worker's batch. Every round takes a light
lead of its own, so each light batch meets exactly 10 past events (the heavy lead's 20 more a
round are lost in its N). It prints the median and p90 wall time of a batch, the median CPU
time this process spent on it (``time.process_time``: decode, scoring, serialisation;
PostgreSQL's own work is not in it), heavy ÷ light, and the stage changes the timed batches
made (none is wanted: a transition adds follow-up work that is not the history's cost). It
never fails on speed; it does stop if a batch was not applied whole.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.latency import percentile
from bench.retention import Discard
from bench.services import MARKER, ROOT, _server_dsn, bench_database_name, say
from events.topics import TopicNames
from events.tracking import BehaviourTracked, Properties
from infra import db
from infra.postgres import drop_database
from infra.settings import Settings
from scoring.rules import load_rules
from workers.bots import DEFAULT_BOT_PATTERN, BotFilter
from workers.ingest import Incoming, Ingestor
from workers.leads import Assignment, LeadProcessor

#: Past events of the light lead, and of the heavy one (full run, --quick).
LIGHT, HEAVY, QUICK_HEAVY = 10, 100_000, 10_000
REPEAT, WARMUP = 30, 2
#: New events for the measured lead in one timed batch, and the other leads sharing it.
BATCH_EVENTS, BYSTANDERS, BYSTANDER_EVENTS = 20, 4, 2
#: Events per transaction while a history is built (the worker's default batch size).
SETUP_BATCH = 2000
HISTORY_DAYS = 120
SITE = "https://www.leadcycle.example"

#: (weight, type, path or content id): most of a long history is browsing.
MIX: tuple[tuple[float, str, str], ...] = (
    (40, "page_view", "/"),
    (12, "page_view", "/product/scoring"),
    (8, "page_view", "/blog/recycling-leads"),
    (10, "page_view", "/pricing"),
    (8, "page_view", "/customers/acme-logistics/"),
    (1, "page_view", "/careers"),
    (8, "email_click", "/webinars/2026-spring"),
    (5, "content_download", "wp-state-of-b2b"),
    (3, "content_download", "wp-buyers-guide"),
    (1, "webinar_attended", "web-2026-spring"),
    (1, "form_submit", "contact-sales"),
    (0.2, "demo_request", "/demo"),
)


def behaviour(lead_id: str, event_id: str, kind: str, what: str, at: datetime) -> BehaviourTracked:
    """One tracker event of ``kind`` for ``lead_id``; ``what`` is a path or a content/form id."""
    if kind == "content_download":
        props = Properties(content_id=what, url=f"{SITE}/resources/{what}")
    elif kind == "form_submit":
        props = Properties(form_id=what, url=f"{SITE}/contact")
    elif kind == "webinar_attended":
        props = Properties(content_id=what)
    else:
        props = Properties(url=f"{SITE}{what}", title=what.strip("/") or "home")
    return BehaviourTracked(
        event_id=event_id, type=kind, occurred_at=at, lead_id=lead_id, properties=props
    )


def history(
    lead_id: str, n: int, *, end: datetime, days: int = HISTORY_DAYS, seed: int = 11
) -> list[BehaviourTracked]:
    """``n`` behaviour events for ``lead_id``, in time order, spread over the ``days`` before
    ``end`` (all strictly before it), drawn from :data:`MIX`."""
    rng = random.Random(f"{seed}:{lead_id}")
    weights = [w for w, _, _ in MIX]
    span = days * 86_400
    offsets = sorted((rng.uniform(1, span) for _ in range(n)), reverse=True)
    events = []
    for i, (off, (_, kind, what)) in enumerate(
        zip(offsets, rng.choices(MIX, weights=weights, k=n), strict=True)
    ):
        at = (end - timedelta(seconds=off)).replace(microsecond=0)
        events.append(behaviour(lead_id, f"{lead_id}-p{i}", kind, what, at))
    return events


def batch(lead_id: str, round_no: int, *, now: datetime) -> list[BehaviourTracked]:
    """One timed batch: :data:`BATCH_EVENTS` new events for ``lead_id`` and
    :data:`BYSTANDER_EVENTS` for each of :data:`BYSTANDERS` other leads, all just before
    ``now``."""
    rng = random.Random(f"batch:{lead_id}:{round_no}")
    weights = [w for w, _, _ in MIX]
    out = []
    for j, (_, kind, what) in enumerate(rng.choices(MIX, weights=weights, k=BATCH_EVENTS)):
        at = now - timedelta(seconds=BATCH_EVENTS - j)
        out.append(behaviour(lead_id, f"{lead_id}-r{round_no}-{j}", kind, what, at))
    for b in range(BYSTANDERS):
        other = f"other-{b}"
        for j in range(BYSTANDER_EVENTS):
            at = now - timedelta(seconds=BYSTANDER_EVENTS - j)
            out.append(behaviour(other, f"{other}-{lead_id}-r{round_no}-{j}", "page_view", "/", at))
    return out


def messages(events: Sequence[BehaviourTracked], start: int) -> list[Incoming]:
    """The events as a worker reads them off the input topic (JSON, keyed by lead)."""
    return [
        Incoming(
            "events",
            0,
            start + i,
            e.lead_id.encode() if e.lead_id else None,
            e.model_dump_json(exclude_none=True).encode(),
        )
        for i, e in enumerate(events)
    ]


@dataclass(frozen=True)
class LeadCost:
    """Figures of the heavy lead, or of the light leads together."""

    past: int
    setup_seconds: float
    #: Bytes of the stored state (``leads.state`` as text) after the timed batches.
    state_bytes: int
    #: Stages after the timed batches, and stage changes the timed batches made.
    stages: str
    transitions: int
    median_ms: float
    p90_ms: float
    cpu_us: float


@dataclass(frozen=True)
class Heavy:
    light: LeadCost
    heavy: LeadCost
    batch_events: int
    bystander_events: int
    repeat: int

    @property
    def ratio(self) -> float:
        return self.heavy.median_ms / max(self.light.median_ms, 1e-9)

    @property
    def cpu_ratio(self) -> float:
        return self.heavy.cpu_us / max(self.light.cpu_us, 1e-9)

    def as_json(self) -> dict[str, Any]:
        """The figures as bench/results/ keeps them (bench/report.py reads these keys)."""
        return {**asdict(self), "ratio": self.ratio, "cpu_ratio": self.cpu_ratio}

    def lines(self) -> list[str]:
        per = f"{self.batch_events} events for the lead + {self.bystander_events} for 4 others"
        out = [f"per-batch cost ({per}; {self.repeat} timed batches each; one transaction each):"]
        for c in (self.light, self.heavy):
            out.append(
                f"  {c.past:>7,} past events: median {c.median_ms:7.1f} ms, p90 {c.p90_ms:7.1f} ms,"
                f" CPU {c.cpu_us:9,.0f} us/batch; state {c.state_bytes:,} B;"
                f" stage {c.stages}, {c.transitions} changes while timed;"
                f" history built in {c.setup_seconds:.1f} s"
            )
        out.append(f"  heavy / light: {self.ratio:.2f}x wall, {self.cpu_ratio:.2f}x CPU")
        return out


class _Bench:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        processor = LeadProcessor(
            load_rules(ROOT / "rules" / "default.toml"),
            TopicNames("bench."),
            Assignment(("rep-1", "rep-2"), 25),
        )
        self.ingestor = Ingestor(
            pool,
            TopicNames("bench."),
            Discard(),
            max_message_bytes=Settings().max_message_bytes,
            bots=BotFilter(DEFAULT_BOT_PATTERN),
            apply=processor.apply_events,
        )
        self.offset = 0

    async def apply(self, events: Sequence[BehaviourTracked]) -> tuple[float, float]:
        """One batch through the worker's path; (wall seconds, CPU seconds of this process).
        The outputs are cleared after the clock stops (a worker does that behind the next
        batch)."""
        batch = messages(events, self.offset)
        self.offset += len(batch)
        cpu, wall = time.process_time(), time.perf_counter()
        report = await self.ingestor.handle(batch)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        await self.ingestor.drain()
        if report.new_events != len(batch) or report.dead_letters or report.rejected:
            raise RuntimeError(f"a batch of {len(batch)} was not applied whole: {report}")
        return wall, cpu

    async def build(self, lead_id: str, past: int, now: datetime) -> None:
        events = history(lead_id, past, end=now - timedelta(minutes=10))
        for i in range(0, len(events), SETUP_BATCH):
            await self.apply(events[i : i + SETUP_BATCH])

    async def stored(self, lead_ids: list[str], since: datetime) -> tuple[int, str, int]:
        """Median state bytes, the stages, and stage changes recorded since ``since``."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT octet_length(state::text) AS bytes, stage FROM leads"
                " WHERE lead_id = ANY($1::text[])",
                lead_ids,
            )
            moved = await conn.fetchval(
                "SELECT count(*) FROM stage_transitions"
                " WHERE lead_id = ANY($1::text[]) AND recorded_at >= $2",
                lead_ids,
                since,
            )
        assert len(rows) == len(lead_ids), lead_ids
        stages = ", ".join(sorted({str(r["stage"]) for r in rows}))
        return int(statistics.median(int(r["bytes"]) for r in rows)), stages, int(moved)


def _cost(
    past: int, setup: float, stored: tuple[int, str, int], timed: list[tuple[float, float]]
) -> LeadCost:
    walls = [w * 1000 for w, _ in timed]
    return LeadCost(
        past=past,
        setup_seconds=setup,
        state_bytes=stored[0],
        stages=stored[1],
        transitions=stored[2],
        median_ms=statistics.median(walls),
        p90_ms=percentile(walls, 90),
        cpu_us=statistics.median(c * 1e6 for _, c in timed),
    )


async def measure(dsn: str, *, past: int, repeat: int) -> Heavy:
    """Build the histories in ``dsn`` (a migrated, empty database), then time ``repeat``
    batches on the heavy lead and as many on light leads (one each), interleaved so drift
    (autovacuum, other load on the machine) hits both."""
    pool = await db.create_pool(dsn, size=2)
    try:
        bench = _Bench(pool)
        now = datetime.now(UTC)
        heavy = f"heavy-{past}"
        lights = [f"light-{LIGHT}-{r}" for r in range(WARMUP + repeat)]
        say(f"heavy lead: building one lead with {past:,} past events")
        started = time.perf_counter()
        await bench.build(heavy, past, now)
        heavy_setup = time.perf_counter() - started
        say(f"heavy lead: built in {heavy_setup:.1f} s; {len(lights)} leads with {LIGHT} next")
        started = time.perf_counter()
        for lead_id in lights:
            await bench.build(lead_id, LIGHT, now)
        light_setup = (time.perf_counter() - started) / len(lights)
        async with pool.acquire() as conn:
            await conn.execute("VACUUM ANALYZE")
        timed: dict[str, list[tuple[float, float]]] = {"light": [], "heavy": []}
        since = datetime.now(UTC)
        for r, light in enumerate(lights):
            if r == WARMUP:
                since = datetime.now(UTC)
            pair = [("light", light), ("heavy", heavy)]
            for kind, lead_id in pair if r % 2 == 0 else reversed(pair):
                took = await bench.apply(batch(lead_id, r, now=datetime.now(UTC)))
                if r >= WARMUP:
                    timed[kind].append(took)
        return Heavy(
            light=_cost(
                LIGHT, light_setup, await bench.stored(lights[WARMUP:], since), timed["light"]
            ),
            heavy=_cost(past, heavy_setup, await bench.stored([heavy], since), timed["heavy"]),
            batch_events=BATCH_EVENTS,
            bystander_events=BYSTANDERS * BYSTANDER_EVENTS,
            repeat=repeat,
        )
    finally:
        await pool.close()


def run_heavy(dsn: str, *, past: int, repeat: int = REPEAT) -> Heavy:
    """:func:`measure` in a fresh event loop (the bench runs each step in its own)."""
    return asyncio.run(measure(dsn, past=past, repeat=repeat))


async def _standalone(past: int, repeat: int) -> Heavy:
    server = _server_dsn()
    name = f"{bench_database_name(Settings().database_name)}_heavy"
    dsn = await db.migrated_database(server, name, marker=MARKER, fresh=True)
    try:
        return await measure(dsn, past=past, repeat=repeat)
    finally:
        await drop_database(server, name, marker=MARKER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--past", type=int, default=None, help=f"heavy lead's events ({HEAVY:,})")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="timed batches per lead")
    parser.add_argument("--quick", action="store_true", help=f"--past {QUICK_HEAVY:,}")
    args = parser.parse_args(argv)
    past = args.past or (QUICK_HEAVY if args.quick else HEAVY)
    if past <= LIGHT or args.repeat < 1:
        parser.error(f"--past must be above {LIGHT} and --repeat at least 1")
    print("\n".join(asyncio.run(_standalone(past, args.repeat)).lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
