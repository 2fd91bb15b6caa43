"""Attribute (fit) score: bands, keywords (English and Japanese), unknowns, grades, exclusion."""

from __future__ import annotations

import pytest

from scoring.engine import apply, fit_score
from scoring.fit import evaluate_fit, exclusion_match, grade
from scoring.matching import domain_matches, has_keyword
from scoring.state import LeadState, Profile
from tests.unit.scoring.factory import GOOD_PROFILE, RULES, T0, final, profile, run


@pytest.mark.parametrize(
    ("title", "rule_id"),
    [
        ("VP of Sales", "title-executive"),
        ("Vice President, Marketing", "title-executive"),
        ("代表取締役社長", "title-executive"),
        ("取締役", "title-executive"),
        ("営業本部長", "title-executive"),
        ("Marketing Director", "title-director"),
        ("Head of IT", "title-director"),
        ("情報システム部長", "title-director"),
        ("担当部長", "title-director"),  # 部長 wins over 担当: the more senior rule comes first
        ("\uff24\uff49\uff52\uff45\uff43\uff54\uff4f\uff52", "title-director"),  # full width
        ("Sales Manager", "title-manager"),
        ("営業課長", "title-manager"),
        ("マーケティング担当", "title-staff"),
        ("Data Analyst", "title-staff"),
        ("MVP Evangelist", None),  # "VP" must be a whole word
        ("Consultant", None),
    ],
)
def test_job_title_seniority_english_and_japanese(title: str, rule_id: str | None) -> None:
    parts = {p.attribute: p for p in evaluate_fit(Profile(job_title=title), RULES.fit)}
    assert parts["job_title"].rule_id == rule_id
    assert parts["job_title"].known is True


@pytest.mark.parametrize(
    ("size", "rule_id", "points"),
    [
        (0, "size-micro", 0),
        (29, "size-micro", 0),
        (30, "size-smb", 10),
        (199, "size-smb", 10),
        (200, "size-midmarket", 22),
        (999, "size-midmarket", 22),
        (1000, "size-enterprise", 30),
        (250_000, "size-enterprise", 30),
    ],
)
def test_company_size_bands(size: int, rule_id: str, points: float) -> None:
    parts = {p.attribute: p for p in evaluate_fit(Profile(company_size=size), RULES.fit)}
    assert (parts["company_size"].rule_id, parts["company_size"].points) == (rule_id, points)


def test_industry_country_and_source_rules() -> None:
    parts = {
        p.attribute: p
        for p in evaluate_fit(
            Profile(industry="Financial services / 金融", country="日本", source="demo_request"),
            RULES.fit,
        )
    }
    assert parts["industry"].rule_id == "industry-adjacent"
    assert parts["country"].rule_id == "country-home"
    assert parts["source"].rule_id == "source-high-intent"


def test_missing_attributes_score_zero_and_are_reported_unknown() -> None:
    state = final(run([profile(job_title="Sales Manager")]))
    assert fit_score(state) == 15
    assert state.unknown_attributes() == ["company_size", "industry", "country", "source"]


def test_present_but_unmatched_attribute_is_known_with_no_points() -> None:
    state = final(run([profile(country="Brazil")]))
    part = next(p for p in state.fit if p.attribute == "country")
    assert (part.known, part.rule_id, part.points) == (True, None, 0.0)
    assert "country" not in state.unknown_attributes()


@pytest.mark.parametrize(
    ("score", "expected"), [(100, "A"), (70, "A"), (69.9, "B"), (50, "B"), (30, "C"), (29, "D")]
)
def test_grade_cut_offs(score: float, expected: str) -> None:
    assert grade(score, RULES.fit.grades) == expected


def test_profile_change_ledger_removes_old_band_and_adds_new() -> None:
    first, second = run([profile(company_size=50), profile(company_size=5000)])
    assert [(e.rule_id, e.points) for e in first.ledger] == [("size-smb", 10.0)]
    assert [(e.rule_id, e.raw_points, e.points) for e in second.ledger] == [
        ("size-smb", -10.0, -10.0),
        ("size-enterprise", 30.0, 30.0),
    ]
    assert second.ledger[-1].score_after == fit_score(second.state) == 30


def test_profile_field_sent_as_null_clears_it() -> None:
    _, cleared = run([profile(country="JP"), profile(country=None)])
    assert fit_score(cleared.state) == 0
    assert [(e.rule_id, e.points) for e in cleared.ledger] == [("country-home", -10.0)]


def test_good_profile_is_grade_a() -> None:
    state = final(run([profile(**GOOD_PROFILE)]))
    assert state.fit_grade == "A"
    assert fit_score(state) == 30 + 20 + 24 + 10 + 6


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"email": "hanako@u-tokyo.ac.jp"}, "student"),
        ({"email": "sam@mit.edu"}, "student"),
        ({"email": "jo@ox.ac.uk"}, "student"),
        ({"job_title": "Marketing Intern"}, "student"),
        ({"job_title": "大学院生"}, "student"),
        ({"email": "spy@rival-automation.example"}, "competitor"),
        ({"company_name": "LeadForge Inc."}, "competitor"),
        ({"email": "a@partner-si.example.co.jp"}, "partner"),
    ],
)
def test_exclusion_rules(fields: dict[str, str], reason: str) -> None:
    rule = exclusion_match(Profile(**fields), RULES)
    assert rule is not None
    assert rule.reason == reason


def test_international_sales_director_is_not_an_intern() -> None:
    assert exclusion_match(Profile(job_title="International Sales Director"), RULES) is None
    assert not has_keyword("International", ["intern"])
    assert not domain_matches("a@education-corp.example", ["edu"])


def test_excluding_profile_disqualifies_for_good() -> None:
    decisions = run([profile(**GOOD_PROFILE), profile(email="taro@rival-automation.example")])
    last = decisions[-1]
    assert last.excluded
    assert last.close_followup
    assert last.state.stage == "disqualified"
    assert last.state.exclusion_reason == "competitor"
    # A later, clean profile does not bring the lead back.
    again = apply(last.state, profile(email="taro@acme.example.co.jp"), RULES, now=T0)
    assert again.state.excluded
    assert again.state.stage == "disqualified"


def test_new_state_is_stage_lead_or_awareness() -> None:
    assert LeadState.new("L9", now=T0).stage == "lead"
    anon = LeadState.new("anon:abc", now=T0)
    assert (anon.stage, anon.anonymous) == ("awareness", True)
