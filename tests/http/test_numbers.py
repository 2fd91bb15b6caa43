"""POST /v1/track with numbers and text PostgreSQL refuses: answered per item, never 202-then-lost.

The bodies are written by hand: ``json.dumps`` cannot write ``1e400`` or a lone surrogate key.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.http.conftest import WebStack
from tests.integration.workerproc import eventually

pytestmark = pytest.mark.integration

UA = "Mozilla/5.0 (X11; Linux x86_64) numbers-test"

#: (raw JSON text added to an item's properties, the field its rejection names)
BAD = [
    ('"n": 1e400', "properties.n"),
    ('"n": -1e400', "properties.n"),
    ('"n": 1e-400', "properties.n"),
    ('"n": ' + "9" * 400, "properties.n"),
    (f'"n": {2**63}', "properties.n"),
    ('"n": [1, 2e999]', "properties.n.1"),
    ('"n": "\\ud800"', "properties.n"),
    ('"\\udc00": 1', "properties.\\udc00"),
    ('"n": ' + "[" * 500 + "]" * 500, "properties"),  # nested: properties hold scalars only
]


def item(event_id: str, extra: str = "") -> str:
    doc = {
        "event_id": event_id,
        "type": "page_view",
        "anonymous_id": "numbers-visitor",
        "properties": {"url": "https://vendor.example/pricing"},
    }
    text = json.dumps(doc)
    assert text.endswith('pricing"}}')
    return text[: -len("}}")] + (", " + extra if extra else "") + "}}"


async def post(http: aiohttp.ClientSession, stack: WebStack, body: str) -> tuple[int, Any]:
    async with http.post(
        f"{stack.base}/v1/track",
        data=body.encode(),
        headers={"X-Leadcycle-Key": stack.write_key, "User-Agent": UA},
    ) as r:
        return r.status, await r.json()


async def test_unstorable_items_are_rejected_per_item_naming_the_field(
    stack: WebStack, http: aiohttp.ClientSession
) -> None:
    run = uuid.uuid4().hex[:8]
    good = [f"num-{run}-good-{i}" for i in range(3)]
    items = [item(good[0])]
    items += [item(f"num-{run}-bad-{i}", extra) for i, (extra, _) in enumerate(BAD)]
    items += [item(good[1]), item(good[2], '"n": 1e308, "m": -9223372036854775808')]
    status, body = await post(http, stack, '{"batch": [' + ", ".join(items) + "]}")

    assert status == 202, body
    assert (body["accepted"], body["rejected"]) == (3, len(BAD))
    results = body["results"]
    assert [r["status"] for r in results] == ["accepted"] + ["rejected"] * len(BAD) + [
        "accepted",
        "accepted",
    ]
    for (extra, field), result in zip(BAD, results[1 : 1 + len(BAD)], strict=True):
        assert result["reason"] == "schema", (extra, result)
        assert result["field"] == field, (extra, result)
        assert result["error"].startswith(f"{field}: "), (extra, result)

    # The accepted items reach the event log; the worker never met what it could not store.
    conn = await asyncpg.connect(stack.services.database_dsn)
    try:

        async def logged() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM event_log WHERE event_id = ANY($1)", good)
            return bool(n == len(good))

        await eventually(logged, seconds=60, what="the accepted items", workers=(stack.worker,))
        bad = await conn.fetchval(
            "SELECT count(*) FROM event_log WHERE event_id LIKE $1", f"num-{run}-bad-%"
        )
        assert bad == 0
    finally:
        await conn.close()
    assert "bisecting" not in stack.worker.log()


async def test_what_json_cannot_carry_is_malformed_for_the_whole_request(
    stack: WebStack, http: aiohttp.ClientSession
) -> None:
    """NaN and Infinity are not JSON at all, and Python reads no integer over 4,300 digits: the
    request is refused as malformed, never 202."""
    for literal in ("NaN", "Infinity", "-Infinity", "9" * 5000):
        body = '{"batch": [' + item(f"nan-{uuid.uuid4().hex}", f'"n": {literal}') + "]}"
        status, answer = await post(http, stack, body)
        assert status == 400, answer
        assert ("digits" if literal[0] == "9" else literal.lstrip("-")) in json.dumps(answer)
