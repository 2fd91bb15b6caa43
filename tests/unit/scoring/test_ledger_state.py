"""Ledger explains every score; state round-trips through JSON; stitching; assignment."""

from __future__ import annotations

import math

import pytest

from scoring.assignment import assign
from scoring.engine import Event, apply, behaviour_score, fit_score, raw_behaviour_score, stitch
from scoring.errors import ScoringError
from scoring.ledger import score_from_ledger
from scoring.state import LeadState, decode_state, encode_state
from tests.unit.scoring.factory import (
    GOOD_PROFILE,
    RULES,
    T0,
    behaviour,
    days,
    final,
    hours,
    outcome,
    profile,
    run,
    view,
)

HISTORY: list[Event] = [
    profile(company_size=80, job_title="Engineer"),
    view("https://acme.example/pricing", T0 + hours(1)),
    view("https://acme.example/careers", T0 + hours(2)),
    behaviour("content_download", T0 - days(3), content_id="wp-buyers-guide"),
    profile(T0 + days(1), company_size=3000, job_title="部長", country="JP"),
    behaviour("unsubscribe", T0 + days(2)),
    *[view(f"https://acme.example/blog/{i}", T0 + days(2) + hours(i)) for i in range(9)],
    outcome("contacted", T0 + days(3), budget=True),
]


def test_ledger_entry_carries_what_explains_the_change() -> None:
    (decision,) = run([view("https://acme.example/pricing")])
    entry = next(e for e in decision.ledger if e.rule_id == "pricing-page")
    assert entry.entry_id == f"L1:{entry.event_id}:pricing-page"
    assert entry.rules_version == RULES.version
    assert (entry.kind, entry.raw_points, entry.points) == ("behaviour", 5.0, 5.0)
    assert 0 < entry.decayed_points <= entry.points
    assert math.isclose(entry.score_after - entry.score_before, entry.decayed_points)


def test_summing_the_ledger_reproduces_the_scores() -> None:
    decisions = run(HISTORY, now=T0 + days(3))
    state = final(decisions)
    ledger = [e for d in decisions for e in d.ledger]
    assert len({e.entry_id for e in ledger}) == len(ledger)
    for at in (T0, T0 + days(3), T0 + days(45), T0 + days(400)):
        fit, raw = score_from_ledger(ledger, at=at)
        assert fit == fit_score(state)
        assert math.isclose(raw, raw_behaviour_score(state, at), rel_tol=1e-12, abs_tol=1e-12)
        _, floored = score_from_ledger(ledger, at=at, rules=RULES)
        assert math.isclose(floored, behaviour_score(state, at, RULES), abs_tol=1e-12)


def test_state_round_trips_through_json_and_stays_small() -> None:
    state = final(run(HISTORY, now=T0 + days(3)))
    text = encode_state(state)
    assert decode_state(text) == state
    assert len(text.encode()) < 4096


def test_stitch_credits_anonymous_history_with_original_times() -> None:
    anon_events = [
        behaviour("content_download", T0 - days(10), None, anonymous_id="a-7"),
        view("https://acme.example/pricing", T0 - days(9), None, anonymous_id="a-7"),
    ]
    anon = final(run(anon_events, state=LeadState.new("anon:a-7", now=T0 - days(10))))
    lead = final(run([profile(**GOOD_PROFILE)]))
    decision = stitch(lead, "a-7", anon_events, RULES, now=T0)
    assert decision.state.linked_anonymous_ids == ["a-7"]
    # The lead scores exactly what the visitor scored, decayed from the original times.
    assert math.isclose(raw_behaviour_score(decision.state, T0), raw_behaviour_score(anon, T0))
    assert {e.lead_id for e in decision.ledger} == {"L1"}
    assert decision.state.events == 3  # the profile update and the two stitched events
    # Stitching happens once per visitor: the fold and the worker retire the visitor
    # (test_fold.py, and the worker's merged_into), so a replayed identify finds nothing.


def test_stitch_refuses_a_visitor_as_the_lead_and_a_subject_as_the_visitor_id() -> None:
    lead = LeadState.new("L1", now=T0)
    with pytest.raises(ScoringError, match="cannot stitch"):
        stitch(LeadState.new("anon:a-9", now=T0), "a-7", [], RULES, now=T0)
    with pytest.raises(ScoringError, match="cannot stitch"):
        stitch(lead, "anon:a-7", [], RULES, now=T0)


def test_stitched_history_can_make_the_lead_mql() -> None:
    anon_events = [behaviour("demo_request", T0 - hours(2), None, anonymous_id="a-8")]
    lead = final(run([profile(**GOOD_PROFILE)]))
    decision = stitch(lead, "a-8", anon_events, RULES, now=T0)
    assert decision.state.stage == "mql"
    assert decision.followup is not None
    assert decision.followup.why_now == "new_mql"


@pytest.mark.parametrize(
    ("owner", "load", "cursor", "expected"),
    [
        ("owner-1", {"a": 99, "b": 99}, 0, ("owner-1", 0)),
        (None, {}, 0, ("a", 1)),
        (None, {}, 1, ("b", 2)),
        (None, {}, 5, ("c", 0)),
        (None, {"b": 3}, 1, ("c", 0)),
        (None, {"a": 3, "b": 3, "c": 3}, 2, (None, 2)),
    ],
)
def test_assign_owner_then_round_robin_with_capacity(
    owner: str | None, load: dict[str, int], cursor: int, expected: tuple[str | None, int]
) -> None:
    assert assign(owner, ["a", "b", "c"], load, 3, cursor=cursor) == expected


def test_assign_without_reps_leaves_the_follow_up_unassigned() -> None:
    assert assign(None, [], {}, 3, cursor=4) == (None, 4)


def test_apply_after_rules_change_refits_with_ledger_entries() -> None:
    state = final(run([profile(company_size=3000)]))
    bands = [b.model_copy(update={"points": 40.0}) for b in RULES.fit.company_size[:1]]
    fit = RULES.fit.model_copy(update={"company_size": bands + RULES.fit.company_size[1:]})
    newer = RULES.model_copy(update={"version": "2026.2", "fit": fit})
    decision = apply(state, view("https://acme.example/"), newer, now=T0)
    entry = next(e for e in decision.ledger if e.kind == "fit")
    assert (entry.rule_id, entry.points, entry.rules_version) == ("size-enterprise", 10.0, "2026.2")
    assert fit_score(decision.state) == 40
