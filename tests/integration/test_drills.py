"""The fault drills' short form (``./run drills --quick``), verdicts asserted.

Each drill starts its own broker (and the PostgreSQL-outage drill its own private cluster) and
creates its scratch database on the test session's server. The kill -9 drill spends most of
its time waiting for consumer-group rejoins, so it runs in the background while the others
run one after another; its verdict is asserted last.

Besides each verdict (which includes the output topics and the stages and open follow-ups
against the pure core), the tests assert that the checks really ran: output messages were
read, the kill -9 drill's kills landed between a database commit and its offset commit and
the redelivery was observed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bench.drills import broker_restart, flood, fuzz, kill9, postgres_outage
from bench.drills.harness import DrillConfig
from bench.drills.report import DrillResult

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kill9_drill")]


@pytest.fixture(scope="module")
def config(server_dsn: str) -> DrillConfig:
    return DrillConfig(quick=True, seed=11, server_dsn=server_dsn)


@pytest.fixture(scope="module")
async def kill9_drill(config: DrillConfig) -> AsyncIterator[asyncio.Task[DrillResult]]:
    task = asyncio.create_task(kill9.run(config))
    yield task
    task.cancel()  # no-op when it finished; stops (and cleans up) a drill nobody awaited
    await asyncio.gather(task, return_exceptions=True)


def assert_passed(result: DrillResult) -> None:
    assert result.passed, "\n" + result.render()
    # The outputs were read and compared, not skipped.
    assert result.outputs.get("score-changes", 0) > 0, result.render()


async def test_broker_restart_with_the_worker_running(config: DrillConfig) -> None:
    assert_passed(await broker_restart.run(config))


async def test_postgres_outage(config: DrillConfig) -> None:
    result = await postgres_outage.run(config)
    assert_passed(result)
    assert result.restarts == 0


async def test_fuzzed_inputs(config: DrillConfig) -> None:
    assert_passed(await fuzz.run(config))


async def test_collector_flood(config: DrillConfig) -> None:
    assert_passed(await flood.run(config))


async def test_kill_9(kill9_drill: asyncio.Task[DrillResult]) -> None:
    result = await kill9_drill
    assert_passed(result)
    assert result.restarts >= 5
    # Aimed kills landed after a batch's commit and before its offsets were: redelivered.
    assert result.kills_in_ack_window is not None
    assert result.kills_in_ack_window >= 3
    assert result.redelivered is not None
    assert result.redelivered > 0
