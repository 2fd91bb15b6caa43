"""The engine's shortcuts change nothing: memo tables, the draft's deferred copies, cheap copies."""

from __future__ import annotations

import pytest

from scoring import memo
from scoring.behaviour import matches, matching_rules, remember
from scoring.decay import DecayGroup, read
from scoring.engine import apply, sweep
from scoring.fit import evaluate_fit, exclusion_match
from scoring.rules import RuleSet
from scoring.state import Profile
from tests.unit.scoring.factory import (
    GOOD_PROFILE,
    RULES,
    T0,
    days,
    final,
    hours,
    profile,
    run,
    view,
)


def test_fit_follows_a_changed_rule_set_for_the_same_profile() -> None:
    p = Profile(job_title="Marketing Director", company_size=500)
    before = {x.attribute: x for x in evaluate_fit(p, RULES.fit)}
    director = RULES.fit.job_title[1].model_copy(update={"points": 99.0})
    fit = RULES.fit.model_copy(
        update={"job_title": [RULES.fit.job_title[0], director, *RULES.fit.job_title[2:]]}
    )
    after = {x.attribute: x for x in evaluate_fit(p, fit)}
    assert (before["job_title"].points, after["job_title"].points) == (24.0, 99.0)
    assert after["company_size"] == before["company_size"]
    # An equal profile that is another object gets the same (shared) parts.
    again = evaluate_fit(Profile(**p.as_dict()), RULES.fit)
    assert all(a is b for a, b in zip(again, evaluate_fit(p, RULES.fit), strict=True))


def test_unknown_and_unmatched_sizes_stay_apart_in_the_memo() -> None:
    assert evaluate_fit(Profile(), RULES.fit)[0].known is False
    parts = evaluate_fit(Profile(company_size=0), RULES.fit)
    assert (parts[0].known, parts[0].rule_id) == (True, "size-micro")
    no_micro = RULES.fit.model_copy(update={"company_size": RULES.fit.company_size[:3]})
    unmatched = evaluate_fit(Profile(company_size=10), no_micro)[0]
    assert (unmatched.known, unmatched.rule_id) == (True, None)


def test_exclusion_takes_the_first_rule_in_file_order_across_criteria() -> None:
    rules = RULES.model_validate(
        {
            **RULES.model_dump(),
            "exclusion": {
                "rules": [
                    {"id": "a", "reason": "partner", "company_keywords": ["Acme"]},
                    {"id": "b", "reason": "student", "email_domains": ["ac.jp"]},
                ]
            },
        }
    )
    both = Profile(email="x@u.ac.jp", company_name="Acme KK")
    assert exclusion_match(both, rules).id == "a"  # type: ignore[union-attr]
    assert exclusion_match(Profile(email="x@u.ac.jp"), rules).id == "b"  # type: ignore[union-attr]
    assert exclusion_match(Profile(email="x@acme.example"), rules) is None


def test_behaviour_matching_follows_a_changed_rule_set() -> None:
    event = view("https://acme.example/pricing")
    ids = [r.id for r in matching_rules(event, RULES.behaviour)]
    assert ids == ["page-view", "pricing-page"]
    assert all(matches(r, event) for r in matching_rules(event, RULES.behaviour))
    rules = [r for r in RULES.behaviour.rules if r.id != "pricing-page"]
    fewer = RULES.behaviour.model_copy(update={"rules": rules})
    assert [r.id for r in matching_rules(event, fewer)] == ["page-view"]


def test_full_memo_tables_are_cleared_and_results_stay_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memo, "MAX_ENTRIES", 2)
    titles = ["VP of Sales", "営業部長", "Engineer", "VP of Sales", "Intern", "営業部長"]
    got = [evaluate_fit(Profile(job_title=t), RULES.fit)[2].rule_id for t in titles]
    assert got == [
        "title-executive",
        "title-director",
        "title-staff",
        "title-executive",
        None,
        "title-director",
    ]
    assert len(memo.memo_for(RULES.fit, "job_title")) <= 2


def test_a_late_activity_is_remembered_in_time_order() -> None:
    events = [view(f"https://acme.example/p{i}", T0 + hours(i)) for i in (3, 1, 4, 2)]
    state = final(run(events))
    assert [a.label for a in state.activities] == ["/p4", "/p3", "/p2", "/p1"]
    remember(state.activities, view("https://acme.example/p9", T0 + hours(9)), 1.0, 2)
    assert [a.label for a in state.activities] == ["/p9", "/p4"]
    remember(state.activities, view("https://acme.example/p5", T0 + hours(5)), 1.0, 2)
    assert [a.label for a in state.activities] == ["/p9", "/p5"]  # a late one, in its place


def test_reading_decays_each_group_from_its_reference() -> None:
    one = [DecayGroup(half_life_days=1.0, ref=T0, value=8.0)]
    two = [DecayGroup(half_life_days=1.0, ref=T0, value=8.0)]
    assert read(one, T0 + days(1)) == pytest.approx(4.0)
    assert read(one, T0 + days(2)) == pytest.approx(2.0)
    assert read(two, T0 + days(3)) == pytest.approx(1.0)
    assert read([*one, *two], T0 + days(1)) == pytest.approx(8.0)
    one[0].value = 16.0  # a working state's accumulator changes in place: no stale reading
    assert read(one, T0 + days(1)) == pytest.approx(8.0)


def test_apply_stamps_and_sweep_leaves_an_unchanged_state_alone() -> None:
    state = final(run([profile(**GOOD_PROFILE)]))
    assert (state.rules_version, state.updated_at) == (RULES.version, T0)
    later = T0 + hours(1)
    decision = sweep(state, RULES, now=later)
    assert not decision.changed
    assert (state.rules_version, state.updated_at) == (RULES.version, T0)
    other = RuleSet.model_validate({**RULES.model_dump(), "version": "2026.9"})
    decision = apply(state, view("https://acme.example/"), other, now=later)
    assert (decision.state.rules_version, decision.state.updated_at) == ("2026.9", later)
