"""Behaviour score: points per event type, property rules, caps, negatives, decay, idempotency."""

from __future__ import annotations

import math

import pytest

from scoring.engine import apply, behaviour_score, raw_behaviour_score
from scoring.fold import Fold
from scoring.rules import parse_rules
from scoring.state import LeadState
from tests.unit.scoring.factory import (
    RULES,
    RULES_FILE,
    T0,
    behaviour,
    days,
    final,
    hours,
    run,
    view,
)


def credited(decision_ledger: tuple[object, ...]) -> dict[str, float]:
    return {e.rule_id: e.points for e in decision_ledger}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kind", "points"),
    [
        ("content_download", 8),
        ("webinar_attended", 12),
        ("email_click", 2),
        ("form_submit", 10),
        ("trial_signup", 30),
        ("quote_request", 45),
        ("demo_request", 50),
        ("unsubscribe", -25),
    ],
)
def test_points_per_event_type(kind: str, points: float) -> None:
    (decision,) = run([behaviour(kind)])
    assert sum(e.points for e in decision.ledger) == points
    decayed = sum(e.decayed_points for e in decision.ledger)
    assert math.isclose(raw_behaviour_score(decision.state, T0), decayed)
    # Capped rules decay from their window start (local midnight), uncapped ones from the event.
    assert abs(decayed) <= abs(points)
    assert abs(decayed) >= abs(points) * 2 ** (-(10 / 24) / 14)


def test_pricing_url_rule_adds_to_page_view() -> None:
    (decision,) = run([view("https://acme.example/ja/pricing?plan=pro")])
    assert credited(decision.ledger) == {"page-view": 1.0, "pricing-page": 5.0}


def test_url_regex_rule() -> None:
    (decision,) = run([view("https://acme.example/customers/toyota/")])
    assert credited(decision.ledger) == {"page-view": 1.0, "case-study-page": 2.0}


def test_content_id_rule_adds_bottom_of_funnel_points() -> None:
    (decision,) = run([behaviour("content_download", content_id="wp-roi-calculator")])
    assert credited(decision.ledger) == {"content-download": 8.0, "buyers-guide-download": 7.0}
    (other,) = run([behaviour("content_download", content_id="wp-trends-2026")])
    assert credited(other.ledger) == {"content-download": 8.0}


def test_careers_page_is_negative_and_floor_applies_when_reading() -> None:
    (decision,) = run([view("https://acme.example/careers/engineer")])
    assert credited(decision.ledger) == {"page-view": 1.0, "careers-page": -8.0}
    expected = -8.0 + 1.0 * 2 ** (-(10 / 24) / 14)  # the capped page view decays from midnight
    assert raw_behaviour_score(decision.state, T0) == pytest.approx(expected)
    assert behaviour_score(decision.state, T0, RULES) == 0.0


def test_without_floor_negative_scores_are_read_as_they_are() -> None:
    text = RULES_FILE.read_text(encoding="utf-8")
    rules = parse_rules(text.replace("floor = 0.0 ", "floor = -1000.0 "))
    assert rules.behaviour.floor == -1000.0
    state = final(run([view("https://acme.example/careers")], rules))
    assert behaviour_score(state, T0, rules) == pytest.approx(-7.0, abs=0.05)


def test_page_views_are_capped_per_day() -> None:
    decisions = run([view(f"https://acme.example/blog/{i}", T0 + hours(i)) for i in range(8)])
    assert [d.ledger[0].points for d in decisions] == [1, 1, 1, 1, 1, 0, 0, 0]
    assert [d.ledger[0].raw_points for d in decisions] == [1] * 8
    # The next local day is a new window.
    next_day = run([view("https://acme.example/blog/x", T0 + days(1))], state=final(decisions))
    assert next_day[0].ledger[0].points == 1


def test_capped_window_is_anchored_at_its_local_start() -> None:
    (decision,) = run([view("https://acme.example/blog", T0)])
    entry = decision.ledger[0]
    assert entry.anchor is not None
    assert entry.anchor.isoformat() == "2026-03-02T00:00:00+09:00"
    assert entry.half_life_days == 14


