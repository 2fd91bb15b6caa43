"""Behaviour (engagement) rules: which rules an event matches, and what each one credits.

Every matching rule applies (rules are additive: a careers page view earns the page-view points
and the careers penalty). An uncapped rule credits its points anchored at the event time. A
capped rule credits into a window bucket (calendar-local days, ``cap_window_days`` long, aligned
to Monday 1970-01-05): the bucket is worth ``clamp(sum of raw points, -cap, cap)``, anchored at the
window start, and each event is credited the change it made to that worth. The bucket's worth
therefore depends only on which events fell into it, never on their arrival order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from urllib.parse import urlsplit

from events.tracking import BehaviourTracked
from scoring.decay import newest
from scoring.rules import Behaviour, BehaviourRule, Calendar, RuleSet
from scoring.state import Activity, LeadState

#: Windows are aligned to a Monday, so 7-day windows are ISO weeks (Monday to Sunday).
_EPOCH = date(1970, 1, 5).toordinal()
_LABEL_MAX = 120


def matches(rule: BehaviourRule, event: BehaviourTracked) -> bool:
    """Whether ``rule`` applies to ``event``: same type and every configured filter matches."""
    if rule.event != event.type:
        return False
    props = event.properties
    url = (props.url or "").casefold()
    if rule.url_contains and not any(p.casefold() in url for p in rule.url_contains):
        return False
    if rule.url_regex is not None and not re.search(rule.url_regex, props.url or ""):
        return False
    if rule.content_ids and props.content_id not in rule.content_ids:
        return False
    if rule.form_ids and props.form_id not in rule.form_ids:
        return False
    return not (rule.campaigns and props.campaign not in rule.campaigns)


def matching_rules(event: BehaviourTracked, behaviour: Behaviour) -> list[BehaviourRule]:
    """Every rule that applies to ``event``, in file order."""
    return [r for r in behaviour.rules if matches(r, event)]


@dataclass(frozen=True)
class Credit:
    """What one rule credits for one event."""

    rule: BehaviourRule
    raw: float
    points: float
    anchor: datetime
    half_life_days: float


def window_start(at: datetime, days: int, calendar: Calendar) -> date:
    """The first local date of the ``days``-long cap window containing ``at``."""
    ordinal = at.astimezone(calendar.zone).date().toordinal()
    return date.fromordinal(ordinal - (ordinal - _EPOCH) % days)


def credit(
    caps: dict[str, tuple[float, float]],
    rule: BehaviourRule,
    event: BehaviourTracked,
    rules: RuleSet,
) -> Credit:
    """What ``rule`` credits for ``event``; updates ``caps`` (a working copy) in place."""
    half_life = rules.behaviour.half_life(rule)
    if rule.cap is None:
        return Credit(rule, rule.points, rule.points, event.occurred_at, half_life)
    start = window_start(event.occurred_at, rule.cap_window_days, rules.calendar)
    key = f"{rule.id}@{start.isoformat()}"
    raw, credited = caps.get(key, (0.0, 0.0))
    raw += rule.points
    now_credited = max(-rule.cap, min(rule.cap, raw))
    caps[key] = (raw, now_credited)
    anchor = datetime.combine(start, time(0), rules.calendar.zone)
    return Credit(rule, rule.points, now_credited - credited, anchor, half_life)


def prune_caps(
    caps: dict[str, tuple[float, float]], state: LeadState, rules: RuleSet
) -> dict[str, tuple[float, float]]:
    """``caps`` without windows too old to matter (older than ``forget_after_half_lives``).

    A late event landing in a pruned window is credited again up to the cap, but its worth is
    below ``cap * 2 ** -forget_after_half_lives`` of the cap: the bound on order-dependence.
    """
    ref = newest(state.decay)
    if ref is None:
        return caps
    by_id = {r.id: r for r in rules.behaviour.rules}
    keep = {}
    for key, value in caps.items():
        rule_id, _, day = key.rpartition("@")
        rule = by_id.get(rule_id)
        half_life = rules.behaviour.half_life(rule) if rule else rules.behaviour.half_life_days
        horizon = timedelta(days=half_life * rules.behaviour.forget_after_half_lives)
        start = datetime.combine(date.fromisoformat(day), time(0), rules.calendar.zone)
        if start >= ref - horizon:
            keep[key] = value
    return dict(sorted(keep.items()))


def label(event: BehaviourTracked) -> str | None:
    """A short human label for the event: URL path, content id, title or form id."""
    props = event.properties
    text: str | None = None
    if props.url:
        parts = urlsplit(props.url)
        text = parts.path or props.url
    text = text or props.content_id or props.title or props.form_id
    return text[:_LABEL_MAX] if text else None


def remember(
    activities: tuple[Activity, ...], event: BehaviourTracked, points: float, keep: int
) -> tuple[Activity, ...]:
    """``activities`` with ``event`` added, keeping the ``keep`` newest by event time."""
    item = Activity(
        event_id=event.event_id,
        type=event.type,
        at=event.occurred_at,
        label=label(event),
        points=points,
    )
    ordered = sorted((*activities, item), key=lambda a: (a.at, a.event_id), reverse=True)
    return tuple(ordered[:keep])
