"""``./run bench``: every speed claim of leadcycle as a number, from one command.

One run starts its own broker and scratch database, generates seeded traffic
(workers/traffic.py), publishes it once, then measures on those same topics, each pipeline
with a fresh consumer group: bare aiokafka, a do-nothing faust agent, leadcycle end to end
(1 then 2 worker processes), a replay of the event log, latency at half the sustained rate,
the per-batch cost of one lead with a long history (bench/heavy.py), a naive per-event
worker and call-list queries. It prints a table, writes JSON to
bench/results/ and (full runs) the table into docs/benchmarks.md. It never fails on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from events.topics import TopicNames
from scoring.rules import load_rules

from . import report
from .calllist import run_calllists
from .endtoend import run_leadcycle
from .fetchwait import run_fetch_probe
from .heavy import HEAVY, QUICK_HEAVY, REPEAT, run_heavy
from .latency import run_latency
from .load import EVENTS_PER_LEAD, PARTITIONS, make_traffic, preload
from .pipelines import FaustSettings, bare_consume, faust_noop, naive_worker
from .replay import run_replay
from .services import ROOT, Services, running_services, say

PREFIX = "bench."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="./run bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000, help="messages to publish")
    ap.add_argument("--leads", type=int, default=None, help="leads (default: events / 12)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="20k events, small samples, no doc")
    ap.add_argument("--naive-events", type=int, default=8_000, help="sample for the naive worker")
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--followups", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=2000, help="LEADCYCLE_BATCH_SIZE")
    ap.add_argument("--batch-within", type=float, default=0.25, help="LEADCYCLE_BATCH_WITHIN")
    ap.add_argument(
        "--heavy-past", type=int, default=None, help=f"past events of the heavy lead ({HEAVY:,})"
    )
    ap.add_argument("--heavy-repeat", type=int, default=REPEAT, help="timed batches per lead")
    ap.add_argument("--no-profile", action="store_true", help="do not attach py-spy")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.naive_events = 20_000, 2_000
        args.latency_seconds, args.followups, args.no_doc = 10.0, 20_000, True
    args.leads = args.leads or max(args.events // EVENTS_PER_LEAD, 10)
    args.heavy_past = args.heavy_past or (QUICK_HEAVY if args.quick else HEAVY)
    return args


async def _postgres_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()


def measure(args: argparse.Namespace, services: Services, stamp: str) -> dict[str, Any]:
    topics = TopicNames(PREFIX)
    worker_env = {
        "LEADCYCLE_BATCH_SIZE": str(args.batch_size),
        "LEADCYCLE_BATCH_WITHIN": str(args.batch_within),
        "LEADCYCLE_PARTITIONS": str(PARTITIONS),
    }
    say(f"generating {args.events:,} messages for {args.leads:,} leads (seed {args.seed})")
    traffic = make_traffic(leads=args.leads, seed=args.seed, events=args.events)
    seconds = asyncio.run(preload(services.kafka_url, topics, traffic))
    say(f"published {traffic.total:,} messages in {seconds:.1f} s")

    t: dict[str, float | None] = {}
    run = f"{stamp.replace(':', '')}"
    t["aiokafka_json"] = asyncio.run(
        bare_consume(
            services.kafka_url, topics, group=f"bare-{run}", total=traffic.total, validate=False
        )
    ).rate
    t["aiokafka_pydantic"] = asyncio.run(
        bare_consume(
            services.kafka_url, topics, group=f"barev-{run}", total=traffic.total, validate=True
        )
    ).rate
    say(f"aiokafka: {t['aiokafka_json']:,.0f}/s json, {t['aiokafka_pydantic']:,.0f}/s pydantic")
    t["faust_noop"] = faust_noop(
        services.kafka_url,
        topics,
        group=f"noop-{run}",
        total=traffic.total,
        state_dir=services.state_dir,
        settings=FaustSettings(args.batch_size, args.batch_within),
        timeout=600,
    ).rate
    say(f"faust no-op agent: {t['faust_noop']:,.0f}/s")

    profile_path = None if args.no_profile else services.state_dir / "worker.pyspy.txt"
    one = run_leadcycle(
        services,
        traffic,
        prefix=PREFIX,
        group=f"lc1-{run}",
        processes=1,
        worker_env=worker_env,
        profile_to=profile_path,
    )
    t["leadcycle"] = one.progress.rate
    rules = load_rules(ROOT / "rules" / "default.toml")
    replay = run_replay(services.dsn, rules)
    say(f"replay: {replay.rate:,.0f} events/s")
    heavy = run_heavy(services.fresh_database(), past=args.heavy_past, repeat=args.heavy_repeat)
    say(
        f"one lead with {args.heavy_past:,} past events: {heavy.heavy.median_ms:,.1f} ms a batch,"
        f" {heavy.ratio:.2f}x one with {heavy.light.past}"
    )
    two = run_leadcycle(
        services, traffic, prefix=PREFIX, group=f"lc2-{run}", processes=2, worker_env=worker_env
    )

    half = one.progress.rate / 2
    lat_traffic = make_traffic(
        leads=max(int(half * args.latency_seconds) // EVENTS_PER_LEAD, 10),
        seed=args.seed + 1000,
        events=int(half * args.latency_seconds),
    )
    latency = run_latency(
        services,
        lat_traffic,
        rate=half,
        prefix="benchlat.",
        group=f"lat-{run}",
        worker_env=worker_env,
    )

    fetch = run_fetch_probe(services.kafka_url)
    say(f"lone-message delivery by fetch_max_wait_ms: {fetch}")

    dsn = services.fresh_database()
    t["naive"] = asyncio.run(
        naive_worker(
            services.kafka_url,
            topics,
            dsn,
            rules,
            group=f"naive-{run}",
            limit=min(args.naive_events, traffic.total),
        )
    ).rate
    say(f"naive worker: {t['naive']:,.0f}/s")
    calllist = run_calllists(services.fresh_database(), args.followups)
    say(f"call list over {args.followups:,}: {calllist.all_ms:,.0f} ms all")
    # Profiled apart, last: py-spy's own sampling would take CPU from the measured run.
    profiled = None
    if not args.no_profile:
        profiled = run_leadcycle(
            services,
            traffic,
            prefix=PREFIX,
            group=f"lcp-{run}",
            processes=1,
            worker_env=worker_env,
            profile_to=services.state_dir / "worker.pyspy.txt",
        )

    return {
        "when": stamp,
        "command": " ".join(["./run bench", *sys.argv[1:]]),
        "params": {
            "messages": traffic.total,
            "distinct_valid": traffic.distinct_valid,
            "invalid": traffic.invalid,
            "mean_bytes": traffic.mean_bytes,
            "leads": args.leads,
            "seed": args.seed,
            "partitions": PARTITIONS,
            "batch_size": args.batch_size,
            "batch_within": args.batch_within,
            "naive_events": min(args.naive_events, traffic.total),
            "preload_seconds": seconds,
        },
        "throughput": t,
        "scaling": {"one": one.progress.rate, "two": two.progress.rate},
        "cpu": {
            "one_worker_cores": one.worker_cores,
            "one_machine_cores": one.machine_cores,
            "two_worker_cores": two.worker_cores,
            "two_machine_cores": two.machine_cores,
        },
        "db_sessions": {"one": one.db_sessions, "two": two.db_sessions},
        "owners": {"forwarded": two.forwarded, "redone": two.redone + one.redone},
        "rss_mb": max(one.peak_rss_mb, default=None),
        "rss_mb_two_workers": two.peak_rss_mb,
        "latency": asdict(latency),
        "fetch_probe_ms": fetch,
        "replay": {**asdict(replay), "rate": replay.rate},
        "heavy": heavy.as_json(),
        "calllist": asdict(calllist),
        "profile": asdict(profiled.profile) if profiled and profiled.profile else None,
        "profiled_rate": profiled.progress.rate if profiled else None,
    }


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """Issue 11's targets (ratios within this run; absolute figures vary ~1.6x by machine)."""
    t, s, lat, h, c = r["throughput"], r["scaling"], r["latency"], r["heavy"], r["cpu"]
    vs_bare = t["leadcycle"] / t["aiokafka_json"]
    one_us = c["one_worker_cores"][0] / s["one"] * 1e6 if c["one_worker_cores"] else 0.0
    two_us = sum(c["two_worker_cores"]) / s["two"] * 1e6 if c["two_worker_cores"] else 0.0
    states = r.get("db_sessions", {}).get("two", {})
    waits = sum(v for k, v in states.items() if k.startswith("Lock:"))
    redone = r.get("owners", {}).get("redone", 0)
    replay = r["replay"]["rate"]
    return [
        ("leadcycle vs bare aiokafka + json.loads", ">= 0.2x", f"{vs_bare:.3f}x", vs_bare >= 0.2),
        ("worker CPU per event, 1 worker", "<= 60 µs", f"{one_us:.0f} µs", one_us <= 60),
        (
            "2 workers: CPU per event vs 1 worker",
            "<= 1.1x",
            f"{two_us / one_us:.2f}x" if one_us else "-",
            bool(one_us) and two_us / one_us <= 1.1,
        ),
        (
            "2 workers: lock waits (sessions) / batches done again",
            "0 / 0",
            f"{waits:.2f} / {redone}",
            waits == 0 and redone == 0,
        ),
        ("p99 latency at half load", "<= 250 ms", f"{lat['p99_ms']:.0f} ms", lat["p99_ms"] <= 250),
        ("replay vs worker end to end", ">= 1x", f"{replay / s['one']:.1f}x", replay >= s["one"]),
        (
            f"batch on a lead with {h['heavy']['past']:,} past events vs {h['light']['past']}",
            "<= 1.2x",
            f"{h['ratio']:.2f}x",
            h["ratio"] <= 1.2,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    started, load_before = time.monotonic(), list(os.getloadavg())
    with running_services() as services:
        results = measure(args, services, stamp)
        results["machine"] = report.machine(asyncio.run(_postgres_version(services.server_dsn)))
    results["machine"]["load_average_before"] = load_before
    results["machine"]["load_average_after"] = list(os.getloadavg())
    results["targets"] = targets(results)
    results["wall_seconds"] = time.monotonic() - started
    name = f"{'quick' if args.quick else 'bench'}-{stamp.replace(':', '')}"
    path = report.write_json(results, name=name)
    block = report.render(results)
    print(block)
    if not args.no_doc:
        report.write_doc(block)
        say(f"updated {report.DOC.relative_to(ROOT)}")
    say(f"results in {Path(path).relative_to(ROOT)}; whole run {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
