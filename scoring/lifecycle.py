"""The lifecycle stage machine: sales outcomes, gates, recycling, re-queueing and time rules.

Every function works on a :class:`Draft`. Outcome-driven transitions happen at the outcome's
event time; threshold and clock-driven ones (MQL, re-queue, ``won`` -> ``customer``) at ``now``;
an SLA recycle at the moment the SLA expired, so a late sweep decides the same thing.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import cast

from events.outcomes import Bant, OutcomeRecorded
from scoring.calendar import due_at, local_date
from scoring.decay import read
from scoring.decision import Draft, FollowupContext, FollowupDecision, RecycleDecision, WhyNow
from scoring.rules import ExclusionReason, RecycleReason, Stage
from scoring.scores import behaviour_score, priority, weigh
from scoring.state import RecycleInfo

#: Pipeline order; a move to a higher level passes every gated stage in between.
LEVEL: dict[str, int] = {
    "awareness": 0,
    "lead": 0,
    "nurturing": 0,
    "recycled": 1,
    "mql": 1,
    "appointment": 2,
    "opportunity": 3,
    "won": 4,
    "customer": 5,
}
_TARGET: dict[str, Stage] = {
    "appointment_set": "appointment",
    "opportunity_opened": "opportunity",
    "won": "won",
}
#: Stages a lead may be recycled from (lost, parked or stalled).
_RECYCLABLE = frozenset({"lead", "nurturing", "mql", "appointment", "opportunity", "recycled"})


def merge_bant(old: Bant, new: Bant) -> Bant:
    """``old`` with every item ``new`` knows replaced (the latest applied non-null wins)."""
    known = {k: v for k, v in new.model_dump().items() if v is not None}
    return old.model_copy(update=known) if known else old


def on_outcome(d: Draft, event: OutcomeRecorded) -> None:
    """Apply a sales outcome: merge BANT, record the touch, move the stage (through gates)."""
    d.update(bant=merge_bant(d.state.bant, event.bant))
    if event.outcome in d.rules.stages.touch_outcomes:
        last = d.state.last_touch_at
        d.update(
            last_touch_at=event.occurred_at if last is None else max(last, event.occurred_at),
            stage_touched=True,
        )
        d.close_followup = True
    at = event.occurred_at
    if event.outcome in _TARGET:
        advance(d, _TARGET[event.outcome], at=at, reason=f"outcome {event.outcome}")
    elif event.outcome in ("lost", "nurture"):
        # The wire model already checked that a lost/nurture reason is a recycle reason.
        reason = cast(RecycleReason, event.reason or d.rules.recycling.default_reason)
        recycle(d, reason, since=at, revisit_on=event.revisit_on, why=f"outcome {event.outcome}")
    elif event.outcome == "disqualified":
        excl = cast(ExclusionReason, event.reason or "invalid")
        disqualify(d, excl, at=at, why=f"outcome disqualified ({excl})")


def advance(d: Draft, to: Stage, *, at: datetime, reason: str) -> None:
    """Move forward to ``to`` unless the lead is out of play or a gate on the way is closed."""
    state = d.state
    if state.excluded or state.stage == "disqualified":
        d.refuse(to, at=at, reason=f"{reason}: lead is disqualified")
        return
    if state.anonymous:
        d.refuse(to, at=at, reason=f"{reason}: anonymous visitors stay in awareness")
        return
    if state.stage == to:
        return
    here, there = LEVEL[state.stage], LEVEL[to]
    if here > there:
        d.refuse(to, at=at, reason=f"{reason}: lead is already in {state.stage}")
        return
    for stage, gate in sorted(d.rules.gates.items(), key=lambda kv: LEVEL[kv[0]]):
        if here < LEVEL[stage] <= there:
            missing = [item for item in gate.require_bant if getattr(state.bant, item) is None]
            if missing:
                d.refuse(
                    to,
                    at=at,
                    reason=f"{reason}: gate {stage} requires BANT {', '.join(missing)} known",
                )
                return
    d.move(to, at=at, reason=reason)


def recycle(
    d: Draft,
    reason: RecycleReason,
    *,
    since: datetime,
    revisit_on: date | None = None,
    why: str,
) -> None:
    """Recycle the lead with ``reason`` and enroll it on the reason's nurture track."""
    state = d.state
    if state.anonymous or state.excluded or state.stage not in _RECYCLABLE:
        d.refuse("recycled", at=since, reason=f"{why}: cannot recycle from {state.stage}")
        return
    recycling = d.rules.recycling
    revisit: date | None = None
    if reason == "timing":
        revisit = revisit_on or local_date(since, d.rules.calendar) + timedelta(
            days=recycling.default_revisit_days
        )
    track: str = recycling.tracks.of(reason)
    d.update(recycle=RecycleInfo(reason=reason, since=since, revisit_on=revisit, track=track))
    if state.stage != "recycled":
        d.move("recycled", at=since, reason=f"{why}: {reason}")
    d.recycle = RecycleDecision(
        lead_id=state.lead_id, reason=reason, since=since, revisit_on=revisit, track=track
    )
    d.followup = None
    d.close_followup = True


