"""Stage transitions: MQL, sales outcomes, gates, recycling, re-queue, SLA, exclusion."""

from __future__ import annotations

from datetime import date

from scoring.decision import Decision
from scoring.engine import apply, sweep
from scoring.state import LeadState
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


def mql() -> LeadState:
    """A grade-A lead that requested a demo: an MQL since T0."""
    state = final(run([profile(**GOOD_PROFILE), behaviour("demo_request")]))
    assert state.stage == "mql"
    return state


def moves(decision: Decision) -> list[tuple[str, str, bool]]:
    return [(t.from_stage, t.to_stage, t.accepted) for t in decision.transitions]


def test_engaged_lead_below_threshold_is_nurturing() -> None:
    (decision,) = run([view("https://acme.example/blog/1")])
    assert moves(decision) == [("lead", "nurturing", True)]
    assert decision.followup is None


def test_priority_crossing_threshold_makes_mql_with_a_follow_up() -> None:
    decisions = run([profile(**GOOD_PROFILE), behaviour("demo_request")])
    decision = decisions[-1]
    assert moves(decision) == [("lead", "mql", True)]
    followup = decision.followup
    assert followup is not None
    assert followup.why_now == "new_mql"
    assert followup.priority > RULES.mql.threshold
    # Source "webinar": next business day at 10:00 Tokyo time.
    assert followup.due_at.isoformat() == "2026-03-03T01:00:00+00:00"
    context = followup.context
    assert (context.company, context.grade) == ("Acme KK", "A")
    assert context.job_title == "情報システム部長"
    assert context.source == "webinar"
    assert context.recent_activities[0].type == "demo_request"
    assert context.unknown_bant == ("budget", "authority", "need", "timeline")
    assert context.previous_lost_reason is None


def test_fit_weighs_more_than_behaviour_but_fit_alone_is_not_mql() -> None:
    assert RULES.priority.fit_weight > RULES.priority.behaviour_weight
    (decision,) = run([profile(**GOOD_PROFILE)])
    assert decision.state.stage == "lead"
    assert decision.followup is None


def test_appointment_set_moves_stage_and_closes_the_follow_up() -> None:
    decision = apply(mql(), outcome("appointment_set", T0 + hours(2)), RULES, now=T0 + hours(2))
    assert moves(decision) == [("mql", "appointment", True)]
    assert decision.close_followup
    assert decision.state.last_touch_at == T0 + hours(2)


def test_opportunity_gate_requires_budget_and_need() -> None:
    blocked = apply(mql(), outcome("opportunity_opened", budget=True), RULES, now=T0)
    assert moves(blocked) == [("mql", "opportunity", False)]
    assert "requires BANT need" in blocked.transitions[0].reason
    assert blocked.state.stage == "mql"
    assert blocked.state.bant.budget is True  # the outcome itself is still recorded
    passed = apply(blocked.state, outcome("opportunity_opened", need=False), RULES, now=T0)
    assert moves(passed) == [("mql", "opportunity", True)]


def test_won_that_skips_the_opportunity_gate_is_refused() -> None:
    decision = apply(mql(), outcome("won"), RULES, now=T0)
    assert moves(decision) == [("mql", "won", False)]
    assert "gate opportunity" in decision.transitions[0].reason
    assert decision.state.stage == "mql"


def test_won_becomes_customer_after_the_configured_delay() -> None:
    won = apply(mql(), outcome("won", budget=True, need=True), RULES, now=T0).state
    assert won.stage == "won"
    assert sweep(won, RULES, now=T0 + days(13)).state is won
    later = sweep(won, RULES, now=T0 + days(14))
    assert moves(later) == [("won", "customer", True)]


def test_backward_outcome_is_refused() -> None:
    opp = apply(mql(), outcome("opportunity_opened", budget=True, need=True), RULES, now=T0)
    decision = apply(opp.state, outcome("appointment_set"), RULES, now=T0)
    assert moves(decision) == [("opportunity", "appointment", False)]


def test_lost_recycles_with_reason_and_nurture_track() -> None:
    at = T0 + days(3)
    decision = apply(mql(), outcome("lost", at, reason="no_budget"), RULES, now=at)
    assert moves(decision) == [("mql", "recycled", True)]
    assert decision.recycle is not None
    assert decision.recycle.reason == "no_budget"
    assert decision.recycle.track == "nurture-roi-and-budget"
    assert decision.recycle.since == at
    assert decision.recycle.revisit_on is None
    assert decision.close_followup


def test_timing_without_date_revisits_after_the_default_delay() -> None:
    decision = apply(mql(), outcome("lost", reason="timing"), RULES, now=T0)
    assert decision.recycle is not None
    assert decision.recycle.revisit_on == date(2026, 5, 31)  # 90 days after 2026-03-02


def test_lost_without_reason_uses_the_default_reason() -> None:
    decision = apply(mql(), outcome("nurture"), RULES, now=T0)
    assert decision.recycle is not None
    assert decision.recycle.reason == "timing"


