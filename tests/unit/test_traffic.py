"""The traffic generator: deterministic, valid where it says so, and realistic enough to demo."""

from __future__ import annotations

import itertools
import json
import statistics
import tracemalloc
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any

import pytest

from events import OutcomeRecorded, Rejection, decode
from events.decode import INPUT_MODELS
from events.tracking import BEHAVIOUR_TYPES, BehaviourTracked
from workers.bots import BotFilter
from workers.traffic import Message, TrafficSpec, generate

SPEC = TrafficSpec(leads=1000, seed=11, duplicate_rate=0.05, invalid_rate=0.02)
MAX_BYTES = 64 * 1024  # the worker's default LEADCYCLE_MAX_MESSAGE_BYTES


@cache
def stream(spec: TrafficSpec = SPEC) -> tuple[Message, ...]:
    return tuple(generate(spec))


@cache
def firsts(spec: TrafficSpec = SPEC) -> tuple[tuple[Message, dict[str, Any]], ...]:
    """Valid messages, first delivery only, with their decoded JSON."""
    seen: set[str] = set()
    out = []
    for m in stream(spec):
        if m.valid:
            doc = json.loads(m.value)
            if doc["event_id"] not in seen:
                seen.add(doc["event_id"])
                out.append((m, doc))
    return tuple(out)


