"""Fuzz the collector: no 5xx, no crash, and nothing invalid ever reaches the events topic."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import decode
from tests.http.conftest import WebStack
from tests.http.records import read_topic

pytestmark = pytest.mark.integration

#: Event ids the fuzz test saw accepted; the test after it (same module, file order) checks them.
SEEN: list[str] = []

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
# Near-valid events: the right keys with wrong, edge or hostile values mixed in.
fields = {
    "event_id": st.one_of(st.text(max_size=140), st.uuids().map(str), st.integers()),
    "type": st.sampled_from(["page_view", "identify", "demo_request", "purchase", "", "PAGE_VIEW"]),
    "occurred_at": st.one_of(
        st.datetimes().map(lambda d: d.isoformat()),
        st.sampled_from(
            ["2026-11-02T09:30:00Z", "2026-11-02T09:30:00", "1999-01-01T00:00:00Z", "now"]
        ),
    ),
    "anonymous_id": st.one_of(st.text(max_size=140), st.none()),
    "lead_id": st.one_of(st.text(max_size=20), st.none()),
    "email": st.one_of(st.emails(), st.text(max_size=30)),
    "properties": json_values,
    "context": json_values,
}
valid = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["page_view", "content_download", "demo_request"]),
        "anonymous_id": st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True),
    },
    optional={"properties": st.fixed_dictionaries({}, optional={"url": st.text(max_size=60)})},
)
mutated = st.tuples(valid, st.fixed_dictionaries({}, optional=fields)).map(
    lambda p: {**p[0], **p[1]}
)
events = valid | mutated | st.fixed_dictionaries({}, optional=fields) | json_values
bodies = st.one_of(
    events.map(lambda e: json.dumps(e).encode()),
    st.lists(events, max_size=25).map(lambda b: json.dumps({"batch": b}).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def post(stack: WebStack, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{stack.base}/v1/track?key={stack.write_key}", data=body, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_fuzzed_bodies_never_5xx(stack: WebStack, body: bytes) -> None:
    status, doc = post(stack, body)
    assert status in (202, 400, 413, 422), (status, doc)
    if status in (202, 422):
        SEEN.extend(r["event_id"] for r in doc["results"] if r["status"] == "accepted")
    else:
        assert doc["error"]


async def test_only_valid_events_reached_the_topic(stack: WebStack) -> None:
    assert SEEN, "the fuzz test above accepted nothing: it is not exercising the happy path"
    wanted = set(SEEN)
    records = await read_topic(
        stack.services.kafka_url,
        stack.topics.events,
        until=lambda rs: wanted <= {v.get("event_id") for _, v in rs},
    )
    assert wanted <= {v.get("event_id") for _, v in records}
    for _, value in records:
        found = decode("events", json.dumps(value).encode(), max_bytes=65536)
        assert not hasattr(found, "reason"), (found, value)
