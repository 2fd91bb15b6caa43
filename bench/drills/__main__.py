"""``./run drills [--quick] [--only NAME] [--seed S] [--repeat N] [--json PATH]``.

Runs the fault drills one after another, each on services of its own, prints each drill's
report and a summary table, and exits 1 when any drill found something lost, double-counted
or crashed (2 when a drill could not run at all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from . import broker_restart, flood, fuzz, kill9, postgres_outage
from .harness import DrillConfig
from .report import DrillResult, say, table

DRILLS: dict[str, Callable[[DrillConfig], Coroutine[Any, Any, DrillResult]]] = {
    "kill-9": kill9.run,
    "broker-restart": broker_restart.run,
    "postgres-outage": postgres_outage.run,
    "fuzz": fuzz.run,
    "flood": flood.run,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="./run drills", description=__doc__.split("\n\n")[1])
    ap.add_argument("--quick", action="store_true", help="the short form (the test suite's)")
    ap.add_argument(
        "--only", action="append", choices=sorted(DRILLS), help="run only this drill (repeatable)"
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=1, help="run each selected drill N times")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    return ap.parse_args(argv)


async def _interruptible(drill: Coroutine[Any, Any, DrillResult]) -> DrillResult:
    """Run ``drill``; SIGINT or SIGTERM cancels it, so its rig stops everything it started
    (workers, broker, private PostgreSQL) and drops its scratch database before we exit.
    Installed here, not left to asyncio.run: a background job may have SIGINT ignored."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await drill
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: list[DrillResult] = []
    broken = False
    for name in args.only or list(DRILLS):
        for i in range(args.repeat):
            cfg = DrillConfig(quick=args.quick, seed=args.seed + i)
            say(f"--- {name} (seed {cfg.seed}{', quick' if args.quick else ''})")
            started = time.monotonic()
            try:
                result = asyncio.run(_interruptible(DRILLS[name](cfg)))
            except (KeyboardInterrupt, asyncio.CancelledError):
                say("interrupted; everything the drill started was stopped")
                return 130
            except Exception:
                traceback.print_exc()
                result = DrillResult(name, seconds=time.monotonic() - started)
                result.fail("the drill itself failed to run (traceback above)")
                broken = True
            results.append(result)
            print(result.render(), flush=True)
    print("\n" + table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    failed = [r.name for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    if broken:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
