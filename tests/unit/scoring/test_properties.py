"""Property tests (hypothesis) for the scoring invariants."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from events import BehaviourTracked, OutcomeRecorded
from scoring.decision import Decision
from scoring.engine import apply, raw_behaviour_score, sweep
from scoring.fold import Fold
from scoring.ledger import score_from_ledger
from scoring.state import LeadState
from tests.unit.scoring.factory import GOOD_PROFILE, RULES, T0, behaviour, days, outcome, profile

URLS = [
    "https://acme.example/pricing",
    "https://acme.example/careers/sales",
    "https://acme.example/blog/a",
    "https://acme.example/customers/toyota/",
    "https://acme.example/",
]
KINDS = [
    "page_view",
    "page_view",
    "page_view",
    "content_download",
    "webinar_attended",
    "email_click",
    "form_submit",
    "trial_signup",
    "quote_request",
    "demo_request",
    "unsubscribe",
]
POSITIVE_KINDS = [k for k in KINDS if k != "unsubscribe"]
SPAN = int(timedelta(days=60).total_seconds())
AT = T0 + days(61)


@st.composite
def events(draw: st.DrawFn, kinds: list[str] = KINDS, urls: list[str] = URLS) -> BehaviourTracked:
    kind = draw(st.sampled_from(kinds))
    at = T0 + timedelta(seconds=draw(st.integers(-SPAN, SPAN)))
    props: dict[str, str] = {}
    if kind == "page_view":
        props["url"] = draw(st.sampled_from(urls))
    if kind == "content_download":
        props["content_id"] = draw(st.sampled_from(["wp-buyers-guide", "wp-other"]))
    return behaviour(kind, at, event_id=f"ev-{draw(st.integers(0, 10**9))}", **props)


UNIQUE_EVENTS = st.lists(events(), max_size=25, unique_by=lambda e: e.event_id)


def fold(state: LeadState, items: list[BehaviourTracked], now: datetime = AT) -> LeadState:
    for event in items:
        state = apply(state, event, RULES, now=now).state
    return state


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=60, deadline=None)
@given(UNIQUE_EVENTS, st.randoms(use_true_random=False))
def test_behaviour_score_is_order_independent_and_idempotent(
    items: list[BehaviourTracked], rnd: random.Random
) -> None:
    # The Fold stands in for the event log, which lets each event id through once.
    once, twice = Fold(RULES, now=AT), Fold(RULES, now=AT)
    for event in items:
        once.add(event)
    shuffled = list(items) + list(items)  # every event delivered twice, in another order
    rnd.shuffle(shuffled)
    for event in shuffled:
        twice.add(event)
    if not items:
        assert not once.states
        assert not twice.states
        return
    in_order, replayed = once.states["L1"], twice.states["L1"]
    for at in (T0 - days(70), T0, AT, AT + days(30)):
        assert close(raw_behaviour_score(in_order, at), raw_behaviour_score(replayed, at))
    assert in_order.caps == replayed.caps
    assert in_order.events == replayed.events == len(items)


@settings(max_examples=60, deadline=None)
@given(UNIQUE_EVENTS, st.datetimes(datetime(2025, 1, 1), datetime(2027, 12, 31)))
def test_score_equals_ledger_sum(items: list[BehaviourTracked], at_naive: datetime) -> None:
    at = at_naive.replace(tzinfo=T0.tzinfo)
    state = apply(LeadState.new("L1", now=T0), profile(**GOOD_PROFILE), RULES, now=T0)
    ledger = list(state.ledger)
    current = state.state
    for event in items:
        decision = apply(current, event, RULES, now=AT)
        ledger.extend(decision.ledger)
        current = decision.state
    fit, raw = score_from_ledger(ledger, at=at)
    assert close(fit, current.fit_score)
    assert close(raw, raw_behaviour_score(current, at))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        events(POSITIVE_KINDS, [u for u in URLS if "careers" not in u]),
        max_size=20,
        unique_by=lambda e: e.event_id,
    ),
    st.integers(0, 400 * 86400),
    st.integers(0, 400 * 86400),
)
def test_decay_is_monotone_in_time(items: list[BehaviourTracked], a: int, b: int) -> None:
    state = fold(LeadState.new("L1", now=T0), items)
    early, late = sorted((a, b))
    base = T0 - days(60)
    earlier = raw_behaviour_score(state, base + timedelta(seconds=early))
    later = raw_behaviour_score(state, base + timedelta(seconds=late))
    assert later <= earlier + 1e-9
    assert later >= 0


OUTCOMES = st.sampled_from(
    [
        ("appointment_set", None),
        ("opportunity_opened", None),
        ("won", None),
        ("contacted", None),
        ("lost", "no_budget"),
        ("lost", "timing"),
        ("nurture", "no_need"),
        ("no_answer", None),
    ]
)
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("event"), events()),
        st.tuples(st.just("outcome"), OUTCOMES),
        st.tuples(st.just("sweep"), st.none()),
    ),
    max_size=30,
)


Action = tuple[str, Any]


def play(state: LeadState, actions: list[Action], step_hours: int) -> Iterator[Decision]:
    """Run ``actions`` with ``now`` advancing by ``step_hours``; yield every decision."""
    now = T0
    for kind, payload in actions:
        now += timedelta(hours=step_hours)
        if kind == "event":
            event = payload.model_copy(update={"occurred_at": now - timedelta(hours=1)})
            decision = apply(state, event, RULES, now=now)
        elif kind == "outcome":
            name, reason = payload
            item: OutcomeRecorded = outcome(name, now, reason=reason, budget=True, need=True)
            decision = apply(state, item, RULES, now=now)
        else:
            decision = sweep(state, RULES, now=now)
        yield decision
        state = decision.state


@settings(max_examples=60, deadline=None)
@given(
    ACTIONS,
    st.sampled_from(["hanako@kyoto-u.ac.jp", "x@rival-automation.example"]),
    st.integers(1, 24 * 20),
)
def test_excluded_leads_never_get_follow_ups(actions: list[Action], email: str, step: int) -> None:
    start = apply(
        LeadState.new("L1", now=T0), profile(**{**GOOD_PROFILE, "email": email}), RULES, now=T0
    )
    assert start.excluded
    for decision in play(start.state, actions, step):
        assert decision.followup is None
        assert decision.excluded
        assert decision.state.stage == "disqualified"


@settings(max_examples=80, deadline=None)
@given(ACTIONS, st.integers(1, 24 * 10))
def test_requeue_never_happens_inside_the_cooldown(actions: list[Action], step: int) -> None:
    state = apply(LeadState.new("L1", now=T0), profile(**GOOD_PROFILE), RULES, now=T0).state
    cooldown = timedelta(days=RULES.recycling.requeue_cooldown_days)
    requeues = [
        d.followup.created_at
        for d in play(state, actions, step)
        if d.followup is not None and d.followup.why_now in ("re_engaged", "revisit_due")
    ]
    assert all(b - a >= cooldown for a, b in itertools.pairwise(requeues))