def test_half_life_per_event_type_and_global_and_per_rule() -> None:
    (click,) = run([behaviour("email_click")])
    (form,) = run([behaviour("form_submit")])
    (unsub,) = run([behaviour("unsubscribe")])
    assert click.ledger[0].half_life_days == 14  # per event type
    assert form.ledger[0].half_life_days == 30  # global
    assert unsub.ledger[0].half_life_days == 90  # per rule


def test_score_halves_after_one_half_life() -> None:
    state = final(run([behaviour("form_submit")]))
    assert raw_behaviour_score(state, T0 + days(30)) == pytest.approx(5.0)
    assert raw_behaviour_score(state, T0 + days(60)) == pytest.approx(2.5)


def test_late_event_decays_from_its_own_time() -> None:
    late = behaviour("form_submit", T0 - days(30))
    state = final(run([behaviour("webinar_attended", T0), late], now=T0 + days(1)))
    expected = 12 * 2 ** (-1 / 45) + 10 * 2 ** (-31 / 30)
    assert raw_behaviour_score(state, T0 + days(1)) == pytest.approx(expected)


def test_event_dated_after_the_reading_time_does_not_blow_up() -> None:
    state = final(run([behaviour("form_submit", T0 + days(3000))], now=T0))
    assert raw_behaviour_score(state, T0) == pytest.approx(10.0)


def test_replayed_event_is_a_no_op() -> None:
    event = view("https://acme.example/pricing")
    fold = Fold(RULES, now=T0)
    (first,) = fold.add(event)
    before = fold.states["L1"].copy()
    (second,) = fold.add(event)
    assert first.ledger
    assert not first.duplicate
    assert second.duplicate
    assert second.ledger == []
    assert fold.states["L1"] == before


def test_anonymous_visitor_scores_but_stays_in_awareness() -> None:
    anon = LeadState.new("anon:a-1", now=T0)
    events = [behaviour("demo_request", T0 + hours(i), None, anonymous_id="a-1") for i in range(3)]
    decisions = run(events, state=anon)
    assert final(decisions).stage == "awareness"
    assert all(d.followup is None and not d.transitions for d in decisions)
    assert raw_behaviour_score(final(decisions), T0) > 100


def test_identify_sets_email_once_and_checks_exclusion() -> None:
    decision = apply(
        LeadState.new("L1", now=T0),
        behaviour("identify", email="kid@kyoto-u.ac.jp", anonymous_id="a-9"),
        RULES,
        now=T0,
    )
    assert decision.state.profile.email == "kid@kyoto-u.ac.jp"
    assert decision.excluded


def test_recent_activities_are_bounded_and_newest_first() -> None:
    state = final(run([view(f"https://acme.example/p{i}", T0 + hours(i)) for i in range(15)]))
    assert len(state.activities) == RULES.followup.activity_memory
    assert state.activities[0].label == "/p14"
    times = [a.at for a in state.activities]
    assert times == sorted(times, reverse=True)


def test_old_cap_windows_are_pruned() -> None:
    decisions = run(
        [view("https://acme.example/a", T0), view("https://acme.example/b", T0 + days(400))]
    )
    assert list(final(decisions).caps) == ["page-view@2027-04-06"]


@pytest.mark.parametrize("half_life", [100_000.0, 1e7, 1e12])
def test_a_half_life_beyond_the_calendar_keeps_capped_events_scoring(half_life: float) -> None:
    """A rule file's "practically no decay" (a half-life of 100,000 days or more) made every
    capped event fail in the cap-window pruning (date out of range) and be dead-lettered. Its
    windows are now kept for good, and the events score."""
    behaviour = RULES.behaviour.model_copy(
        update={
            "half_life_days": half_life,
            "half_life_days_by_event": {},
            "rules": [r.model_copy(update={"half_life_days": None}) for r in RULES.behaviour.rules],
        }
    )
    rules = RULES.model_copy(update={"behaviour": behaviour, "version": f"long-{half_life:g}"})
    pages = [view(f"https://acme.example/p{i}", T0 + days(i) + hours(j)) for i in range(3)
             for j in range(8)]  # fmt: skip
    state = final(run(pages, rules, now=T0 + days(400)))
    assert state.caps  # the windows are kept
    # Three days of page views, capped at 5 points a day, decayed by at most 0.3 % in 400 days.
    assert raw_behaviour_score(state, T0 + days(400)) == pytest.approx(3 * 5.0, rel=1e-2)
