"""One lead per person: an email lead merged into the CRM lead with the same email."""

from __future__ import annotations

import math

import pytest

from events import BehaviourTracked
from scoring.decay import read
from scoring.engine import Event
from scoring.errors import ScoringError
from scoring.fold import Fold
from scoring.ledger import score_from_ledger
from scoring.merge import merge
from scoring.scores import raw_behaviour_score
from scoring.state import LeadState
from tests.unit.scoring.factory import (
    GOOD_PROFILE,
    RULES,
    T0,
    behaviour,
    days,
    hours,
    profile,
    view,
)

EMAIL = GOOD_PROFILE["email"]
NOW = T0 + days(3)


def visitor_journey() -> list[BehaviourTracked]:
    """A visitor browses, identifies by email only, and keeps browsing (the email lead)."""
    return [
        view("https://acme.example/pricing", T0, lead=None, anonymous_id="v1"),
        behaviour("identify", T0 + hours(1), None, anonymous_id="v1", email=EMAIL),
        *(
            view(f"https://acme.example/p{i}", T0 + hours(2 + i), lead=None, anonymous_id="v1")
            for i in range(8)  # page views: their daily cap is reached
        ),
        behaviour("content_download", T0 + hours(20), None, anonymous_id="v1"),
    ]


def crm_events() -> list[Event]:
    return [
        profile(T0 + hours(3), lead="CRM-7", **GOOD_PROFILE),
        *(view(f"https://acme.example/q{i}", T0 + hours(4 + i), lead="CRM-7") for i in range(8)),
    ]


def folded(events: list[Event]) -> tuple[Fold, list]:  # type: ignore[type-arg]
    fold = Fold(RULES, now=NOW)
    ledger = [e for event in events for d in fold.add(event) for e in d.ledger]
    return fold, ledger


@pytest.mark.parametrize("crm_first", [False, True])
def test_identify_and_crm_give_one_lead_whichever_comes_first(crm_first: bool) -> None:
    web, crm = visitor_journey(), crm_events()
    fold, ledger = folded([*crm, *web] if crm_first else [*web, *crm])
    assert [s for s in fold.states if not s.startswith("anon:")] == ["CRM-7"]
    lead = fold.states["CRM-7"]
    assert lead.events == len(web) + len(crm)
    assert lead.profile.email == EMAIL
    assert lead.linked_anonymous_ids == ["v1"]
    # The ledger of both lead ids (the email lead's moves to the survivor) reproduces its
    # scores; the visitor's own entries stay with the visitor, its events were re-applied.
    mine = [e for e in ledger if not e.lead_id.startswith("anon:")]
    assert {e.lead_id for e in mine} == {"CRM-7"} if crm_first else {"CRM-7", f"email:{EMAIL}"}
    fit, raw = score_from_ledger(mine, at=NOW)
    assert math.isclose(fit, lead.fit_score, abs_tol=1e-9)
    assert math.isclose(raw, raw_behaviour_score(lead, NOW), rel_tol=1e-9, abs_tol=1e-9)
    if not crm_first:
        assert fold.merges == [(f"email:{EMAIL}", "CRM-7")]


def test_either_order_scores_the_same_as_one_lead_all_along() -> None:
    web, crm = visitor_journey(), crm_events()
    one, _ = folded([*crm, *web])  # the identify finds the CRM lead: no merge needed
    two, _ = folded([*web, *crm])  # the email lead came first: merged
    a, b = one.states["CRM-7"], two.states["CRM-7"]
    assert math.isclose(a.fit_score, b.fit_score)
    for at in (NOW, NOW + days(30)):
        assert math.isclose(read(a.decay, at), read(b.decay, at), rel_tol=1e-9)
    assert a.caps == b.caps  # each window credited up to its cap once
    assert a.events == b.events


def test_two_leads_over_one_cap_are_credited_the_cap_once() -> None:
    email_lead = LeadState.new(f"email:{EMAIL}", now=T0)
    crm = LeadState.new("CRM-7", now=T0)
    f1, f2 = Fold(RULES, now=NOW), Fold(RULES, now=NOW)
    f1.states[email_lead.lead_id], f2.states[crm.lead_id] = email_lead, crm
    for i in range(6):
        f1.add(view(f"https://acme.example/a{i}", T0 + hours(i), lead=email_lead.lead_id))
        f2.add(view(f"https://acme.example/b{i}", T0 + hours(i), lead="CRM-7"))
    both = read(crm.decay, NOW) + read(email_lead.decay, NOW)
    decision = merge(crm, email_lead, RULES, now=NOW)
    adjustments = [e for e in decision.ledger if e.kind == "behaviour"]
    assert adjustments  # the page-view window was credited twice its cap
    assert all(e.points < 0 for e in adjustments)
    assert read(crm.decay, NOW) < both
    window = next(k for k in crm.caps if k.startswith("page-view@"))
    raw, credited = crm.caps[window]
    assert credited == 5.0  # the sample rules cap page views at 5 a day
    assert raw > credited


def test_the_survivor_keeps_its_profile_and_takes_a_later_stage() -> None:
    email_lead = LeadState.new(f"email:{EMAIL}", now=T0)
    email_lead.profile.merge({"email": EMAIL, "country": "JP", "job_title": "Intern"})
    email_lead.stage = "mql"
    crm = LeadState.new("CRM-7", now=T0)
    crm.profile.merge({"email": EMAIL, "job_title": "CTO"})
    decision = merge(crm, email_lead, RULES, now=NOW)
    assert (crm.profile.job_title, crm.profile.country) == ("CTO", "JP")
    assert crm.stage == "mql"
    assert [(t.from_stage, t.to_stage) for t in decision.transitions] == [("lead", "mql")]
    assert decision.followup is not None  # an MQL must be on the call list


def test_visitors_are_stitched_not_merged() -> None:
    with pytest.raises(ScoringError, match="cannot merge"):
        merge(LeadState.new("CRM-7", now=T0), LeadState.new("anon:v1", now=T0), RULES, now=NOW)


def test_two_crm_leads_with_one_email_are_duplicates_not_merged() -> None:
    fold, _ = folded(
        [profile(T0, lead="CRM-1", email=EMAIL), profile(T0 + hours(1), lead="CRM-2", email=EMAIL)]
    )
    assert set(fold.states) == {"CRM-1", "CRM-2"}
    assert fold.merges == []
    assert fold.by_email[EMAIL] == "CRM-1"
