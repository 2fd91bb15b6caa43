"""The wire contract: valid examples pass, invalid ones fail naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from events import BehaviourTracked, OutcomeRecorded, ProfileUpdated, Rejection, decode
from events.decode import describe, storable_float
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


# What PostgreSQL's jsonb would refuse (or Python would silently change) is refused at decode,
# naming the field: a message that passed here and failed in the database would cost its batch.
def with_props(extra: str) -> bytes:
    """A valid page view whose properties end with ``extra`` (raw JSON text)."""
    text = raw(behaviour(properties={"url": "https://example.com/p"}))
    return text.replace(b'"https://example.com/p"', b'"https://example.com/p", ' + extra.encode())


def profile_with(name: str, literal: str) -> bytes:
    return raw(profile(**{name: 0})).replace(
        f'"{name}": 0'.encode(), f'"{name}": {literal}'.encode()
    )


@pytest.mark.parametrize(
    ("topic", "value", "field", "mentions"),
    [
        ("events", with_props('"n": 1e400'), "properties.n", "1e400 is not a finite number"),
        ("events", with_props('"n": -1e400'), "properties.n", "-1e400 is not a finite number"),
        ("events", with_props('"n": 1.5E+309'), "properties.n", "not a finite number"),
        ("events", with_props('"n": NaN'), "properties.n", "NaN is not a finite number"),
        ("events", with_props('"n": Infinity'), "properties.n", "Infinity"),
        ("events", with_props('"n": -Infinity'), "properties.n", "-Infinity"),
        ("events", with_props('"n": 1e-400'), "properties.n", "too small"),
        ("events", with_props('"n": 0e-99999'), "properties.n", "exponent"),
        ("events", with_props('"n": 0.1' + "0" * 100), "properties.n", "more than 64 characters"),
        ("events", with_props('"n": ' + "9" * 400), "properties.n", "(400 characters)"),
        ("events", with_props('"n": ' + "9" * 5000), "properties.n", "64 bits"),
        ("events", with_props(f'"n": {2**63}'), "properties.n", "64 bits"),
        ("events", with_props(f'"n": {-(2**63) - 1}'), "properties.n", "64 bits"),
        ("events", with_props('"n": [1, 2, 1e999]'), "properties.n.2", "not a finite"),
        ("profiles", profile_with("company_size", "1e400"), "company_size", "finite"),
        ("profiles", profile_with("company_size", str(10**20)), "company_size", "64 bits"),
        ("outcomes", raw(outcome()).replace(b'"rep-1"', b"1e400"), "rep", "finite"),
        ("events", with_props('"n": "a\\ud800b"'), "properties.n", "surrogate \\ud800"),
        ("events", with_props('"n": "\\uDFFF"'), "properties.n", "surrogate \\udfff"),
        ("events", with_props('"\\udc00": 1'), "properties.\\udc00", "key"),
        ("events", raw(behaviour(anonymous_id="a\ud800")), "anonymous_id", "surrogate"),
        (
            "events",
            raw(behaviour(properties={"url": "https://x/\udbff"})),
            "properties.url",
            "surrogate",
        ),
        ("profiles", raw(profile(company_name="\ud800")), "company_name", "surrogate"),
        ("outcomes", raw(outcome(rep="\udc00")), "rep", "surrogate"),
        # The surrogate's bytes rather than its escape (what the collector re-encodes).
        (
            "events",
            with_props('"n": "x\\udc80"').replace(b"\\udc80", b"\xed\xb2\x80"),
            "properties.n",
            "surrogate \\udc80",
        ),
    ],
)
def test_decode_refuses_what_the_database_would_refuse(
    topic: str, value: bytes, field: str, mentions: str
) -> None:
    result = decode(topic, value, max_bytes=100_000)
    assert isinstance(result, Rejection), result
    assert result.reason == "schema"
    assert result.field == field
    assert result.error.startswith(f"{field}: ")
    assert mentions in result.error
    # The error itself must be storable text (it goes to dead_letters and the HTTP answer).
    result.error.encode("utf-8")


@pytest.mark.parametrize(
    "extra",
    [
        '"n": 1e308',
        '"n": -1.7976931348623157e308',
        '"n": 5e-324',
        '"n": 0.0',
        '"n": -0',
        '"n": 0e-5',
        '"n": 1E+2',
        f'"n": {2**63 - 1}',
        f'"n": {-(2**63)}',
        '"n": "\\ud83d\\ude00"',  # a surrogate pair is one character, U+1F600
        '"n": "\\\\ud800"',  # an escaped backslash then "ud800": plain text
        '"n": "\\u00e9t\\u00e9"',
    ],
)
def test_decode_accepts_numbers_and_text_the_database_stores(extra: str) -> None:
    assert isinstance(decode("events", with_props(extra), max_bytes=10_000), BehaviourTracked)


def test_surrogate_bytes_outside_a_string_are_invalid_utf8() -> None:
    result = decode("events", raw(behaviour()) + b" \xed\xa0\x80", max_bytes=1000)
    assert isinstance(result, Rejection)
    assert result.reason == "invalid_utf8"


def test_decode_still_calls_other_bad_bytes_invalid_utf8() -> None:
    result = decode("events", with_props('"n": "x"').replace(b'"x"', b'"\xc3\x28"'), max_bytes=1000)
    assert isinstance(result, Rejection)
    assert result.reason == "invalid_utf8"


def test_deep_nesting_inside_properties_is_refused_naming_them() -> None:
    result = decode("events", with_props('"n": ' + "[" * 500 + "]" * 500), max_bytes=10_000)
    assert isinstance(result, Rejection)
    assert result.reason == "schema"
    assert result.field == "properties"


def test_storable_float_makes_unstorable_literals_infinite() -> None:
    assert storable_float("1.5") == 1.5
    assert storable_float("0e5") == 0.0
    for literal in ("1e400", "-1e400", "1e-400", "0e-99999", "0." + "0" * 70 + "1"):
        assert storable_float(literal) in (float("inf"), float("-inf")), literal


def test_a_huge_unknown_key_is_named_but_not_quoted_whole() -> None:
    result = decode("events", raw(behaviour(**{"k" * 60_000: 1})), max_bytes=100_000)
    assert isinstance(result, Rejection)
    assert result.field == "k" * 64 + "...(60000 characters)"
    assert len(result.error) < 200
