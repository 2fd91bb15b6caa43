"""The bench's pure helpers (percentiles, rates, profile sums). No timing is asserted here."""

from __future__ import annotations

import math

from bench.latency import percentile
from bench.profile import summarise
from bench.services import Progress


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert math.isnan(percentile([], 50))


def test_rate_leaves_the_first_batch_out() -> None:
    # 1,000 rows were in at t=10 (start-up included); the other 9,000 took 3 s.
    assert Progress(first_at=10.0, first_rows=1000, done_at=13.0, total=10_000).rate == 3000


def test_profile_sums_self_and_inclusive_time() -> None:
    lines = [
        "run (workers/cli.py:10);handle (workers/ingest.py:5);loads (json/__init__.py:3) 3",
        "run (workers/cli.py:10);handle (workers/ingest.py:6) 1",
        "garbage",
    ]
    profile = summarise(lines)
    assert profile.samples == 4
    assert profile.self_top[0].frame == "loads (json/__init__.py)"
    assert profile.self_top[0].share == 0.75
    inclusive = {c.frame: c.share for c in profile.inclusive_top}
    assert inclusive == {"run (workers/cli.py)": 1.0, "handle (workers/ingest.py)": 1.0}
