"""The scoring engine: ``apply`` an event, ``sweep`` for time rules, ``stitch`` anonymous history.

Pure functions: state in, :class:`Decision` out. Time is always the ``now`` argument; scores
depend only on event times, while thresholds (MQL, re-engagement, SLA, revisit) are judged at
``now``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from events.outcomes import OutcomeRecorded
from events.profiles import ProfileUpdated
from events.tracking import BehaviourTracked
from scoring.behaviour import credit, matching_rules, prune_caps, remember
from scoring.decay import add, newest_of, worth
from scoring.decision import Decision, Draft
from scoring.errors import ScoringError
from scoring.fit import evaluate_fit, exclusion_match, fit_changes, grade, total
from scoring.ledger import LedgerEntry, entry_id, fit_entry
from scoring.lifecycle import advance_by_time, disqualify, on_outcome
from scoring.rules import RuleSet
from scoring.scores import behaviour_score, fit_score, priority, raw_behaviour_score
from scoring.state import ANON_PREFIX, MAX_LINKED_IDS, LeadState
from scoring.trust import counts

Event = BehaviourTracked | ProfileUpdated | OutcomeRecorded


def apply(state: LeadState, event: Event, rules: RuleSet, *, now: datetime) -> Decision:
    """Apply one event to a lead's state (in place) and decide what follows.

    The caller applies each event once: the worker and :class:`scoring.fold.Fold` know which
    events are new (the event log's key), the state does not keep their ids. After the
    event's own effects the time rules run at ``now`` (MQL threshold, SLA, re-queue,
    ``won`` -> ``customer``), exactly as :func:`sweep` would.

    Args:
        state: the lead's (or anonymous visitor's) current state; changed in place.
        event: a behaviour event, a profile update or a sales outcome.
        rules: the rule set.
        now: the processing time: thresholds are judged at it; scores do not depend on it.
    """
    d = Draft(state, rules, now, event_id=event.event_id)
    if isinstance(event, BehaviourTracked):
        _on_behaviour(d, event)
    elif isinstance(event, ProfileUpdated):
        state.profile.merge(event.changes())
    else:
        on_outcome(d, event)
    # An applied event always changes the state (its count, at least).
    state.events += 1
    d.changed = True
    refit(d, event.event_id, event.occurred_at)
    if not state.anonymous and not state.excluded:
        rule = exclusion_match(state.profile, rules)
        if rule is not None:
            why = f"exclusion rule {rule.id} ({rule.reason})"
            disqualify(d, rule.reason, at=event.occurred_at, why=why)
    advance_by_time(d)
    return d.finish()


def sweep(state: LeadState, rules: RuleSet, *, now: datetime) -> Decision:
    """Apply the time rules with no new event.

    Stage SLA expired without a sales touch -> ``recycled`` (``uncontacted``) plus nurture, or
    an ``sla_breach`` follow-up at ``escalate_after_hours``; revisit date reached or behaviour
    re-engaged -> re-queued follow-up (respecting the cooldown); ``won`` -> ``customer``; a
    lead whose priority reached the threshold -> ``mql``. ``changed`` is False when nothing
    changed.
    """
    d = Draft(state, rules, now)
    advance_by_time(d)
    return d.finish()


def stitch(
    lead: LeadState,
    anon_id: str,
    anon_events: Iterable[BehaviourTracked],
    rules: RuleSet,
    *,
    now: datetime,
) -> Decision:
    """Credit an anonymous visitor's history to the lead it turned out to be.

    The anonymous subject's stored events are re-applied to the lead (in place) with their
    original times (so they decay as if the lead had done them then); the anonymous state's
    own scores are not added, so nothing is counted twice. The worker should retire the
    anonymous state afterwards.

    Args:
        lead: the lead (changed in place).
        anon_id: the visitor's anonymous id (without ``anon:``).
        anon_events: the behaviour the visitor was credited with.
        rules: the rule set.
        now: the processing time.

    Raises:
        ScoringError: ``lead`` is an anonymous visitor itself, or ``anon_id`` names a subject.
    """
    if lead.anonymous or anon_id.startswith(ANON_PREFIX) or not anon_id:
        raise ScoringError(f"cannot stitch {anon_id!r} into {lead.lead_id!r}")
    decisions = [
        apply(lead, event, rules, now=now)
        for event in sorted(anon_events, key=lambda e: (e.occurred_at, e.event_id))
    ]
    linked = False
    if anon_id not in lead.linked_anonymous_ids:
        lead.linked_anonymous_ids.append(anon_id)
        del lead.linked_anonymous_ids[:-MAX_LINKED_IDS]
        linked = True
    followups = [x.followup for x in decisions if x.followup is not None]
    recycles = [x.recycle for x in decisions if x.recycle is not None]
    return Decision(
        state=lead,
        ledger=[e for x in decisions for e in x.ledger],
        transitions=[t for x in decisions for t in x.transitions],
        recycle=recycles[-1] if recycles else None,
        followup=followups[-1] if followups and not lead.excluded else None,
        close_followup=any(x.close_followup for x in decisions),
        excluded=lead.excluded,
        changed=linked or bool(decisions),
    )


def _on_behaviour(d: Draft, event: BehaviourTracked) -> None:
    state, rules, now = d.state, d.rules, d.now
    if event.type == "identify" and event.email and state.profile.email is None:
        state.profile.email = event.email
    groups = state.decay
    windows = len(state.caps)
    info = state.recycle
    gained = info.gained if info is not None and event.occurred_at >= info.since else None
    raw_total = 0.0
    score: float | None = None  # the raw behaviour score at ``now`` (read once, then carried)
    rules_matched = matching_rules(event, rules.behaviour) if counts(event) else ()
    # An unvouched browser unsubscribe is recorded but credits nothing (scoring/trust.py).
    for rule in rules_matched:
        c = credit(state.caps, rule, event, rules)
        # Never anchored after ``now``: a group's reference would move ahead of the time it
        # is read at, and every real event of the group would be read decayed towards it
        # while this one never decays (an event dated ahead by a skewed clock). The worker
        # already scores such an event at its receive time; this holds for any caller.
        anchor = min(c.anchor, now)
        before = raw_behaviour_score(state, now) if score is None else score
        add(groups, c.half_life_days, anchor, c.points)
        state.reading = None
        ref = newest_of(groups, c.half_life_days) or anchor
        if gained is not None:
            add(gained, c.half_life_days, anchor, c.points)
        raw_total += c.raw
        # What the contribution adds to the reading at ``now``: the reading after it, without
        # reading every group again (equal to ``read(groups, now)`` up to float rounding).
        decayed = worth(c.points, anchor, c.half_life_days, now, ref)
        score = before + decayed
        d.ledger.append(
            LedgerEntry(
                entry_id(state.lead_id, event.event_id, rule.id),
                state.lead_id,
                event.event_id,
                rule.id,
                rules.version,
                "behaviour",
                event.occurred_at,
                c.raw,
                c.points,
                decayed,
                before,
                score,
                anchor,
                c.half_life_days,
            )
        )
    if score is not None:
        state.reading = (now, score)
    if len(state.caps) != windows:
        state.caps_expiry = None  # a window was opened: scan them again
    prune_caps(state, rules)
    remember(state.activities, event, raw_total, rules.followup.activity_memory)


def refit(d: Draft, event_id: str, occurred_at: datetime) -> None:
    """Recompute fit; every rule whose contribution changed gets a ledger entry.

    Fit is recomputed on every event, so that a rule-set change is picked up at a lead's next
    event; :func:`evaluate_fit` is memoised, so for an unchanged profile this is a few lookups
    that return the parts the state already holds.
    """
    state, rules = d.state, d.rules
    parts = evaluate_fit(state.profile, rules.fit)
    same_parts = parts is state.fit or parts == state.fit
    score = state.fit_score
    for change in [] if same_parts else fit_changes(state.fit, parts):
        entry = fit_entry(
            state.lead_id,
            event_id,
            change.rule_id,
            rules.version,
            at=occurred_at,
            raw=change.raw,
            delta=change.delta,
            before=score,
        )
        d.ledger.append(entry)
        score = entry.score_after
    # ``fit_score`` is always ``total(fit)``: only the grade can change with the same parts
    # (new grade cut-offs).
    new_score = state.fit_score if same_parts else total(parts)
    new_grade = grade(new_score, rules.fit.grades)
    if not same_parts or new_grade != state.fit_grade:
        d.update(fit=parts, fit_score=new_score, fit_grade=new_grade)


__all__ = [
    "Decision",
    "Event",
    "apply",
    "behaviour_score",
    "fit_score",
    "priority",
    "raw_behaviour_score",
    "stitch",
    "sweep",
]
