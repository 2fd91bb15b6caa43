"""One worker with its HTTP server on, shared by the HTTP tests (starting one costs ~5 s).

Everything it touches is namespaced by a run id: topic prefix, app id, reps, tokens.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from events.topics import TopicNames
from infra.kafka import ensure_contract_topics
from infra.processes import free_port
from tests.conftest import RunningServices
from tests.integration.workerproc import WorkerProcess, eventually


@dataclass(frozen=True)
class WebStack:
    services: RunningServices
    worker: WorkerProcess
    base: str  # http://127.0.0.1:PORT
    topics: TopicNames
    run: str
    write_key: str
    page_origin: str  # the one origin allowed by CORS: the browser test's sample page
    page_port: int
    reps: tuple[str, str]
    rep_tokens: dict[str, str]
    admin_token: str


def web_env(port: int, **extra: str) -> dict[str, str]:
    return {
        "LEADCYCLE_WEB_ENABLED": "true",
        "LEADCYCLE_WEB_PORT": str(port),
        "LEADCYCLE_WEB_BIND": "127.0.0.1",
        **extra,
    }


async def wait_ready(base: str, worker: WorkerProcess, seconds: float = 60) -> None:
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            try:
                async with http.get(f"{base}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, seconds=seconds, what="/readyz", workers=(worker,))


@pytest.fixture(scope="session")
async def stack(services: RunningServices) -> AsyncIterator[WebStack]:
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(f"h-{run}.")
    await ensure_contract_topics(services.kafka_url, topics, 2)
    port, page_port = free_port(), free_port()
    reps = (f"rep-a-{run}", f"rep-b-{run}")
    tokens = {rep: f"tok-{rep}" for rep in reps}
    admin = f"admin-{run}"
    write_key = f"wk-{run}"
    page_origin = f"http://localhost:{page_port}"
    worker = WorkerProcess(
        services,
        app_id=f"http-{run}",
        prefix=topics.prefix,
        **web_env(
            port,
            LEADCYCLE_PARTITIONS="2",
            LEADCYCLE_REPS=",".join(reps),
            LEADCYCLE_HTTP_WRITE_KEYS=f"docs-site=other-{run},sample={write_key}",
            # The sample site's server: tests/http/test_trust.py (server_key(stack)).
            LEADCYCLE_HTTP_SERVER_KEYS=f"sample=sk-{run}",
            LEADCYCLE_HTTP_CORS_ORIGINS=page_origin,
            LEADCYCLE_HTTP_BATCH_MAX_EVENTS="20",
            LEADCYCLE_HTTP_MAX_BODY_BYTES="200000",
            # The fuzz and browser tests post far faster than a visitor: the rate limit has a
            # worker of its own (test_ratelimit.py).
            LEADCYCLE_HTTP_RATE_LIMIT="0",
            LEADCYCLE_SALES_REP_TOKENS=",".join(f"{r}={t}" for r, t in tokens.items()),
            LEADCYCLE_SALES_ADMIN_TOKEN=admin,
            # No sweep during the run: it would change rows between two reads of a list.
            LEADCYCLE_SWEEP_INTERVAL="3600",
        ),
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base, worker)
        yield WebStack(
            services,
            worker,
            base,
            topics,
            run,
            write_key,
            page_origin,
            page_port,
            reps,
            tokens,
            admin,
        )
    finally:
        worker.stop()
    assert worker.proc is not None
    assert worker.proc.returncode == 0, worker.log()[-3000:]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass(frozen=True)
class HotLeads:
    """Leads with open follow-ups made through the real path, for rep A and rep B.

    Rep A's: ``a[0]`` stays open (listing tests), ``a[1]`` gets an outcome through the API,
    ``a[2]`` through the page's button.
    """

    a: tuple[str, str, str]
    b: str


@pytest.fixture(scope="session")
async def hot_leads(stack: WebStack) -> HotLeads:
    from infra import db
    from tests.http.records import publish_hot_lead

    r = stack.run
    leads = HotLeads(a=(f"LA1-{r}", f"LA2-{r}", f"LA3-{r}"), b=f"LB1-{r}")
    owners = {**dict.fromkeys(leads.a, stack.reps[0]), leads.b: stack.reps[1]}
    for lead, owner in owners.items():
        await publish_hot_lead(stack.services.kafka_url, stack.topics, lead, owner=owner)
    conn = await db.connect(stack.services.database_dsn)
    try:

        async def all_open() -> bool:
            rows = await conn.fetch(
                "SELECT lead_id, assignee FROM followups"
                " WHERE status = 'open' AND lead_id = ANY($1)",
                list(owners),
            )
            return {r["lead_id"]: r["assignee"] for r in rows} == owners

        await eventually(
            all_open, seconds=60, what="follow-ups for the hot leads", workers=(stack.worker,)
        )
    finally:
        await conn.close()
    return leads
