"""The wire contract: valid examples pass, invalid ones fail naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from events import BehaviourTracked, OutcomeRecorded, ProfileUpdated, Rejection, decode
from events.decode import describe
from events.tracking import BEHAVIOUR_TYPES

T = "2026-11-02T09:30:00+09:00"


def behaviour(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "ev-1",
        "type": "page_view",
        "occurred_at": T,
        "anonymous_id": "a-1f3c",
        "properties": {"url": "https://example.com/pricing", "title": "Pricing"},
        "context": {"user_agent": "Mozilla/5.0", "ip": "203.0.113.7"},
    }
    doc.update(over)
    return doc


def profile(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "pr-1",
        "type": "profile_updated",
        "lead_id": "L000001",
        "occurred_at": T,
        "email": "Hanako@Example.co.jp",
        "company_name": "Example KK",
        "company_size": 1200,
        "industry": "manufacturing",
        "job_title": "営業部長",
        "country": "JP",
        "source": "webinar",
        "owner": "rep-1",
    }
    doc.update(over)
    return doc


def outcome(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "oc-1",
        "type": "sales_outcome",
        "lead_id": "L000001",
        "occurred_at": T,
        "outcome": "lost",
        "reason": "timing",
        "revisit_on": "2027-03-01",
        "rep": "rep-1",
        "bant": {"budget": True, "authority": None, "need": True, "timeline": False},
    }
    doc.update(over)
    return doc


def error_fields(model: type[Any], doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(doc)
    return [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]


@pytest.mark.parametrize("kind", BEHAVIOUR_TYPES)
def test_every_behaviour_type_is_accepted(kind: str) -> None:
    extra = {"email": "a@b.example"} if kind == "identify" else {}
    event = BehaviourTracked.model_validate(behaviour(type=kind, **extra))
    assert event.type == kind
    assert event.subject == "anon:a-1f3c"


def test_lead_id_is_the_subject_when_known() -> None:
    event = BehaviourTracked.model_validate(behaviour(lead_id="L9"))
    assert event.subject == "L9"


def test_extra_properties_are_kept_but_bounded() -> None:
    event = BehaviourTracked.model_validate(behaviour(properties={"url": "/x", "plan": "pro"}))
    assert event.properties.model_extra == {"plan": "pro"}
    too_many = {f"k{i}": i for i in range(40)}
    assert error_fields(BehaviourTracked, behaviour(properties=too_many)) == ["properties"]
    nested = {"deep": {"a": 1}}
    assert error_fields(BehaviourTracked, behaviour(properties=nested)) == ["properties"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"occurred_at": "2026-11-02T09:30:00"}, "occurred_at"),  # naive time
        ({"occurred_at": "1999-12-31T23:00:00Z"}, "occurred_at"),  # out of range
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"type": "purchase"}, "type"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "x" * 129}, "event_id"),
        ({"event_id": "has space"}, "event_id"),
        ({"email": "not-an-email"}, "email"),
        ({"surprise": 1}, "surprise"),  # unknown top-level key
        ({"properties": {"url": "u" * 3000}}, "properties.url"),
        ({"context": {"ip": "999.1.1.1"}}, "context.ip"),
        ({"context": {"user_agent": 5}}, "context.user_agent"),
    ],
)
def test_invalid_behaviour_names_the_field(change: dict[str, Any], field: str) -> None:
    assert field in error_fields(BehaviourTracked, behaviour(**change))


def test_behaviour_needs_a_subject_and_identify_needs_email() -> None:
    doc = behaviour()
    del doc["anonymous_id"]
    with pytest.raises(ValidationError, match="anonymous_id or lead_id is required"):
        BehaviourTracked.model_validate(doc)
    with pytest.raises(ValidationError, match="email is required"):
        BehaviourTracked.model_validate(behaviour(type="identify"))


def test_profile_update_distinguishes_absent_from_null() -> None:
    event = ProfileUpdated.model_validate(profile())
    assert event.email == "hanako@example.co.jp"  # normalised for matching
    partial = ProfileUpdated.model_validate(
        {
            "event_id": "p2",
            "type": "profile_updated",
            "lead_id": "L1",
            "occurred_at": T,
            "job_title": None,
            "company_size": 40,
        }
    )
    assert partial.changes() == {"job_title": None, "company_size": 40}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"company_size": -1}, "company_size"),
        ({"company_size": "big"}, "company_size"),
        ({"source": "tv"}, "source"),
        ({"lead_id": None}, "lead_id"),
        ({"type": "profile_changed"}, "type"),
        ({"job_title": "x" * 300}, "job_title"),
        ({"owner": "rep 1"}, "owner"),
    ],
)
def test_invalid_profile_names_the_field(change: dict[str, Any], field: str) -> None:
    assert field in error_fields(ProfileUpdated, profile(**change))


def test_valid_outcomes() -> None:
    lost = OutcomeRecorded.model_validate(outcome())
    assert lost.revisit_on is not None
    assert lost.bant.need is True
    assert lost.bant.authority is None
    won = OutcomeRecorded.model_validate(outcome(outcome="won", reason=None, revisit_on=None))
    assert won.bant.budget is True
    dq = OutcomeRecorded.model_validate(
        outcome(outcome="disqualified", reason="student", revisit_on=None)
    )
    assert dq.reason == "student"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"outcome": "won"}, "reason must be null"),
        ({"reason": "student"}, "does not fit outcome 'lost'"),
        ({"outcome": "disqualified", "reason": "no_budget"}, "does not fit outcome"),
        ({"reason": "no_budget"}, "revisit_on is only allowed with reason 'timing'"),
    ],
)
def test_outcome_reason_must_fit(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OutcomeRecorded.model_validate(outcome(**change))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"outcome": "maybe"}, "outcome"),
        ({"revisit_on": "soon"}, "revisit_on"),
        ({"bant": {"budget": "lots"}}, "bant.budget"),
        ({"bant": {"money": True}}, "bant.money"),
    ],
)
def test_invalid_outcome_names_the_field(change: dict[str, Any], field: str) -> None:
    assert field in error_fields(OutcomeRecorded, outcome(**change))


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("topic", "value", "reason", "mentions"),
    [
        ("events", b"", "empty", "empty"),
        ("events", b"x" * 2000, "too_large", "limit is 1000"),
        ("events", b"\xff\xfe{", "invalid_utf8", "byte 0"),
        ("events", b"{not json", "invalid_json", "line 1"),
        ("events", b"[1, 2]", "schema", "JSON object"),
        ("events", raw(behaviour(type="purchase")), "unknown_type", "type:"),
        ("profiles", raw(behaviour()), "unknown_type", "profile_updated"),
        ("events", raw(behaviour(occurred_at="2026-01-01T00:00:00")), "schema", "occurred_at:"),
        ("events", raw(behaviour(properties={"title": "a\u0000b"})), "schema", "NUL"),
        ("outcomes", raw(outcome(outcome="won")), "schema", "reason must be null"),
    ],
)
def test_decode_rejects_with_reason(topic: str, value: bytes, reason: str, mentions: str) -> None:
    result = decode(topic, value, max_bytes=1000)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert mentions in result.error


@pytest.mark.parametrize(
    ("value", "mentions"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"n": ' + b"9" * 5000 + b"}", "digits"),
    ],
)
def test_decode_rejects_what_json_loads_raises_on(value: bytes, mentions: str) -> None:
    """json.loads raises RecursionError / ValueError, not JSONDecodeError, on these."""
    result = decode("events", value, max_bytes=1_000_000)
    assert isinstance(result, Rejection)
    assert result.reason == "invalid_json"
    assert mentions in result.error


def test_decode_accepts_each_topic() -> None:
    assert isinstance(decode("events", raw(behaviour()), max_bytes=10_000), BehaviourTracked)
    assert isinstance(decode("profiles", raw(profile()), max_bytes=10_000), ProfileUpdated)
    assert isinstance(decode("outcomes", raw(outcome()), max_bytes=10_000), OutcomeRecorded)


def test_error_description_lists_fields_and_caps_the_list() -> None:
    doc = {f"x{i}": 1 for i in range(9)}
    with pytest.raises(ValidationError) as info:
        ProfileUpdated.model_validate(doc)
    text, first = describe(info.value)
    assert first == "event_id"
    assert text.startswith("event_id: Field required")
    assert text.endswith("more")
