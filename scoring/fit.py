"""Attribute (fit) scoring and profile exclusion: pure functions of a profile and the rules."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from scoring.matching import domain_matches, has_keyword, is_one_of
from scoring.rules import ExclusionRule, Fit, Grades, RuleSet
from scoring.state import Attribute, FitPart, Grade, Profile


class _Rule(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def points(self) -> float: ...


def _part(attribute: Attribute, value: object, rule: _Rule | None) -> FitPart:
    if value is None or value == "":
        return FitPart(attribute=attribute)
    if rule is None:
        return FitPart(attribute=attribute, known=True)
    return FitPart(attribute=attribute, rule_id=rule.id, points=rule.points, known=True)


def evaluate_fit(profile: Profile, fit: Fit) -> tuple[FitPart, ...]:
    """One :class:`FitPart` per attribute: the first matching rule of its list, in file order.

    A missing attribute scores 0 with ``known=False`` (reported as unknown, never guessed); a
    present attribute that no rule matches scores 0 with ``known=True`` and no rule id.
    """
    size = profile.company_size
    industry = profile.industry or ""
    title = profile.job_title or ""
    country = profile.country or ""
    source = profile.source
    return (
        _part(
            "company_size",
            size,
            next(
                (b for b in fit.company_size if size is not None and b.min <= size
                 and (b.max is None or size < b.max)),
                None,
            ),
        ),
        _part("industry", industry, next(
            (r for r in fit.industry if has_keyword(industry, r.keywords)), None)),
        _part("job_title", title, next(
            (r for r in fit.job_title if has_keyword(title, r.keywords)), None)),
        _part("country", country, next(
            (r for r in fit.country if is_one_of(country, r.values)), None)),
        _part("source", source, next((r for r in fit.source if source in r.sources), None)),
    )


def total(parts: tuple[FitPart, ...]) -> float:
    """The fit score of ``parts``."""
    return math.fsum(p.points for p in parts)


def grade(score: float, grades: Grades) -> Grade:
    """The fit grade of ``score`` under the configured cut-offs."""
    if score >= grades.a:
        return "A"
    if score >= grades.b:
        return "B"
    if score >= grades.c:
        return "C"
    return "D"


@dataclass(frozen=True)
class FitChange:
    """One fit rule whose contribution changed: ``raw`` it gives now, ``delta`` credited."""

    rule_id: str
    raw: float
    delta: float


def fit_changes(old: tuple[FitPart, ...], new: tuple[FitPart, ...]) -> list[FitChange]:
    """The per-rule changes turning ``old`` into ``new`` (their deltas sum to the difference)."""
    before = {p.attribute: p for p in old}
    changes = []
    for part in new:
        prev = before.get(part.attribute)
        prev_id = prev.rule_id if prev else None
        prev_points = prev.points if prev else 0.0
        if prev_id == part.rule_id:
            if part.rule_id is not None and part.points != prev_points:
                changes.append(FitChange(part.rule_id, part.points, part.points - prev_points))
            continue
        if prev_id is not None and prev_points != 0:
            changes.append(FitChange(prev_id, -prev_points, -prev_points))
        if part.rule_id is not None and part.points != 0:
            changes.append(FitChange(part.rule_id, part.points, part.points))
    return changes


def exclusion_match(profile: Profile, rules: RuleSet) -> ExclusionRule | None:
    """The first exclusion rule the profile matches (competitor domain, student title...)."""
    for rule in rules.exclusion.rules:
        if profile.email and domain_matches(profile.email, rule.email_domains):
            return rule
        if profile.job_title and has_keyword(profile.job_title, rule.job_title_keywords):
            return rule
        if profile.company_name and has_keyword(profile.company_name, rule.company_keywords):
            return rule
    return None
