"""A faust agent that does nothing: faust's own ceiling on leadcycle's topics and settings.

Run by bench/pipelines.py as ``python -m bench.faustnoop worker``. It uses the same app
settings and the same ``take_events`` batching as workers/app.py, counts what it receives, and
writes one JSON line (first batch, last batch, totals) to ``BENCH_RESULT`` when it has seen
``BENCH_EXPECTED`` records.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import faust

from workers.app import faust_options


def create_app() -> faust.App:
    env = os.environ
    app = faust.App(
        env["BENCH_APP_ID"],
        # The worker's own Kafka settings: the baseline differs from it only in doing nothing.
        **faust_options(
            env["BENCH_KAFKA_URL"],
            env["BENCH_STATE_DIR"],
            topic_allow_declare=False,
            web_enabled=False,
        ),
    )
    inputs = app.topic(*env["BENCH_TOPICS"].split(","), key_type=bytes, value_type=bytes)
    expected = int(env["BENCH_EXPECTED"])
    result = Path(env["BENCH_RESULT"])
    size, within = int(env["BENCH_BATCH_SIZE"]), float(env["BENCH_BATCH_WITHIN"])

    @app.agent(inputs, name="noop")
    async def noop(stream: Any) -> None:
        seen, written = 0, False
        first: tuple[float, int] | None = None
        async for events in stream.take_events(size, within=within):
            seen += len(events)
            if first is None:
                first = (time.monotonic(), seen)
            if seen >= expected and not written:
                doc = {"first_at": first[0], "first_rows": first[1], "total": seen}
                doc["done_at"] = time.monotonic()
                # Written once, after the clock is read: blocking for a moment costs nothing.
                result.write_text(json.dumps(doc))  # noqa: ASYNC240
                written = True

    return app


if __name__ == "__main__":
    create_app().main()
