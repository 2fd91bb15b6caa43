"""Playbook scenarios, table-driven: each reads like a page of The Model's playbook.

A scenario is a profile, a list of steps (an event, or ``"sweep"``) each at a time offset, and
what should be true at the end: the stage, whether the lead ever reached a call list and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from scoring.decision import Decision, FollowupDecision
from scoring.engine import Event, apply, sweep
from scoring.state import LeadState
from tests.unit.scoring.factory import (
    GOOD_PROFILE,
    RULES,
    T0,
    behaviour,
    days,
    hours,
    outcome,
    profile,
    view,
)

Step = tuple[timedelta, Event | str]
PRICING = "https://acme.example/pricing"


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: list[Step]
    stage: str
    call_list: list[str] = field(default_factory=list)  # why_now of every follow-up, in order
    previous_lost_reason: str | None = None
    due_within: timedelta | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def at(offset: timedelta, item: Event | str) -> Step:
    return (offset, item)


def lost_then(reason: str, *steps: Step, revisit: date | None = None) -> list[Step]:
    """A demo-requesting grade-A lead, lost at day 2 with ``reason``, then ``steps``."""
    return [
        at(days(0), profile(**GOOD_PROFILE)),
        at(hours(1), behaviour("demo_request", T0 + hours(1))),
        at(days(2), outcome("lost", T0 + days(2), reason=reason, revisit_on=revisit)),
        *steps,
    ]


def download(when: datetime) -> Event:
    return behaviour("content_download", when, content_id="wp-buyers-guide")


SCENARIOS = [
    Scenario(
        "a student who downloads ten whitepapers never reaches a call list",
        [
            at(days(0), profile(email="ken@keio.ac.jp", job_title="学生", company_size=40000)),
            *[
                at(days(i // 2) + hours(i), download(T0 + days(i // 2) + hours(i)))
                for i in range(10)
            ],
            at(days(6), behaviour("demo_request", T0 + days(6))),
            at(days(30), "sweep"),
        ],
        stage="disqualified",
    ),
    Scenario(
        "a lead lost for no budget who returns to pricing three times in a week is re-queued",
        lost_then(
            "no_budget",
            at(days(20), view(PRICING, T0 + days(20))),
            at(days(22), view(PRICING, T0 + days(22))),
            at(days(24), view(PRICING, T0 + days(24))),
        ),
        stage="mql",
        call_list=["new_mql", "re_engaged"],
        previous_lost_reason="no_budget",
    ),
    Scenario(
        "pricing once after a no-budget loss is not enough to call again",
        lost_then("no_budget", at(days(20), view(PRICING, T0 + days(20))), at(days(40), "sweep")),
        stage="recycled",
        call_list=["new_mql"],
    ),
    Scenario(
        "a VP at an enterprise who requests a demo is called within one business hour",
        [
            at(
                days(0),
                profile(
                    **{**GOOD_PROFILE, "job_title": "VP Engineering", "source": "demo_request"}
                ),
            ),
            at(hours(1), behaviour("demo_request", T0 + hours(1))),
        ],
        stage="mql",
        call_list=["new_mql"],
        due_within=hours(1),
    ),
    Scenario(
        "a competitor reading pricing every day never reaches a call list",
        [
            at(days(0), profile(**{**GOOD_PROFILE, "email": "kenji@mabot.example.jp"})),
            *[at(days(i), view(PRICING, T0 + days(i))) for i in range(14)],
            at(days(15), behaviour("quote_request", T0 + days(15))),
        ],
        stage="disqualified",
    ),
    Scenario(
        "a well-fitting job seeker reading careers pages stays a plain lead",
        [
            at(days(0), profile(**GOOD_PROFILE)),
            *[
                at(hours(i), view("https://acme.example/careers/sales", T0 + hours(i)))
                for i in range(1, 6)
            ],
            at(hours(7), behaviour("content_download", T0 + hours(7))),
        ],
        stage="lead",
    ),
    Scenario(
        "an MQL nobody calls is escalated, then recycled to reactivation nurture",
        [
            at(days(0), profile(**GOOD_PROFILE)),
            at(hours(1), behaviour("demo_request", T0 + hours(1))),
            at(hours(30), "sweep"),
            at(days(7), "sweep"),
        ],
        stage="recycled",
        call_list=["new_mql", "sla_breach"],
        extra={"recycle_track": "nurture-reactivation"},
    ),
    Scenario(
        "'call me in three months' comes back on the revisit date",
        lost_then(
            "timing",
            at(days(60), "sweep"),
            at(days(93), "sweep"),
            revisit=date(2026, 6, 1),
        ),
        stage="mql",
        call_list=["new_mql", "revisit_due"],
        previous_lost_reason="timing",
    ),
    Scenario(
        "an opportunity without a known budget is refused until the rep asks",
        [
            at(days(0), profile(**GOOD_PROFILE)),
            at(hours(1), behaviour("demo_request", T0 + hours(1))),
            at(days(1), outcome("appointment_set", T0 + days(1))),
            at(days(3), outcome("opportunity_opened", T0 + days(3), need=True)),
        ],
        stage="appointment",
        call_list=["new_mql"],
        extra={"refused": ("appointment", "opportunity")},
    ),
]


def play(scenario: Scenario) -> tuple[LeadState, list[Decision]]:
    state = LeadState.new("L1", now=T0)
    decisions = []
    for offset, item in scenario.steps:
        now = T0 + offset
        decision = (
            sweep(state, RULES, now=now)
            if item == "sweep"
            else (
                apply(state, item, RULES, now=now)  # type: ignore[arg-type]
            )
        )
        decisions.append(decision)
        state = decision.state
    return state, decisions


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_playbook(scenario: Scenario) -> None:
    state, decisions = play(scenario)
    followups: list[FollowupDecision] = [d.followup for d in decisions if d.followup]
    assert state.stage == scenario.stage
    assert [f.why_now for f in followups] == scenario.call_list
    if scenario.previous_lost_reason:
        assert followups[-1].context.previous_lost_reason == scenario.previous_lost_reason
        assert followups[-1].context.unknown_bant  # what to ask about
    if scenario.due_within is not None:
        assert followups[-1].due_at - followups[-1].created_at <= scenario.due_within
    if "recycle_track" in scenario.extra:
        recycles = [d.recycle for d in decisions if d.recycle]
        assert recycles[-1].track == scenario.extra["recycle_track"]
    if "refused" in scenario.extra:
        refused = [
            (t.from_stage, t.to_stage) for d in decisions for t in d.transitions if not t.accepted
        ]
        assert refused == [scenario.extra["refused"]]


def test_re_queued_lead_context_shows_the_pricing_visits() -> None:
    _, decisions = play(SCENARIOS[1])
    followup = decisions[-1].followup
    assert followup is not None
    assert [a.label for a in followup.context.recent_activities[:3]] == ["/pricing"] * 3
    assert followup.context.grade == "A"
