"""The fold shared by ``leadcycle replay``, its benchmark and the integration oracle."""

from __future__ import annotations

import math

from scoring.fold import Fold, gained_since, over_mql_threshold, rescore, same_scoring
from scoring.ledger import score_from_ledger
from scoring.scores import raw_behaviour_score
from tests.unit.scoring.factory import RULES, T0, behaviour, days, hours, outcome, profile, view

NOW = T0 + days(30)
V2 = RULES.model_copy(update={"version": "v2"})


def journey() -> list:  # type: ignore[type-arg]
    """An anonymous visitor browses, identifies as L1, then is a known lead who gets lost."""
    return [
        view("/pricing", T0, lead=None, anonymous_id="a1"),
        view("/product", T0 + hours(1), lead=None, anonymous_id="a1"),
        behaviour("identify", T0 + hours(2), "L1", anonymous_id="a1", email="x@corp.example"),
        view("/pricing", T0 + hours(3), lead=None, anonymous_id="a1"),  # after the link
        profile(T0 + hours(4), company_size=500, industry="software", job_title="VP Sales"),
        outcome("lost", T0 + days(2), reason="timing"),
        view("/case-studies", T0 + days(3)),
    ]


def test_stitching_credits_the_visitor_once_and_retires_it() -> None:
    fold = Fold(RULES, now=NOW)
    entries = [e for event in journey() for d in fold.add(event) for e in d.ledger]
    lead = fold.leads()["L1"]
    assert set(fold.states) == {"L1"}
    assert fold.merged == {"anon:a1": "L1"}
    assert lead.events == 7
    mine = [e for e in entries if e.lead_id == "L1"]
    fit, behaviour_ = score_from_ledger(mine, at=NOW)
    assert math.isclose(fit, lead.fit_score)
    assert math.isclose(behaviour_, raw_behaviour_score(lead, NOW), rel_tol=1e-12)


def test_known_links_and_assigned_identifies_give_the_same_lead() -> None:
    events = journey()
    plain = Fold(RULES, now=NOW)
    for event in events:
        plain.add(event)
    seeded = Fold(RULES, now=NOW, links={"a1": "L1"})
    for event in events:
        seeded.add(event)
    assert seeded.merged == {}  # the visitor's events went straight to the lead
    a, b = plain.leads()["L1"], seeded.leads()["L1"]
    assert a.events == b.events == 7
    assert math.isclose(raw_behaviour_score(a, NOW), raw_behaviour_score(b, NOW), rel_tol=1e-12)

    by_email = behaviour("identify", T0, None, anonymous_id="a9", email="x@corp.example")
    assert Fold(RULES, now=NOW).subject(by_email) == "email:x@corp.example"
    assert Fold(RULES, now=NOW, assigned={by_email.event_id: "L1"}).subject(by_email) == "L1"


def test_rescore_takes_scores_and_keeps_lifecycle() -> None:
    events = journey()
    stored_fold, replay_fold = Fold(RULES, now=NOW), Fold(V2, now=NOW + days(1))
    for event in events:
        stored_fold.add(event)
    entries = [e for event in events for d in replay_fold.add(event) for e in d.ledger]
    stored, replayed = stored_fold.leads()["L1"], replay_fold.leads()["L1"]
    assert stored.recycle is not None
    gained = gained_since([e for e in entries if e.lead_id == "L1"], stored.recycle.since)
    new = rescore(stored, replayed, now=NOW + days(1), gained=gained)
    assert new.rules_version == "v2"
    assert (new.stage, new.stage_since, new.bant, new.events) == (
        stored.stage, stored.stage_since, stored.bant, stored.events
    )  # fmt: skip
    assert new.recycle is not None
    assert (new.recycle.reason, new.recycle.since, new.recycle.revisit_on, new.recycle.track) == (
        stored.recycle.reason, stored.recycle.since, stored.recycle.revisit_on, stored.recycle.track
    )  # fmt: skip
    # Only the case-studies view, three days in, happened after the recycle (day 2).
    assert len(new.recycle.gained) == 1
    assert new.recycle.gained == stored.recycle.gained  # same points under v2
    assert not same_scoring(stored, new)  # the version differs
    assert same_scoring(new, rescore(new, replayed, now=NOW + days(2), gained=gained))


def test_mql_threshold_reads_priority_and_minimum_behaviour() -> None:
    fold = Fold(RULES, now=NOW)
    for event in journey():
        fold.add(event)
    lead = fold.leads()["L1"]
    low = RULES.model_copy(
        update={"mql": RULES.mql.model_copy(update={"threshold": 0.0, "min_behaviour": 0.0})}
    )
    high = RULES.model_copy(update={"mql": RULES.mql.model_copy(update={"threshold": 1e6})})
    assert over_mql_threshold(lead, NOW, low)
    assert not over_mql_threshold(lead, NOW, high)
    needs_behaviour = low.model_copy(
        update={"mql": low.mql.model_copy(update={"min_behaviour": 1e6})}
    )
    assert not over_mql_threshold(lead, NOW, needs_behaviour)