def test_revisit_date_reached_requeues_the_lead() -> None:
    lost = outcome("lost", reason="timing", revisit_on=date(2026, 6, 1))
    recycled = apply(mql(), lost, RULES, now=T0).state
    assert sweep(recycled, RULES, now=T0 + days(89)).state is recycled
    decision = sweep(recycled, RULES, now=T0 + days(91))
    assert moves(decision) == [("recycled", "mql", True)]
    assert decision.followup is not None
    assert decision.followup.why_now == "revisit_due"
    assert decision.followup.context.previous_lost_reason == "timing"


def test_re_engagement_requeues_and_cooldown_prevents_a_second_requeue() -> None:
    recycled = apply(mql(), outcome("lost", reason="no_budget"), RULES, now=T0).state
    first = run(
        [behaviour("form_submit", T0 + days(5)), behaviour("webinar_attended", T0 + days(5))],
        state=recycled,
    )
    assert first[0].followup is None  # 10 < 12
    assert first[1].followup is not None
    assert first[1].followup.why_now == "re_engaged"
    requeued_at = first[1].state.last_requeue_at
    lost_again = apply(
        first[1].state, outcome("lost", T0 + days(6), reason="no_budget"), RULES, now=T0 + days(6)
    )
    inside = run([behaviour("trial_signup", T0 + days(7))], state=lost_again.state)
    assert inside[0].followup is None
    assert inside[0].state.stage == "recycled"
    after = sweep(inside[0].state, RULES, now=T0 + days(20))
    assert after.followup is not None
    assert requeued_at is not None
    assert after.followup.created_at - requeued_at >= days(RULES.recycling.requeue_cooldown_days)


def test_events_before_the_recycle_do_not_count_as_re_engagement() -> None:
    recycled = apply(
        mql(), outcome("lost", T0 + days(2), reason="no_budget"), RULES, now=T0 + days(2)
    ).state
    late_old = run([behaviour("trial_signup", T0 + days(1))], state=recycled, now=T0 + days(2))
    assert late_old[0].state.stage == "recycled"


def test_sla_escalates_then_recycles_uncontacted() -> None:
    state = mql()
    assert sweep(state, RULES, now=T0 + hours(23)).state is state
    escalated = sweep(state, RULES, now=T0 + hours(25))
    assert escalated.followup is not None
    assert escalated.followup.why_now == "sla_breach"
    assert escalated.followup.due_at == T0 + hours(25)
    assert sweep(escalated.state, RULES, now=T0 + hours(26)).followup is None  # once only
    recycled = sweep(escalated.state, RULES, now=T0 + days(10))
    assert moves(recycled) == [("mql", "recycled", True)]
    assert recycled.recycle is not None
    assert recycled.recycle.reason == "uncontacted"
    assert recycled.recycle.since == T0 + hours(120)  # when the SLA expired, not when swept
    assert recycled.recycle.track == "nurture-reactivation"


def test_a_sales_touch_stops_the_sla_clock_but_no_answer_does_not() -> None:
    no_answer = apply(mql(), outcome("no_answer", T0 + hours(1)), RULES, now=T0 + hours(1))
    assert not no_answer.close_followup
    assert sweep(no_answer.state, RULES, now=T0 + days(6)).state.stage == "recycled"
    contacted = apply(mql(), outcome("contacted", T0 + hours(1)), RULES, now=T0 + hours(1))
    assert contacted.close_followup
    assert sweep(contacted.state, RULES, now=T0 + days(6)).state.stage == "mql"


def test_disqualified_lead_never_gets_a_follow_up_again() -> None:
    out = apply(mql(), outcome("disqualified", reason="partner"), RULES, now=T0)
    assert out.excluded
    assert moves(out) == [("mql", "disqualified", True)]
    later = run(
        [behaviour("demo_request", T0 + days(1)), behaviour("quote_request", T0 + days(2))],
        state=out.state,
    )
    assert all(d.followup is None and d.excluded for d in later)
    assert later[-1].ledger  # still scored, for explanation
    refused = apply(later[-1].state, outcome("appointment_set"), RULES, now=T0 + days(3))
    assert moves(refused) == [("disqualified", "appointment", False)]
    assert sweep(refused.state, RULES, now=T0 + days(400)).followup is None


def test_sweep_without_anything_due_changes_nothing() -> None:
    state = final(run([profile(**GOOD_PROFILE)]))
    before = state.copy()
    decision = sweep(state, RULES, now=T0 + hours(1))
    assert not decision.changed
    assert decision.state == before
    assert decision.ledger == []
    assert decision.transitions == []


def test_bant_merge_latest_non_null_wins() -> None:
    state = mql()
    for event in (outcome("contacted", budget=True, need=True), outcome("contacted", budget=False)):
        state = apply(state, event, RULES, now=T0).state
    assert (state.bant.budget, state.bant.need, state.bant.authority) == (False, True, None)
