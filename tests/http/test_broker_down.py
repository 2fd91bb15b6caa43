"""With the broker gone the collector answers 503, never 202, and /readyz says not ready."""

from __future__ import annotations

import time
import uuid

import aiohttp
import pytest

from events.topics import TopicNames
from infra.broker import start_broker, stop_broker
from infra.kafka import ensure_contract_topics
from infra.processes import free_port
from tests.conftest import RunningServices
from tests.http.conftest import wait_ready, web_env
from tests.integration.workerproc import WorkerProcess

pytestmark = pytest.mark.integration


async def test_broker_down_gives_503(
    services: RunningServices, http: aiohttp.ClientSession
) -> None:
    run = uuid.uuid4().hex[:8]
    broker = start_broker(services.state_dir / f"broker-{run}", free_port())
    topics = TopicNames(f"down-{run}.")
    await ensure_contract_topics(broker.url, topics, 1)
    port = free_port()
    worker = WorkerProcess(
        services,
        app_id=f"down-{run}",
        prefix=topics.prefix,
        LEADCYCLE_KAFKA_URL=broker.url,
        LEADCYCLE_PARTITIONS="1",
        **web_env(port, LEADCYCLE_HTTP_WRITE_KEYS="s=k", LEADCYCLE_HTTP_PUBLISH_TIMEOUT="2"),
    ).start()
    base = f"http://127.0.0.1:{port}"
    event = {"type": "page_view", "anonymous_id": "v-1"}
    try:
        await wait_ready(base, worker)
        async with http.post(f"{base}/v1/track?key=k", json=event) as r:
            assert r.status == 202
        stop_broker(broker.pid)
        started = time.monotonic()
        async with http.post(f"{base}/v1/track?key=k", json={"batch": [event, event]}) as r:
            assert r.status == 503
            assert r.headers["Retry-After"]
            assert "retry" in (await r.json())["error"]
        assert time.monotonic() - started < 10
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 503
            assert (await r.json())["broker"] is False
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200  # up, just not ready
    finally:
        worker.kill()  # a worker without its broker has nothing to shut down cleanly
        stop_broker(broker.pid)