def docs(topic: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [d for m, d in firsts() if m.topic == topic and kind in (None, d["type"])]


def test_the_same_spec_yields_the_same_bytes() -> None:
    spec = TrafficSpec(leads=150, seed=3, duplicate_rate=0.1, invalid_rate=0.1)
    assert list(generate(spec)) == list(generate(spec))
    other = list(generate(TrafficSpec(leads=150, seed=4, duplicate_rate=0.1, invalid_rate=0.1)))
    assert [m.value for m in other] != [m.value for m in generate(spec)]


def test_every_valid_message_validates_against_its_topic_model_and_has_the_right_key() -> None:
    valid = [m for m in stream() if m.valid]
    assert len(valid) > 5000
    for m in valid:
        model, _ = INPUT_MODELS[m.topic]
        event = model.model_validate_json(m.value)
        assert not isinstance(decode(m.topic, m.value, max_bytes=MAX_BYTES), Rejection)
        if isinstance(event, BehaviourTracked):
            assert m.key == (event.lead_id or event.anonymous_id or "").encode()
        else:
            assert m.key == event.lead_id.encode()  # type: ignore[attr-defined]
        assert m.timestamp == event.occurred_at  # type: ignore[attr-defined]
        assert m.timestamp.utcoffset() is not None


def test_invalid_messages_are_rejected_for_several_reasons() -> None:
    invalid = [m for m in stream() if not m.valid]
    valid = sum(1 for m in stream() if m.valid)
    assert 0.01 < len(invalid) / valid < 0.03
    reasons: Counter[str] = Counter()
    for m in invalid:
        result = decode(m.topic, m.value, max_bytes=MAX_BYTES)
        assert isinstance(result, Rejection), m
        reasons[result.reason] += 1
    assert {"schema", "invalid_json", "unknown_type", "invalid_utf8"} <= set(reasons)
    assert max(len(m.value) for m in invalid) < MAX_BYTES  # oversized strings, not megabytes


def test_duplicates_are_byte_identical_resends_at_about_the_asked_rate() -> None:
    first: dict[str, tuple[int, bytes]] = {}
    resent = 0
    for i, m in enumerate(stream()):
        if not m.valid:
            continue
        event_id = json.loads(m.value)["event_id"]
        if event_id in first:
            index, value = first[event_id]
            assert value == m.value
            assert index < i
            resent += 1
        else:
            first[event_id] = (i, m.value)
    assert 0.03 < resent / len(first) < 0.07


def test_no_duplicates_or_invalid_messages_unless_asked() -> None:
    plain = stream(TrafficSpec(leads=100))
    ids = [json.loads(m.value)["event_id"] for m in plain]
    assert all(m.valid for m in plain)
    assert len(ids) == len(set(ids))


def test_messages_come_in_event_time_order_interleaved_across_leads() -> None:
    times = [m.timestamp for m, _ in firsts()]
    assert times == sorted(times)
    spec = SPEC
    assert all(spec.start <= t < spec.start + timedelta(days=spec.days) for t in times)
    positions = [i for i, (m, _) in enumerate(firsts()) if m.key == b"L000001"]
    assert len(positions) > 1
    assert positions[-1] - positions[0] > len(positions)


def test_anonymous_visits_come_before_identify_and_then_carry_the_lead() -> None:
    identified: dict[str, tuple[int, str]] = {}
    for i, (_, d) in enumerate(firsts()):
        if d["type"] == "identify":
            assert d["anonymous_id"] not in identified
            identified[d["anonymous_id"]] = (i, d["lead_id"])
    leads = len({d["lead_id"] for d in docs("profiles")})
    assert 0.25 < len(identified) / leads < 0.45
    anonymous_before = 0
    for i, (m, d) in enumerate(firsts()):
        anon = d.get("anonymous_id")
        if m.topic != "events" or anon not in identified:
            continue
        at, lead_id = identified[anon]
        if i < at:
            assert "lead_id" not in d
            assert m.key == anon.encode()
            anonymous_before += 1
        else:
            assert d["lead_id"] == lead_id
            assert m.key == lead_id.encode()
    assert anonymous_before >= len(identified)
    emails = {d["lead_id"]: d.get("email") for d in docs("profiles") if "email" in d}
    assert all(emails[d["lead_id"]] == d["email"] for d in docs("events", "identify"))


def test_the_mix_has_every_behaviour_and_several_outcomes() -> None:
    kinds = Counter(d["type"] for d in docs("events"))
    assert set(kinds) == set(BEHAVIOUR_TYPES)
    assert kinds["page_view"] > sum(kinds.values()) / 2
    assert kinds["demo_request"] < kinds["content_download"]
    outcomes = [OutcomeRecorded.model_validate(d) for d in docs("outcomes")]
    assert len({o.outcome for o in outcomes}) >= 7
    assert len({o.reason for o in outcomes if o.outcome == "lost"}) >= 3
    assert {o.rep for o in outcomes} <= {f"rep-{n}" for n in range(1, 6)}
    timed = [o for o in outcomes if o.revisit_on is not None]
    assert timed
    for o in timed:
        assert o.reason == "timing"
        assert 28 <= (o.revisit_on - o.occurred_at.date()).days <= 182  # type: ignore[operator]
    assert any(o.bant.budget is None for o in outcomes if o.outcome == "opportunity_opened")


def test_profiles_look_like_b2b_leads() -> None:
    profiles = docs("profiles")
    sizes = [d["company_size"] for d in profiles if "company_size" in d]
    assert statistics.median(sizes) < 200
    assert max(sizes) >= 1000
    titles = {d["job_title"] for d in profiles if "job_title" in d}
    assert {"部長", "課長", "VP of Sales", "Director, IT"} & titles
    assert any(t.isascii() for t in titles)
    assert any(not t.isascii() for t in titles)
    assert len({d["country"] for d in profiles if "country" in d}) >= 5
    assert len({d["industry"] for d in profiles if "industry" in d}) >= 6
    assert any("owner" in d for d in profiles)
    stamps = [d["occurred_at"] for _, d in firsts()]
    assert any(s.endswith("Z") for s in stamps)
    assert any(s.endswith("+09:00") for s in stamps)
    lead_ids = {d["lead_id"] for d in profiles}
    assert all(len(i) == 7 and i.startswith("L") for i in lead_ids)
    updates = Counter(d["lead_id"] for d in profiles)
    assert any(n > 1 for n in updates.values())  # later edits: titles, sizes, owners


def test_students_competitors_and_partners_are_in_the_mix_and_get_disqualified() -> None:
    emails = [d["email"] for d in docs("profiles") if "email" in d]
    domains = Counter(e.rsplit("@", 1)[1] for e in emails)
    assert any(d.endswith(".ac.jp") for d in domains)
    assert any(d.endswith(".edu") for d in domains)
    assert domains["rivalsoft.example"]
    assert domains["partnerco.example"]
    outsiders = sum(
        n
        for d, n in domains.items()
        if d.endswith((".ac.jp", ".edu")) or d in ("rivalsoft.example", "partnerco.example")
    )
    assert 0.02 < outsiders / len(emails) < 0.15
    reasons = {d.get("reason") for d in docs("outcomes") if d["outcome"] == "disqualified"}
    assert {"student", "competitor"} <= reasons


def test_bots_are_a_small_share_the_worker_recognises() -> None:
    bots = BotFilter()
    agents = Counter(
        (d.get("context") or {}).get("user_agent") for d in docs("events") if d.get("context")
    )
    flagged = {ua for ua in agents if bots.is_bot(ua)}
    share = sum(agents[ua] for ua in flagged) / sum(agents.values())
    assert 0.01 < share < 0.12
    for marker in ("Googlebot", "bingbot", "AhrefsBot", "HeadlessChrome"):
        assert any(marker in str(ua) for ua in flagged)
    humans = set(agents) - flagged
    assert len(humans) >= 4
    assert not any("bot" in str(ua).lower() for ua in humans)


def test_some_lost_leads_come_back_to_the_pricing_page() -> None:
    parked: dict[str, datetime] = {}
    back = set()
    for m, d in firsts():
        if m.topic == "outcomes" and d["outcome"] in ("lost", "nurture"):
            parked.setdefault(d["lead_id"], m.timestamp)
        elif d["type"] == "page_view" and d.get("lead_id", "") in parked:
            if d["properties"]["url"].endswith("/pricing"):
                back.add(d["lead_id"])
    assert parked
    assert 0 < len(back) < len(parked)


def test_hot_leads_reach_sales_after_raising_their_hand() -> None:
    hand: dict[str, datetime] = {}
    for m, d in firsts():
        if d["type"] in ("demo_request", "quote_request", "trial_signup"):
            hand.setdefault(d["lead_id"], m.timestamp)
    first_outcome: dict[str, datetime] = {}
    for m, d in firsts():
        if m.topic == "outcomes":
            first_outcome.setdefault(d["lead_id"], m.timestamp)
    # The rest are downloaders inside sales called anyway (and who may raise a hand later).
    raised = [lead for lead, t in first_outcome.items() if lead in hand and hand[lead] < t]
    assert len(raised) > 0.6 * len(first_outcome)


def test_per_lead_events_never_go_back_in_time() -> None:
    last: dict[bytes, datetime] = defaultdict(lambda: datetime.min.replace(tzinfo=UTC))
    for m, _ in firsts():
        assert m.timestamp >= last[m.key]
        last[m.key] = m.timestamp


def test_generation_is_lazy() -> None:
    # An eager generator would build ten million journeys before yielding anything.
    huge = generate(TrafficSpec(leads=10_000_000))
    assert sum(1 for _ in itertools.islice(huge, 50_000)) == 50_000
    tracemalloc.start()
    try:
        total = sum(len(m.value) for m in generate(TrafficSpec(leads=1500, seed=5)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < total / 2  # a list of the messages would hold every value at once


def test_a_start_in_another_zone_works_and_bad_specs_are_refused() -> None:
    jst = timezone(timedelta(hours=9))
    spec = TrafficSpec(leads=20, start=datetime(2026, 4, 1, tzinfo=jst), days=30)
    assert all(m.timestamp >= spec.start for m in generate(spec))
    with pytest.raises(ValueError, match="timezone-aware"):
        TrafficSpec(start=datetime(2026, 4, 1))
    with pytest.raises(ValueError, match="duplicate_rate"):
        TrafficSpec(duplicate_rate=1.5)
    with pytest.raises(ValueError, match="days"):
        TrafficSpec(days=0)
    assert list(generate(TrafficSpec(leads=0))) == []


def test_recent_spec_ends_at_midnight_before_now() -> None:
    from workers.traffic import recent_spec

    now = datetime(2026, 11, 23, 15, 40, tzinfo=UTC)
    spec = recent_spec(leads=10, seed=3, now=now)
    assert spec.start == datetime(2026, 9, 24, tzinfo=UTC)
    assert spec.start + timedelta(days=spec.days) == datetime(2026, 11, 23, tzinfo=UTC)
    assert (spec.duplicate_rate, spec.invalid_rate) == (0.01, 0.005)
