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
from datetime import date, datetime, time, timedelta
from typing import NamedTuple
from urllib.parse import urlsplit

from events.tracking import BehaviourTracked
from scoring.decay import newest
from scoring.memo import memo_for
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
    if rule.url_contains:
        url = (props.url or "").casefold()
        if not any(p.casefold() in url for p in rule.url_contains):
            return False
    if rule.url_regex is not None and not re.search(rule.url_regex, props.url or ""):
        return False
    if rule.content_ids and props.content_id not in rule.content_ids:
        return False
    if rule.form_ids and props.form_id not in rule.form_ids:
        return False
    return not (rule.campaigns and props.campaign not in rule.campaigns)


def matching_rules(event: BehaviourTracked, behaviour: Behaviour) -> list[BehaviourRule]:
    """Every rule that applies to ``event``, in file order.

    Memoised per rule set on what :func:`matches` looks at (type, URL, content, form and
    campaign ids): a site has a bounded set of pages and assets, visited over and over.
    """
    props = event.properties
    key = (event.type, props.url, props.content_id, props.form_id, props.campaign)
    table = memo_for(behaviour, "matching_rules")
    found: tuple[BehaviourRule, ...] | None = table.get(key)
    if found is None:
        found = table[key] = tuple(r for r in behaviour.rules if matches(r, event))
    return list(found)


class Credit(NamedTuple):
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
    caps: dict[str, list[float]],
    rule: BehaviourRule,
    event: BehaviourTracked,
    rules: RuleSet,
) -> Credit:
    """What ``rule`` credits for ``event``; updates ``caps`` (the lead's working state)."""
    half_life = rules.behaviour.half_life(rule)
    if rule.cap is None:
        return Credit(rule, rule.points, rule.points, event.occurred_at, half_life)
    start = window_start(event.occurred_at, rule.cap_window_days, rules.calendar)
    windows = memo_for(rules, "cap_window_keys")
    window = windows.get((rule.id, start))
    if window is None:
        anchor = datetime.combine(start, time(0), rules.calendar.zone)
        window = windows[(rule.id, start)] = (f"{rule.id}@{start.isoformat()}", anchor)
    key, anchor = window
    bucket = caps.get(key)
    if bucket is None:
        bucket = caps[key] = [0.0, 0.0]
    credited = bucket[1]
    bucket[0] += rule.points
    bucket[1] = max(-rule.cap, min(rule.cap, bucket[0]))
    return Credit(rule, rule.points, bucket[1] - credited, anchor, half_life)


def prune_caps(state: LeadState, rules: RuleSet) -> None:
    """Drop from ``state.caps`` (in place) windows too old to matter: older than
    ``forget_after_half_lives`` half-lives before the newest anchor of ``state.decay``.

    A late event landing in a pruned window is credited again up to the cap, but its worth is
    below ``cap * 2 ** -forget_after_half_lives`` of the cap: the bound on order-dependence.

    The windows are scanned only when one of them can have expired: ``state.caps_expiry`` is
    the earliest time a kept window expires (a working-state hint, not stored; the engine
    clears it when it opens a window).
    """
    caps = state.caps
    ref = newest(state.decay)
    if ref is None or not caps:
        return
    expiry = state.caps_expiry
    if expiry is not None and ref <= expiry:
        return
    windows = memo_for(rules, "cap_windows")
    gone = []
    earliest: datetime | None = None
    for key in caps:
        ends = windows.get(key, _UNKNOWN)
        if ends is _UNKNOWN:
            ends = windows[key] = _window_ends(key, rules)
        if ends is None:
            continue  # kept for good (a half-life too long to forget within the calendar)
        if ends < ref:
            gone.append(key)
        elif earliest is None or ends < earliest:
            earliest = ends
    for key in gone:
        del caps[key]
    state.caps_expiry = earliest


_UNKNOWN = object()
#: A window kept longer than this is kept for good (no calendar date lies beyond it).
_FOREVER = timedelta(days=1_000 * 366)


def _window_ends(key: str, rules: RuleSet) -> datetime | None:
    """When the cap window ``key`` stops mattering: its start plus ``forget_after_half_lives``
    half-lives; None when that lies beyond any date (a half-life of millions of days: the
    window is kept, never an overflow that would lose the event)."""
    rule_id, _, day = key.rpartition("@")
    rule = next((r for r in rules.behaviour.rules if r.id == rule_id), None)
    half_life = rules.behaviour.half_life(rule) if rule else rules.behaviour.half_life_days
    days = half_life * rules.behaviour.forget_after_half_lives
    if days >= _FOREVER.days:
        return None
    start = datetime.combine(date.fromisoformat(day), time(0), rules.calendar.zone)
    try:
        return start + timedelta(days=days)
    except OverflowError:
        return None


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
    activities: list[Activity], event: BehaviourTracked, points: float, keep: int
) -> None:
    """Add ``event`` to ``activities`` (in place), keeping the ``keep`` newest by event time."""
    item = Activity(event.event_id, event.type, event.occurred_at, label(event), points)
    if not activities or (item.at, item.event_id) > (activities[0].at, activities[0].event_id):
        # The usual case: the newest event so far goes first (``activities`` is kept sorted).
        activities.insert(0, item)
    else:
        activities.append(item)
        activities.sort(key=_when, reverse=True)
    del activities[keep:]


def _when(a: Activity) -> tuple[datetime, str]:
    return (a.at, a.event_id)