def disqualify(d: Draft, reason: ExclusionReason, *, at: datetime, why: str) -> None:
    """Exclude the lead for good: stage ``disqualified``, off every list."""
    if d.state.excluded:
        return
    d.move("disqualified", at=at, reason=why)
    d.update(excluded=True, exclusion_reason=reason)
    d.followup = None
    d.close_followup = True


def queue_followup(d: Draft, why_now: WhyNow, reason: str) -> None:
    """Put the lead on the call list (never for anonymous or excluded leads)."""
    state, rules, now = d.state, d.rules, d.now
    if state.anonymous or state.excluded:
        return
    if why_now == "sla_breach":
        due = now
    else:
        due = due_at(now, rules.followup.timing(state.profile.source), rules.calendar)
    engaged = [a for a in state.activities if a.points > 0]
    context = FollowupContext(
        lead_id=state.lead_id,
        email=state.profile.email,
        company=state.profile.company_name,
        job_title=state.profile.job_title,
        grade=state.fit_grade,
        fit_score=state.fit_score,
        behaviour_score=behaviour_score(state, now, rules),
        source=state.profile.source,
        owner=state.profile.owner,
        recent_activities=tuple(engaged[: rules.followup.context_activities]),
        previous_lost_reason=state.recycle.reason if state.recycle else None,
        unknown_bant=tuple(state.unknown_bant()),
        unknown_attributes=tuple(state.unknown_attributes()),
    )
    d.followup = FollowupDecision(
        lead_id=state.lead_id,
        why_now=why_now,
        reason=reason,
        priority=priority(state, now, rules),
        created_at=now,
        due_at=due,
        context=context,
    )


def advance_by_time(d: Draft) -> None:
    """Apply every rule that depends on ``now``: customer, SLA, re-queue, MQL, nurturing."""
    state, rules, now = d.state, d.rules, d.now
    if state.anonymous or state.excluded:
        return
    if state.stage == "won":
        if now >= state.stage_since + timedelta(days=rules.stages.customer_after_days):
            d.move("customer", at=now, reason="won: customer after the configured delay")
        return
    sla = rules.sla.get(state.stage)  # type: ignore[arg-type]  # other stages: no SLA
    if sla is not None and not state.stage_touched:
        deadline = state.stage_since + timedelta(hours=sla.recycle_after_hours)
        if now >= deadline:
            why = f"SLA: no sales touch within {sla.recycle_after_hours:g}h in {state.stage}"
            recycle(d, "uncontacted", since=deadline, why=why)
            return
        escalate = sla.escalate_after_hours
        if (
            escalate is not None
            and not state.sla_escalated
            and now >= state.stage_since + timedelta(hours=escalate)
        ):
            d.update(sla_escalated=True)
            queue_followup(d, "sla_breach", f"no sales touch within {escalate:g}h in {state.stage}")
            return
    if state.stage == "recycled":
        _requeue_if_due(d)
        return
    if state.stage in ("lead", "nurturing"):
        behaviour = behaviour_score(state, now, rules)
        score = weigh(state.fit_score, behaviour, rules)
        if score >= rules.mql.threshold and behaviour >= rules.mql.min_behaviour:
            reason = f"priority {score:.1f} reached the MQL threshold {rules.mql.threshold:g}"
            d.move("mql", at=now, reason=reason)
            queue_followup(d, "new_mql", reason)
        elif state.stage == "lead" and behaviour > 0:
            d.move("nurturing", at=now, reason="engaged below the MQL threshold")


def _requeue_if_due(d: Draft) -> None:
    state, rules, now = d.state, d.rules, d.now
    info = state.recycle
    if info is None:
        return
    cooldown = timedelta(days=rules.recycling.requeue_cooldown_days)
    if state.last_requeue_at is not None and now < state.last_requeue_at + cooldown:
        return
    why_now: WhyNow
    if info.revisit_on is not None and local_date(now, rules.calendar) >= info.revisit_on:
        why_now, reason = "revisit_due", f"revisit date {info.revisit_on.isoformat()} reached"
    else:
        gained = read(info.gained, now)
        threshold = float(rules.recycling.reengage_threshold.of(info.reason))
        if gained < threshold:
            return
        why_now = "re_engaged"
        reason = f"re-engaged: {gained:.1f} points since recycle ({info.reason}) >= {threshold:g}"
    d.move("mql", at=now, reason=reason)
    d.update(last_requeue_at=now)
    queue_followup(d, why_now, reason)
