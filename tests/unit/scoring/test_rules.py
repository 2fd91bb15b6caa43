"""Rule files: the sample loads; invalid files fail at load, naming the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from scoring.errors import RulesError, ScoringError
from scoring.rules import load_rules, parse_rules
from tests.unit.scoring.factory import RULES, RULES_FILE

TEXT = RULES_FILE.read_text(encoding="utf-8")


def test_sample_rule_set_loads_with_a_version() -> None:
    rules = load_rules(RULES_FILE)
    assert rules.version == "2026.1-default"
    assert rules.priority.fit_weight > rules.priority.behaviour_weight
    assert rules.calendar.timezone == "Asia/Tokyo"
    assert {r.event for r in rules.behaviour.rules} >= {
        "page_view",
        "content_download",
        "webinar_attended",
        "trial_signup",
        "quote_request",
        "demo_request",
        "email_click",
        "form_submit",
        "unsubscribe",
    }


def test_sample_has_negative_rules_for_careers_and_unsubscribe() -> None:
    negative = {r.id for r in RULES.behaviour.rules if r.points < 0}
    assert negative == {"careers-page", "unsubscribe"}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'id = "page-view"\nevent = "page_view"\npoints = 1\n',
            'id = "page-view"\nevent = "page_view"\npoints = "lots"\n',
            "behaviour.rules[0].points: Input should be a valid number",
        ),
        ("threshold = 50", "threshhold = 50", "mql.threshhold: Extra inputs are not permitted"),
        (
            'timezone = "Asia/Tokyo"',
            'timezone = "Mars/Olympus"',
            "calendar.timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            'url_regex = "/(case-studies|customers|導入事例)/"',
            'url_regex = "/(unclosed"',
            "behaviour.rules[2].url_regex: invalid regular expression",
        ),
        (
            'id = "pricing-page"',
            'id = "page-view"',
            "behaviour.rules[1].id: duplicate rule id 'page-view'",
        ),
        ("a = 70\nb = 50", "a = 40\nb = 50", "fit.grades: fit.grades must satisfy a > b > c"),
        ('event = "trial_signup"', 'event = "trial_sign_up"', "behaviour.rules[9].event: Input"),
        (
            "[followup.by_source.webinar]",
            "[followup.by_source.seminar]",
            "followup.by_source.seminar",
        ),
        ("no_need = 20", "no_needs = 20", "recycling.reengage_threshold.no_needs"),
        ('version = "2026.1-default"\n', "", "version: Field required"),
    ],
)
def test_invalid_rule_file_names_the_bad_key(old: str, new: str, message: str) -> None:
    assert old in TEXT
    with pytest.raises(RulesError) as info:
        parse_rules(TEXT.replace(old, new, 1))
    assert message in str(info.value)


def test_toml_syntax_error_is_a_rules_error() -> None:
    with pytest.raises(RulesError, match="invalid TOML"):
        parse_rules("version = ")


def test_load_rules_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TEXT.replace("threshold = 50", "threshold = -"), encoding="utf-8")
    with pytest.raises(RulesError, match=r"bad\.toml: invalid TOML"):
        load_rules(bad)
    with pytest.raises(RulesError, match="cannot read rule file"):
        load_rules(tmp_path / "missing.toml")


def test_errors_have_a_default_message() -> None:
    assert str(RulesError()) == "The rule set is invalid."
    assert isinstance(RulesError(), ScoringError)


def test_business_hours_must_be_ordered() -> None:
    bad = TEXT.replace('business_end = "18:00"', 'business_end = "08:00"')
    with pytest.raises(RulesError, match="business_end must be after"):
        parse_rules(bad)
