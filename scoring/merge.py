"""One lead per person: folding a lead that turned out to be the same person into another.

The website may identify a visitor by email (the lead ``email:<address>``) before the CRM's
profile for that email arrives under the CRM's own lead id. When the CRM lead learns the email,
the email lead is merged into it, whichever arrived first; the CRM id survives.

The merged scores are those the survivor would have if every event of both had been applied to
it: decay accumulators add up exactly, and each cap window holds the raw points of both with its
credit clamped to the cap once (an adjustment entry takes back what two leads were credited
beyond it). Fit is the merged profile's: the survivor's known values win, the absorbed lead
fills the gaps; the absorbed lead's fit entries, which move along with its ledger, are reversed
by entries of the merge. So the survivor's ledger, with the absorbed one's moved into it, still
reproduces its scores. Pure: the worker moves the rows.
"""

from __future__ import annotations

from datetime import date, datetime, time

from scoring.behaviour import prune_caps
from scoring.decay import add, newest_of, read, worth
from scoring.decision import Decision, Draft
from scoring.engine import refit
from scoring.errors import ScoringError
from scoring.fit import exclusion_match
from scoring.ledger import LedgerEntry, entry_id, fit_entry
from scoring.lifecycle import LEVEL, advance_by_time, disqualify, merge_bant, queue_followup
from scoring.rules import RuleSet
from scoring.state import ANON_PREFIX, MAX_LINKED_IDS, LeadState

#: Email leads (made by an identify that named no lead id) are named ``email:<address>``.
EMAIL_PREFIX = "email:"


def merge_id(absorbed: str) -> str:
    """The id the merge's own ledger entries and transitions carry (``merge|<absorbed>``)."""
    return f"merge|{absorbed}"


def merge(survivor: LeadState, absorbed: LeadState, rules: RuleSet, *, now: datetime) -> Decision:
    """Fold ``absorbed`` into ``survivor`` (in place); the caller retires ``absorbed``.

    Raises:
        ScoringError: either is an anonymous visitor (visitors are stitched, not merged), or
            both are the same lead.
    """
    if survivor.anonymous or absorbed.anonymous or survivor.lead_id == absorbed.lead_id:
        raise ScoringError(f"cannot merge {absorbed.lead_id!r} into {survivor.lead_id!r}")
    s, a = survivor, absorbed
    cause = merge_id(a.lead_id)
    d = Draft(s, rules, now, event_id=cause)
    _merge_behaviour(d, a)
    _reverse_fit(d, a)
    s.profile.merge(
        {
            k: v
            for k, v in a.profile.as_dict().items()
            if v is not None and getattr(s.profile, k) is None
        }
    )
    s.bant = merge_bant(a.bant, s.bant)  # the survivor's known facts win
    s.events += a.events
    s.created_at = min(s.created_at, a.created_at)
    s.last_touch_at = _latest(s.last_touch_at, a.last_touch_at)
    s.last_requeue_at = _latest(s.last_requeue_at, a.last_requeue_at)
    if s.recycle is None and a.recycle is not None:
        s.recycle = a.recycle
    keep = rules.followup.activity_memory
    s.activities = sorted(
        {x.event_id: x for x in (*s.activities, *a.activities)}.values(),
        key=lambda x: (x.at, x.event_id),
        reverse=True,
    )[:keep]
    linked = [*s.linked_anonymous_ids]
    for anon in a.linked_anonymous_ids:
        if anon not in linked:
            linked.append(anon)
    s.linked_anonymous_ids = linked[-MAX_LINKED_IDS:]
    d.changed = True
    refit(d, cause, now)  # the merged profile's fit: an entry per rule whose points changed
    if a.excluded and not s.excluded:
        reason = a.exclusion_reason or "invalid"
        disqualify(d, reason, at=now, why=f"merged with {a.lead_id}, which was excluded")
    if not s.excluded:
        rule = exclusion_match(s.profile, rules)
        if rule is not None:
            disqualify(d, rule.reason, at=now, why=f"exclusion rule {rule.id} ({rule.reason})")
    if not s.excluded and LEVEL.get(a.stage, 0) > LEVEL.get(s.stage, 0):
        why = f"merged with {a.lead_id}, which was in {a.stage}"
        d.move(a.stage, at=now, reason=why)
        s.stage_touched = a.stage_touched
        if a.stage == "mql":
            queue_followup(d, "new_mql", why)
    advance_by_time(d)
    return d.finish()


def _merge_behaviour(d: Draft, a: LeadState) -> None:
    s, rules, now = d.state, d.rules, d.now
    for g in a.decay:
        add(s.decay, g.half_life_days, g.ref, g.value)
    if a.recycle is not None and s.recycle is not None:
        for g in a.recycle.gained:
            if g.ref >= s.recycle.since:
                add(s.recycle.gained, g.half_life_days, g.ref, g.value)
    s.reading = None
    by_id = {r.id: r for r in rules.behaviour.rules}
    score = read(s.decay, now)
    for key, (raw_a, credited_a) in a.caps.items():
        bucket = s.caps.get(key)
        if bucket is None:
            s.caps[key] = [raw_a, credited_a]
            continue
        raw, credited = bucket[0] + raw_a, bucket[1] + credited_a
        rule_id, _, day = key.rpartition("@")
        rule = by_id.get(rule_id)
        target = credited
        if rule is not None and rule.cap is not None:
            target = max(-rule.cap, min(rule.cap, raw))
        bucket[0], bucket[1] = raw, target
        adjust = target - credited
        if adjust == 0 or rule is None:
            continue
        half_life = rules.behaviour.half_life(rule)
        anchor = min(datetime.combine(date.fromisoformat(day), time(0), rules.calendar.zone), now)
        add(s.decay, half_life, anchor, adjust)
        after = read(s.decay, now)
        ref = newest_of(s.decay, half_life) or anchor
        d.ledger.append(
            LedgerEntry(
                entry_id(s.lead_id, f"{d.event_id}@{day}", rule.id),
                s.lead_id,
                f"{d.event_id}@{day}",
                rule.id,
                rules.version,
                "behaviour",
                anchor,
                0.0,
                adjust,
                worth(adjust, anchor, half_life, now, ref),
                score,
                after,
                anchor,
                half_life,
            )
        )
        score = after
    s.reading = None
    s.caps_expiry = None
    prune_caps(s, rules)


def _reverse_fit(d: Draft, a: LeadState) -> None:
    """Entries taking back the absorbed lead's fit points (its fit entries move with it)."""
    s, rules = d.state, d.rules
    score = s.fit_score + a.fit_score
    for part in a.fit:
        if part.rule_id is None or part.points == 0:
            continue
        event = f"{d.event_id}~{a.lead_id}"
        entry = fit_entry(
            s.lead_id,
            event,
            part.rule_id,
            rules.version,
            at=d.now,
            raw=-part.points,
            delta=-part.points,
            before=score,
        )
        d.ledger.append(entry)
        score = entry.score_after


def _latest(x: datetime | None, y: datetime | None) -> datetime | None:
    if x is None:
        return y
    return x if y is None else max(x, y)


def is_email_lead(lead_id: str) -> bool:
    """Whether ``lead_id`` names a lead made by an identify that gave only an email."""
    return lead_id.startswith(EMAIL_PREFIX)


def is_crm_lead(lead_id: str) -> bool:
    """A lead id given by a producer (CRM, form, site), not made up by leadcycle."""
    return not lead_id.startswith((EMAIL_PREFIX, ANON_PREFIX))
