"""POST /v1/track against the running worker: real broker, real database."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from events import decode
from tests.http.conftest import WebStack
from tests.http.records import ids_in, read_topic
from workers.web.openapi import DOC_PATH

pytestmark = pytest.mark.integration

UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) collector-test"


def event(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "event_id": f"ev-{uuid.uuid4().hex}",
        "type": "page_view",
        "occurred_at": "2026-11-02T09:30:00+09:00",
        "anonymous_id": "visitor-1",
        "properties": {"url": "https://vendor.example/pricing"},
    }
    doc.update(over)
    return doc


async def track(
    http: aiohttp.ClientSession, stack: WebStack, body: object, **headers: str
) -> tuple[int, Any]:
    async with http.post(
        f"{stack.base}/v1/track",
        data=json.dumps(body),
        headers={"X-Leadcycle-Key": stack.write_key, "User-Agent": UA, **headers},
    ) as r:
        return r.status, await r.json()


async def test_one_event_is_completed_keyed_and_published(
    stack: WebStack, http: aiohttp.ClientSession
) -> None:
    anon = f"anon-{stack.run}-1"
    lead = f"lead-{stack.run}-1"
    by_anon = {
        "type": "page_view",
        "anonymous_id": anon,
        "context": {"ip": "203.0.113.9", "locale": "ja-JP"},
    }
    status, body = await track(http, stack, by_anon)
    assert status == 202, body
    assert body["accepted"] == 1
    assert body["rejected"] == 0
    [result] = body["results"]
    assigned = result["event_id"]
    assert assigned.startswith("http-")

    # Naming a lead takes the site's server key (docs/http.md, "Trust model").
    status, body = await track(
        http,
        stack,
        {"batch": [event(lead_id=lead, anonymous_id=None)]},
        **{"X-Leadcycle-Key": f"sk-{stack.run}"},
    )
    assert status == 202, body
    by_lead = body["results"][0]["event_id"]

    found = await read_topic(
        stack.services.kafka_url,
        stack.topics.events,
        until=lambda rs: {assigned, by_lead} <= ids_in(rs),
    )
    mine = {v["event_id"]: (k, v) for k, v in found if v["event_id"] in (assigned, by_lead)}
    key, value = mine[assigned]
    assert key == anon.encode()  # keyed by anonymous_id when there is no lead_id
    assert value["occurred_at"]  # the receive time was filled in
    # The server's view of the client replaces what the client claimed; the locale stays.
    assert value["context"] == {"ip": "127.0.0.1", "user_agent": UA, "locale": "ja-JP"}
    assert value["collected"]["site"] == "sample"
    assert value["collected"]["key"] == "browser"
    assert mine[by_lead][0] == lead.encode()
    # A server key's request is the site's server, not the visitor: no context is invented.
    assert mine[by_lead][1].get("context") is None
    assert mine[by_lead][1]["collected"]["key"] == "server"
    for _, value in mine.values():
        assert not isinstance(decode("events", json.dumps(value).encode(), max_bytes=65536), tuple)


async def test_mixed_batch_accepts_the_valid_and_dead_letters_the_rest(
    stack: WebStack, http: aiohttp.ClientSession
) -> None:
    good = [event(), event(type="content_download")]
    batch = [
        good[0],
        event(occurred_at="2026-11-02T09:30:00"),  # naive time
        good[1],
        event(type="purchase"),
        "not an object",
        event(surprise=True),
    ]
    status, body = await track(http, stack, {"batch": batch})
    assert status == 202, body
    assert (body["accepted"], body["rejected"]) == (2, 4)
    results = body["results"]
    assert [r["status"] for r in results] == [
        "accepted",
        "rejected",
        "accepted",
        "rejected",
        "rejected",
        "rejected",
    ]
    rejected = {r["index"]: r for r in results if r["status"] == "rejected"}
    assert rejected[1]["field"] == "occurred_at"
    assert "timezone" in rejected[1]["error"]
    assert rejected[3]["reason"] == "unknown_type"
    assert rejected[3]["field"] == "type"
    assert rejected[4]["reason"] == "schema"
    assert rejected[5]["field"] == "surprise"

    wanted = {str(e["event_id"]) for e in good}
    events = await read_topic(
        stack.services.kafka_url, stack.topics.events, until=lambda rs: wanted <= ids_in(rs)
    )
    assert wanted <= ids_in(events)
    sent_bad = {str(e["event_id"]) for e in batch if isinstance(e, dict)} - wanted
    assert not sent_bad & ids_in(events)

    letters = await read_topic(
        stack.services.kafka_url,
        stack.topics.dead_letters,
        until=lambda rs: len({v["offset"] for _, v in rs if v["source_topic"] == "http"}) >= 4,
    )
    http_letters = [v for _, v in letters if v["source_topic"] == "http"]
    by_offset = {v["offset"]: v for v in http_letters}
    assert {1, 3, 4, 5} <= set(by_offset)
    assert by_offset[1]["partition"] == -1
    assert by_offset[1]["reason"] == "schema"
    assert "occurred_at" in str(by_offset[1]["error"])
    assert by_offset[3]["reason"] == "unknown_type"


async def test_all_rejected_is_422_and_nothing_published(
    stack: WebStack, http: aiohttp.ClientSession
) -> None:
    bad = event(type="identify")  # identify needs an email
    status, body = await track(http, stack, bad)
    assert status == 422
    assert body["accepted"] == 0
    assert "email" in body["results"][0]["error"]


async def test_write_key_is_required(stack: WebStack, http: aiohttp.ClientSession) -> None:
    ev_none, ev_wrong, ev_query = event(), event(), event()
    async with http.post(f"{stack.base}/v1/track", json=ev_none) as r:
        assert r.status == 401
        assert "write key" in (await r.json())["error"]
    status, _ = await track(http, stack, ev_wrong, **{"X-Leadcycle-Key": "guess"})
    assert status == 401
    async with http.post(f"{stack.base}/v1/track?key={stack.write_key}", json=ev_query) as r:
        assert r.status == 202
    found = await read_topic(
        stack.services.kafka_url,
        stack.topics.events,
        until=lambda rs: str(ev_query["event_id"]) in ids_in(rs),
    )
    assert str(ev_query["event_id"]) in ids_in(found)
    assert not {str(ev_none["event_id"]), str(ev_wrong["event_id"])} & ids_in(found)


async def test_cors_allows_only_configured_origins(
    stack: WebStack, http: aiohttp.ClientSession
) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    async with http.options(
        f"{stack.base}/v1/track", headers={"Origin": stack.page_origin, **preflight}
    ) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == stack.page_origin
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
    async with http.options(
        f"{stack.base}/v1/track", headers={"Origin": "https://evil.example", **preflight}
    ) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
    status, _ = await track(http, stack, event(), Origin="https://evil.example")
    assert status == 403
    async with http.post(
        f"{stack.base}/v1/track?key={stack.write_key}",
        data=json.dumps(event()),
        headers={"Origin": stack.page_origin, "Content-Type": "text/plain"},
    ) as r:
        assert r.status == 202
        assert r.headers["Access-Control-Allow-Origin"] == stack.page_origin


async def test_limits_and_malformed_bodies(stack: WebStack, http: aiohttp.ClientSession) -> None:
    url = f"{stack.base}/v1/track?key={stack.write_key}"
    async with http.post(url, data=b"{" + b" " * 300_000 + b"}") as r:
        assert r.status == 413  # refused on Content-Length, before reading

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):  # 6.4 MB announced by nothing: no Content-Length
            yield b" " * 64_000

    async with http.post(url, data=chunks()) as r:
        assert r.status == 413
    status, body = await track(http, stack, {"batch": [event() for _ in range(21)]})
    assert status == 413
    assert "limit is 20" in str(body["error"])
    for raw in (b"", b"{not json", b'{"batch": "x"}', b"[1, 2]", b'{"x": NaN}', b'{"batch": []}'):
        async with http.post(url, data=raw) as r:
            assert r.status == 400, raw
            assert (await r.json())["error"]


async def test_health_readiness_and_openapi(stack: WebStack, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{stack.base}/healthz") as r:
        assert r.status == 200
    async with http.get(f"{stack.base}/readyz") as r:
        assert r.status == 200
        assert await r.json() == {
            "status": "ready",
            "broker": True,
            "database": True,
            "stalled_partitions": [],
        }
    async with http.get(f"{stack.base}/openapi.json") as r:
        served = await r.json()
    assert served == json.loads(await asyncio.to_thread(DOC_PATH.read_text))
    async with http.get(f"{stack.base}/v1/tracker.js") as r:
        assert r.status == 200
        assert r.content_type == "text/javascript"
        assert "sendBeacon" in await r.text()


async def test_an_item_cannot_claim_the_collectors_stamp(
    stack: WebStack, http: aiohttp.ClientSession
) -> None:
    forged = event(
        collected={"site": "other", "key": "server", "received_at": "2026-11-02T00:00:00Z"}
    )
    status, body = await track(http, stack, {"batch": [forged, event()]})
    assert status == 202, body
    first, second = body["results"]
    assert first["status"] == "rejected"
    assert first["field"] == "collected"
    assert second["status"] == "accepted"
