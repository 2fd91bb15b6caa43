"""Device clocks (docs/http.md, "Device clocks"): the collector corrects ``occurred_at`` from the
device's send time, as Snowplow's ``derived_tstamp`` and Segment's ``timestamp`` do."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from infra import db
from tests.http.conftest import WebStack
from tests.http.records import read_topic
from tests.integration.workerproc import eventually

pytestmark = pytest.mark.integration

UA = "Mozilla/5.0 (X11; Linux x86_64) skew-test"


async def post(
    http: aiohttp.ClientSession, stack: WebStack, items: list[dict[str, Any]]
) -> dict[str, Any]:
    async with http.post(
        f"{stack.base}/v1/track",
        data=json.dumps({"batch": items}),
        headers={"X-Leadcycle-Key": stack.write_key, "User-Agent": UA},
    ) as r:
        body: dict[str, Any] = await r.json()
        assert r.status in (202, 422), body
        return body


def page_view(anon: str, at: datetime, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": f"sk-{uuid.uuid4().hex}",
        "type": "page_view",
        "occurred_at": at.isoformat(),
        "anonymous_id": anon,
        "properties": {"url": "https://vendor.example/pricing"},
    }
    doc.update(over)
    return doc


async def test_a_clock_two_years_ahead_lands_at_the_right_time(
    stack: WebStack, http: aiohttp.ClientSession
) -> None:
    anon = f"skew-{stack.run}"
    real = datetime.now(UTC)
    ahead = timedelta(days=730)
    # Created 30 s and 5 s before sending, by a device whose clock is two years ahead.
    device_sent = real + ahead
    early = page_view(anon, device_sent - timedelta(seconds=30), sent_at=device_sent.isoformat())
    late = page_view(anon, device_sent - timedelta(seconds=5), sent_at=device_sent.isoformat())
    # No sent_at: the device's occurred_at is taken as it is (and the worker judges it).
    plain = page_view(anon, real - timedelta(minutes=3))
    body = await post(http, stack, [early, late, plain])
    assert body["accepted"] == 3, body
    after = datetime.now(UTC)

    wanted = {early["event_id"], late["event_id"], plain["event_id"]}
    records = await read_topic(
        stack.services.kafka_url,
        stack.topics.events,
        until=lambda rs: wanted <= {v["event_id"] for _, v in rs},
    )
    sent = {v["event_id"]: v for _, v in records if v["event_id"] in wanted}
    for doc, before_send in ((early, 30), (late, 5)):
        value = sent[doc["event_id"]]
        stamp = value["collected"]
        received = datetime.fromisoformat(stamp["received_at"])
        assert real <= received <= after
        corrected = datetime.fromisoformat(value["occurred_at"])
        # received_at - (sent_at - device time): exact, in the collector's own clock.
        assert corrected == received - timedelta(seconds=before_send)
        assert datetime.fromisoformat(stamp["device_occurred_at"]) == datetime.fromisoformat(
            str(doc["occurred_at"])
        )
        assert datetime.fromisoformat(stamp["sent_at"]) == device_sent
        assert "sent_at" not in value  # a request field: only the stamp keeps it
    untouched = sent[plain["event_id"]]
    assert datetime.fromisoformat(untouched["occurred_at"]) == real - timedelta(minutes=3)
    assert "device_occurred_at" not in untouched["collected"]

    # What the worker stores is the corrected time.
    conn = await db.connect(stack.services.database_dsn)
    try:
        times: dict[str, datetime] = {}

        async def logged() -> bool:
            rows = await conn.fetch(
                "SELECT payload->>'event_id' AS id, occurred_at FROM event_log"
                " WHERE payload->>'event_id' = ANY($1)",
                [early["event_id"], late["event_id"]],
            )
            times.update({r["id"]: r["occurred_at"] for r in rows})
            return len(times) == 2

        await eventually(logged, seconds=30, what="the skewed events", workers=(stack.worker,))
        for event_id, at in times.items():
            assert real - timedelta(minutes=1) <= at <= after, (event_id, at)
    finally:
        await conn.close()


async def test_a_bad_send_time_is_refused_naming_the_field(
    stack: WebStack, http: aiohttp.ClientSession
) -> None:
    now = datetime.now(UTC)
    naive = page_view("skew-bad", now, sent_at=now.replace(tzinfo=None).isoformat())
    garbage = page_view("skew-bad", now, sent_at="yesterday")
    # Created after it was sent: the device contradicts itself; it cannot be later than arrival.
    backwards = page_view("skew-bad", now + timedelta(hours=1), sent_at=now.isoformat())
    body = await post(http, stack, [naive, garbage, backwards])
    first, second, third = body["results"]
    assert (first["status"], first["field"]) == ("rejected", "sent_at")
    assert (second["status"], second["field"]) == ("rejected", "sent_at")
    assert third["status"] == "accepted"
    records = await read_topic(
        stack.services.kafka_url,
        stack.topics.events,
        until=lambda rs: any(v["event_id"] == backwards["event_id"] for _, v in rs),
    )
    [value] = [v for _, v in records if v["event_id"] == backwards["event_id"]]
    assert value["occurred_at"] == value["collected"]["received_at"]
