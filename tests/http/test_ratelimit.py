"""The collector's rate limit against a real worker: per site and client IP, 429 + Retry-After.

A worker of its own (the shared one runs with the limit off) at 5 requests/s, burst 5. Each
test is another client: its own source address on the loopback network (Linux routes all of
127/8 to lo), which is exactly how the collector tells clients apart (the TCP peer).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from events.topics import TopicNames
from infra import db
from infra.kafka import ensure_contract_topics
from infra.processes import free_port
from tests.conftest import RunningServices
from tests.http.conftest import wait_ready, web_env
from tests.integration.workerproc import WorkerProcess, eventually

pytestmark = pytest.mark.integration

RATE, BURST = 5, 5
MAX_BODY = 20_000


@dataclass(frozen=True)
class Limited:
    services: RunningServices
    worker: WorkerProcess
    base: str
    keys: dict[str, str]  # site -> write key
    run: str


def loopback_aliases_work() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
async def limited(services: RunningServices) -> AsyncIterator[Limited]:
    if not loopback_aliases_work():
        pytest.fail("needs 127.0.0.2 etc. on the loopback interface (Linux)")
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(f"rl-{run}.")
    await ensure_contract_topics(services.kafka_url, topics, 1)
    port = free_port()
    keys = {"site-a": f"ka-{run}", "site-b": f"kb-{run}"}
    worker = WorkerProcess(
        services,
        app_id=f"rl-{run}",
        prefix=topics.prefix,
        **web_env(
            port,
            LEADCYCLE_PARTITIONS="1",
            LEADCYCLE_SWEEP_INTERVAL="3600",
            LEADCYCLE_HTTP_WRITE_KEYS=",".join(f"{s}={k}" for s, k in keys.items()),
            LEADCYCLE_HTTP_CORS_ORIGINS="https://site-a.example",
            LEADCYCLE_HTTP_MAX_BODY_BYTES=str(MAX_BODY),
            LEADCYCLE_HTTP_RATE_LIMIT=str(RATE),
            LEADCYCLE_HTTP_RATE_BURST=str(BURST),
        ),
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base, worker)
        yield Limited(services, worker, base, keys, run)
    finally:
        worker.stop()


@dataclass
class Answers:
    accepted: list[str]  # event ids answered 202
    refused: list[str]  # event ids answered 429
    retry_after: list[str]
    errors: list[str]
    other: list[int | str]
    seconds: float  # first request sent to last answer, as the client saw it


class Client:
    """One client of the collector: a write key and a source address."""

    def __init__(self, limited: Limited, site: str, ip: str) -> None:
        self.limited = limited
        self.key = limited.keys[site]
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))

    async def post(self, body: bytes, **headers: str) -> tuple[int | str, dict[str, str], Any]:
        url = f"{self.limited.base}/v1/track"
        try:
            async with self.http.post(
                url, data=body, headers={"X-Leadcycle-Key": self.key, **headers}
            ) as r:
                return r.status, dict(r.headers), await r.json()
        except aiohttp.ClientError:
            return "closed", {}, None  # after an early 413 the server closes the connection

    async def events(self, n: int) -> Answers:
        """``n`` one-event requests at once."""
        ids = [f"rl-{uuid.uuid4().hex}" for _ in range(n)]
        started = time.monotonic()
        answers = await asyncio.gather(*(self.post(self.body(i)) for i in ids))
        seconds = time.monotonic() - started
        out = Answers([], [], [], [], [], seconds)
        for event_id, (status, headers, doc) in zip(ids, answers, strict=True):
            if status == 202:
                out.accepted.append(event_id)
            elif status == 429:
                out.refused.append(event_id)
                out.retry_after.append(headers.get("Retry-After", ""))
                out.errors.append(doc["error"])
            else:
                out.other.append(status)
        return out

    def body(self, event_id: str) -> bytes:
        event = {"event_id": event_id, "type": "page_view", "anonymous_id": f"v-{event_id}"}
        return json.dumps(event).encode()

    async def close(self) -> None:
        await self.http.close()


@pytest.fixture
async def clients(limited: Limited) -> AsyncIterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        await c.close()


def client(made: list[Client], limited: Limited, site: str, ip: str) -> Client:
    made.append(Client(limited, site, ip))
    return made[-1]


async def in_event_log(limited: Limited, ids: list[str]) -> set[str]:
    conn = await db.connect(limited.services.database_dsn)
    try:
        rows = await conn.fetch("SELECT event_id FROM event_log WHERE event_id = ANY($1)", ids)
    finally:
        await conn.close()
    return {r["event_id"] for r in rows}


async def assert_logged(limited: Limited, accepted: list[str], refused: Sequence[str] = ()) -> None:
    async def all_in() -> bool:
        return await in_event_log(limited, accepted) == set(accepted)

    await eventually(
        all_in, seconds=60, what="accepted events in event_log", workers=(limited.worker,)
    )
    assert await in_event_log(limited, list(refused)) == set()  # a 429 publishes nothing


async def test_requests_at_the_limit_are_all_accepted(
    limited: Limited, clients: list[Client]
) -> None:
    c = client(clients, limited, "site-a", "127.0.0.11")
    ids = [f"rl-{uuid.uuid4().hex}" for _ in range(3 * BURST)]
    began = time.monotonic()
    for i, event_id in enumerate(ids):  # one request every 1/RATE s, never earlier
        await asyncio.sleep(max(0.0, began + i / RATE - time.monotonic()))
        status, _, doc = await c.post(c.body(event_id))
        assert status == 202, (i, doc)
    await assert_logged(limited, ids)


async def exhaust(c: Client) -> Answers:
    answers = await c.events(3 * BURST)
    assert answers.other == []
    assert answers.refused, "3 x the burst at once and nothing refused"
    return answers


async def test_a_burst_over_the_limit_gets_429_with_retry_after(
    limited: Limited, clients: list[Client]
) -> None:
    answers = await exhaust(client(clients, limited, "site-a", "127.0.0.12"))
    # The whole burst, plus what refilled while the requests were in flight.
    assert BURST <= len(answers.accepted) <= BURST + RATE * answers.seconds + 1
    assert {int(s) for s in answers.retry_after} == {1}  # a token every 0.2 s: 1 whole second
    assert all("LEADCYCLE_HTTP_RATE_LIMIT" in e and "5 requests/s" in e for e in answers.errors)
    await assert_logged(limited, answers.accepted, answers.refused)


async def test_other_clients_are_unaffected(limited: Limited, clients: list[Client]) -> None:
    await exhaust(client(clients, limited, "site-a", "127.0.0.13"))
    other_ip = await client(clients, limited, "site-a", "127.0.0.14").events(BURST)
    other_site = await client(clients, limited, "site-b", "127.0.0.13").events(BURST)
    assert (len(other_ip.accepted), len(other_site.accepted)) == (BURST, BURST)
    await assert_logged(limited, other_ip.accepted + other_site.accepted)


async def test_the_bucket_refills(limited: Limited, clients: list[Client]) -> None:
    c = client(clients, limited, "site-a", "127.0.0.15")
    answers = await exhaust(c)
    await asyncio.sleep(int(answers.retry_after[-1]))
    after = await c.events(1)
    assert len(after.accepted) == 1
    await asyncio.sleep(BURST / RATE)  # an empty bucket is full again after burst / rate
    full = await c.events(BURST)
    assert len(full.accepted) == BURST
    await assert_logged(limited, answers.accepted + after.accepted + full.accepted)


async def test_unauthorized_and_foreign_origin_requests_spend_no_tokens(
    limited: Limited, clients: list[Client]
) -> None:
    c = client(clients, limited, "site-a", "127.0.0.16")
    for _ in range(3 * BURST):
        status, _, _ = await c.post(c.body("x"), **{"X-Leadcycle-Key": "wrong"})
        assert status == 401
        status, _, _ = await c.post(c.body("x"), Origin="https://elsewhere.example")
        assert status == 403
    answers = await c.events(BURST)
    assert len(answers.accepted) == BURST


async def test_oversized_requests_spend_tokens(limited: Limited, clients: list[Client]) -> None:
    c = client(clients, limited, "site-a", "127.0.0.17")
    big = b'{"batch": ["' + b"x" * MAX_BODY + b'"]}'
    answers = await asyncio.gather(*(c.post(big) for _ in range(3 * BURST)))
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {413, 429, "closed"}
    assert 429 in statuses  # the limit is checked, and a token spent, before the body is read
