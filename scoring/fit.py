"""Attribute (fit) scoring and profile exclusion: pure functions of a profile and the rules."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from scoring.matching import domain_matches, has_keyword, is_one_of
from scoring.memo import memo_for
from scoring.rules import Exclusion, ExclusionRule, Fit, Grades, RuleSet
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


def _memo_part(
    fit: Fit, attribute: Attribute, value: object, find: Callable[[], _Rule | None]
) -> FitPart:
    """The part of ``attribute`` = ``value``, from ``fit``'s memo table (``find`` on a miss).

    Parts are frozen, so states share them: a profile that did not change yields the very
    objects its state already holds, and comparing the two costs next to nothing.
    """
    table = memo_for(fit, attribute)
    part: FitPart | None = table.get(value)
    if part is None:
        part = table[value] = _part(attribute, value, find())
    return part


def _size_part(size: int | None, fit: Fit) -> FitPart:
    # Memoised by band, not by size: sizes hardly repeat, bands do.
    band = None
    if size is not None:
        band = next(
            (b for b in fit.company_size if b.min <= size and (b.max is None or size < b.max)),
            None,
        )
    key = (size is None, None if band is None else band.id)
    table = memo_for(fit, "company_size")
    part: FitPart | None = table.get(key)
    if part is None:
        part = table[key] = _part("company_size", size, band)
    return part


def evaluate_fit(profile: Profile, fit: Fit) -> tuple[FitPart, ...]:
    """One :class:`FitPart` per attribute: the first matching rule of its list, in file order.

    A missing attribute scores 0 with ``known=False`` (reported as unknown, never guessed); a
    present attribute that no rule matches scores 0 with ``known=True`` and no rule id.
    Memoised per rule set, by profile and by attribute value: NFKC and keyword scans are the
    costly part, and the same profiles, titles and industries come back on every event.
    """
    by_profile = memo_for(fit, "profile")
    key = profile.fit_key()
    found: tuple[FitPart, ...] | None = by_profile.get(key)
    if found is None:
        found = by_profile[key] = _evaluate(profile, fit)
    return found


def _evaluate(profile: Profile, fit: Fit) -> tuple[FitPart, ...]:
    industry = profile.industry or ""
    title = profile.job_title or ""
    country = profile.country or ""
    source = profile.source
    return (
        _size_part(profile.company_size, fit),
        _memo_part(
            fit,
            "industry",
            industry,
            lambda: next((r for r in fit.industry if has_keyword(industry, r.keywords)), None),
        ),
        _memo_part(
            fit,
            "job_title",
            title,
            lambda: next((r for r in fit.job_title if has_keyword(title, r.keywords)), None),
        ),
        _memo_part(
            fit,
            "country",
            country,
            lambda: next((r for r in fit.country if is_one_of(country, r.values)), None),
        ),
        _memo_part(
            fit,
            "source",
            source,
            lambda: next((r for r in fit.source if source in r.sources), None),
        ),
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
    """The first exclusion rule the profile matches (competitor domain, student title...).

    Rules are checked in file order and a rule matches on any of its criteria. Memoised per
    profile, and each criterion per value (the first rule it matches; the earliest one wins).
    """
    exclusion = rules.exclusion
    if not exclusion.rules:
        return None
    by_profile = memo_for(exclusion, "profile")
    key = profile.exclusion_key()
    if key in by_profile:
        found: ExclusionRule | None = by_profile[key]
        return found
    found = by_profile[key] = _exclusion_of(profile, exclusion)
    return found


def _exclusion_of(profile: Profile, exclusion: Exclusion) -> ExclusionRule | None:
    email = profile.email
    domain = email.rsplit("@", 1)[-1] if email else None
    firsts = [
        i
        for i in (
            _first_exclusion(exclusion, "email_domain", domain, _email_matches),
            _first_exclusion(exclusion, "job_title", profile.job_title, _title_matches),
            _first_exclusion(exclusion, "company", profile.company_name, _company_matches),
        )
        if i is not None
    ]
    return exclusion.rules[min(firsts)] if firsts else None


def _email_matches(rule: ExclusionRule, domain: str) -> bool:
    return domain_matches(domain, rule.email_domains)


def _title_matches(rule: ExclusionRule, title: str) -> bool:
    return has_keyword(title, rule.job_title_keywords)


def _company_matches(rule: ExclusionRule, company: str) -> bool:
    return has_keyword(company, rule.company_keywords)


def _first_exclusion(
    exclusion: Exclusion,
    criterion: str,
    value: str | None,
    matches: Callable[[ExclusionRule, str], bool],
) -> int | None:
    """The index of the first rule whose ``criterion`` matches ``value`` (memoised)."""
    if not value:
        return None
    table = memo_for(exclusion, criterion)
    if value in table:
        found: int | None = table[value]
        return found
    found = next((i for i, r in enumerate(exclusion.rules) if matches(r, value)), None)
    table[value] = found
    return found
