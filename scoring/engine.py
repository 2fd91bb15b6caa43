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
from scoring.decay import add, newest_of, read, worth
from scoring.decision import Decision, Draft
from scoring.errors import ScoringError
from scoring.fit import evaluate_fit, exclusion_match, fit_changes, grade, total
from scoring.ledger import LedgerEntry, entry_id
from scoring.lifecycle import advance_by_time, disqualify, on_outcome
from scoring.rules import RuleSet
from scoring.scores import behaviour_score, fit_score, priority, raw_behaviour_score
from scoring.state import ANON_PREFIX, MAX_LINKED_IDS, LeadState, event_key, with_key
from scoring.trust import counts

Event = BehaviourTracked | ProfileUpdated | OutcomeRecorded


def apply(state: LeadState, event: Event, rules: RuleSet, *, now: datetime) -> Decision:
    """Apply one event to a lead's state and decide what follows.

    Applying an event id that was already applied is a no-op (``duplicate=True``, same state,
    empty ledger). After the event's own effects the time rules run at ``now`` (MQL threshold,
    SLA, re-queue, ``won`` -> ``customer``), exactly as :func:`sweep` would.

    Args:
        state: the lead's (or anonymous visitor's) current state.
        event: a behaviour event, a profile update or a sales outcome.
        rules: the rule set.
        now: the processing time: thresholds are judged at it; scores do not depend on it.
    """
    applied = with_key(state.applied, event_key(event.event_id))
    if applied is None:
        return Decision(state=state, excluded=state.excluded, duplicate=True)
    d = Draft(state, rules, now, event_id=event.event_id)
    if isinstance(event, BehaviourTracked):
        _on_behaviour(d, event)
    elif isinstance(event, ProfileUpdated):
        d.update(profile=d.state.profile.model_copy(update=event.changes()))
    else:
        on_outcome(d, event)
    # An applied event always changes the state, so it is stamped now rather than in
    # ``finish``: the state is then copied once for all the changes so far.
    d.update(applied=applied, rules_version=rules.version, updated_at=now)
    _refit(d, event.event_id, event.occurred_at)
    if not d.state.anonymous and not d.state.excluded:
        rule = exclusion_match(d.state.profile, rules)
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
    lead whose priority reached the threshold -> ``mql``. Returns the same state object when
    nothing changed.
    """
    d = Draft(state, rules, now)
    advance_by_time(d)
    return d.finish()


def stitch(
    lead: LeadState,
    anon: LeadState,
    anon_events: Iterable[BehaviourTracked],
    rules: RuleSet,
    *,
    now: datetime,
) -> Decision:
    """Credit an anonymous visitor's history to the lead it turned out to be.

    The anonymous subject's stored events are re-applied to the lead with their original times
    (so they decay as if the lead had done them then); the anonymous state's own scores are not
    added, so nothing is counted twice, and events the lead already has are skipped by id.
    The worker should retire the anonymous state afterwards.

    Raises:
        ScoringError: ``anon`` is not an anonymous subject, or ``lead`` is.
    """
    if not anon.anonymous or lead.anonymous:
        raise ScoringError(f"cannot stitch {anon.lead_id!r} into {lead.lead_id!r}")
    decisions = []
    state = lead
    for event in sorted(anon_events, key=lambda e: (e.occurred_at, e.event_id)):
        decision = apply(state, event, rules, now=now)
        decisions.append(decision)
        state = decision.state
    anon_id = anon.lead_id.removeprefix(ANON_PREFIX)
    if anon_id not in state.linked_anonymous_ids:
        linked = (*state.linked_anonymous_ids, anon_id)[-MAX_LINKED_IDS:]
        state = state.model_copy(update={"linked_anonymous_ids": linked})
    followups = [x.followup for x in decisions if x.followup is not None]
    recycles = [x.recycle for x in decisions if x.recycle is not None]
    return Decision(
        state=state,
        ledger=tuple(e for x in decisions for e in x.ledger),
        transitions=tuple(t for x in decisions for t in x.transitions),
        recycle=recycles[-1] if recycles else None,
        followup=followups[-1] if followups and not state.excluded else None,
        close_followup=any(x.close_followup for x in decisions),
        excluded=state.excluded,
        duplicate=state is lead,
    )


def _on_behaviour(d: Draft, event: BehaviourTracked) -> None:
    state, rules, now = d.state, d.rules, d.now
    if event.type == "identify" and event.email and state.profile.email is None:
        d.update(profile=state.profile.model_copy(update={"email": event.email}))
    caps = dict(state.caps)
    groups = state.decay
    info = state.recycle
    gained = info.gained if info is not None and event.occurred_at >= info.since else None
    raw_total = 0.0
    score: float | None = None  # the raw behaviour score at ``now`` (read once, then carried)
    # An unvouched browser unsubscribe is recorded but credits nothing (scoring/trust.py).
    for rule in matching_rules(event, rules.behaviour) if counts(event) else ():
        c = credit(caps, rule, event, rules)
        # Never anchored after ``now``: a group's reference would move ahead of the time it
        # is read at, and every real event of the group would be read decayed towards it
        # while this one never decays (an event dated ahead by a skewed clock). The worker
        # already scores such an event at its receive time; this holds for any caller.
        anchor = min(c.anchor, now)
        before = read(groups, now) if score is None else score
        groups = add(groups, c.half_life_days, anchor, c.points)
        ref = newest_of(groups, c.half_life_days) or anchor
        if gained is not None:
            gained = add(gained, c.half_life_days, anchor, c.points)
        raw_total += c.raw
        score = read(groups, now)
        d.ledger.append(
            LedgerEntry(
                entry_id=entry_id(state.lead_id, event.event_id, rule.id),
                lead_id=state.lead_id,
                event_id=event.event_id,
                rule_id=rule.id,
                rules_version=rules.version,
                kind="behaviour",
                occurred_at=event.occurred_at,
                raw_points=c.raw,
                points=c.points,
                anchor=anchor,
                half_life_days=c.half_life_days,
                decayed_points=worth(c.points, anchor, c.half_life_days, now, ref),
                score_before=before,
                score_after=score,
            )
        )
    changes: dict[str, object] = {
        "decay": groups,
        "caps": prune_caps(caps, groups, rules),
        "activities": remember(state.activities, event, raw_total, rules.followup.activity_memory),
    }
    if info is not None and gained is not None:
        changes["recycle"] = info.replaced({"gained": gained})
    d.update(**changes)


def _refit(d: Draft, event_id: str, occurred_at: datetime) -> None:
    """Recompute fit; every rule whose contribution changed gets a ledger entry.

    Fit is recomputed on every event, so that a rule-set change is picked up at a lead's next
    event; :func:`evaluate_fit` is memoised, so for an unchanged profile this is a few lookups
    that return the parts the state already holds.
    """
    state, rules = d.state, d.rules
    parts = evaluate_fit(state.profile, rules.fit)
    same_parts = parts == state.fit
    score = state.fit_score
    for change in [] if same_parts else fit_changes(state.fit, parts):
        after = score + change.delta
        d.ledger.append(
            LedgerEntry(
                entry_id=entry_id(state.lead_id, event_id, change.rule_id),
                lead_id=state.lead_id,
                event_id=event_id,
                rule_id=change.rule_id,
                rules_version=rules.version,
                kind="fit",
                occurred_at=occurred_at,
                raw_points=change.raw,
                points=change.delta,
                decayed_points=change.delta,
                score_before=score,
                score_after=after,
            )
        )
        score = after
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
