"""Folding a whole event history into lead states, and grafting a rescored state onto a stored one.

:class:`Fold` is what ``leadcycle replay`` runs over the event log, what the integration tests
use as their oracle and what the replay benchmark measures: each event goes to its subject (the
lead id, else the anonymous visitor ``anon:<id>``, else the lead an earlier ``identify`` linked
that visitor to), an ``identify`` stitches the visitor's history into the lead (unless it is an
unsigned browser one that named an existing lead, see :mod:`scoring.trust`), and
:func:`scoring.engine.apply` does the rest. Pure: no I/O, ``now`` is passed in. Decoding and bot
filtering happen before, outside ``scoring/``.

:func:`rescore` takes the *scoring* part of a replayed state (fit, decay accumulators, caps,
recent activities, rule-set version) and puts it on the stored state, whose lifecycle facts
(stage, BANT, recycle, follow-up clock, profile, event count) the worker decided at
processing time and a replay cannot re-decide: a fold judges every threshold at one ``now``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime

from events.outcomes import OutcomeRecorded
from events.profiles import ProfileUpdated
from events.tracking import BehaviourTracked
from scoring.decay import DecayGroup, add
from scoring.decision import Decision
from scoring.engine import apply, stitch
from scoring.ledger import LedgerEntry
from scoring.merge import EMAIL_PREFIX, is_crm_lead, merge
from scoring.rules import RuleSet
from scoring.scores import behaviour_score, priority
from scoring.state import ANON_PREFIX, LeadState
from scoring.trust import vouched

Event = BehaviourTracked | ProfileUpdated | OutcomeRecorded

#: The fields of :class:`LeadState` a rule set decides from the events alone (``recycle.gained``
#: too, see :func:`rescore`); everything else is lifecycle, decided at processing time.
SCORING_FIELDS = ("fit", "fit_score", "fit_grade", "decay", "caps", "activities", "rules_version")


class Fold:
    """Lead states built by applying events one after the other.

    Args:
        rules: the rule set every event is scored with.
        now: the processing time handed to the engine (thresholds are judged at it; scores
            depend on event times only).
        links: anonymous ids already known to belong to a lead (``identity_links``): their
            events go straight to that lead. Without it the first ``identify`` of an
            anonymous id, in fold order, links it.
        assigned: event id -> subject, for ``identify`` (and signed ``unsubscribe``) events
            without a lead id whose lead was resolved elsewhere (the worker's lookup by
            email). Without it such an identify is about ``email:<email>``.
    """

    def __init__(
        self,
        rules: RuleSet,
        *,
        now: datetime,
        links: Mapping[str, str] | None = None,
        assigned: Mapping[str, str] | None = None,
    ) -> None:
        self.rules, self.now = rules, now
        self.states: dict[str, LeadState] = {}
        self.links: dict[str, str] = dict(links or {})
        self.assigned: Mapping[str, str] = assigned or {}
        #: ``anon:<id>`` subject -> the lead its history was stitched into.
        self.merged: dict[str, str] = {}
        #: Ids of the events applied (the worker's event log plays this part).
        self.seen: set[str] = set()
        #: email -> the CRM lead whose profile holds it (the first one: later ones are
        #: duplicates, reported and not merged).
        self.by_email: dict[str, str] = {}
        #: merged lead -> the lead it lives on as (``scoring.merge``).
        self.forward: dict[str, str] = {}
        #: ``(absorbed, survivor)`` of every merge, in order.
        self.merges: list[tuple[str, str]] = []
        self._history: dict[str, list[BehaviourTracked]] = defaultdict(list)

    def subject(self, event: Event) -> str:
        """Whom ``event`` is about, given what the fold has seen so far."""
        return self._follow(self._subject(event))

    def _subject(self, event: Event) -> str:
        if not isinstance(event, BehaviourTracked) or event.lead_id:
            return event.lead_id or ""
        if event.type == "identify" and event.email and self._links(event):
            return (
                self.assigned.get(event.event_id)
                or self.by_email.get(event.email)
                or f"{EMAIL_PREFIX}{event.email}"
            )
        if event.type == "unsubscribe" and event.event_id in self.assigned:
            return self.assigned[event.event_id]  # a signed link: the lead of its email
        anonymous_id = event.anonymous_id or ""
        return self.links.get(anonymous_id) or f"{ANON_PREFIX}{anonymous_id}"

    def _follow(self, subject: str) -> str:
        hops = 0
        while subject in self.forward and hops < 5:
            subject, hops = self.forward[subject], hops + 1
        return subject

    def add(self, event: Event) -> list[Decision]:
        """Apply ``event`` to its subject; returns the decisions taken (a stitch, then the
        apply). A duplicate event id yields a decision with ``duplicate=True``."""
        subject = self.subject(event)
        state = self.states.get(subject) or LeadState.new(subject, now=self.now)
        if event.event_id in self.seen:
            return [Decision(state=state, excluded=state.excluded, duplicate=True)]
        self.seen.add(event.event_id)
        decisions = []
        if (
            isinstance(event, BehaviourTracked)
            and event.type == "identify"
            and event.anonymous_id
            and self._links(event)
        ):
            anon = f"{ANON_PREFIX}{event.anonymous_id}"
            retired = anon in self.merged or event.anonymous_id in self.links
            self.links.setdefault(event.anonymous_id, subject)
            if not retired and not state.anonymous:
                # Linked even if the visitor had no event yet (as the worker records it).
                history = self._history.pop(anon, [])
                self.states.pop(anon, None)
                stitched = stitch(state, event.anonymous_id, history, self.rules, now=self.now)
                self.merged[anon] = subject
                decisions.append(stitched)
                state = stitched.state
        decision = apply(state, event, self.rules, now=self.now)
        decisions.append(decision)
        self.states[subject] = decision.state
        if isinstance(event, ProfileUpdated) and is_crm_lead(subject) and state.profile.email:
            decisions += self._claim(subject, state.profile.email)
        if isinstance(event, BehaviourTracked) and subject.startswith(ANON_PREFIX):
            self._history[subject].append(event)
        return decisions

    def _claim(self, lead_id: str, email: str) -> list[Decision]:
        """A CRM lead's profile holds ``email``: the email lead of that address, if any, is
        the same person (merged into it); another CRM lead with it is a duplicate (kept)."""
        holder = self.by_email.setdefault(email, lead_id)
        absorbed = f"{EMAIL_PREFIX}{email}"
        if holder != lead_id or absorbed not in self.states:
            return []
        decision = merge(self.states[lead_id], self.states.pop(absorbed), self.rules, now=self.now)
        self.forward[absorbed] = lead_id
        self.merges.append((absorbed, lead_id))
        return [decision]

    def _links(self, event: BehaviourTracked) -> bool:
        """Whether an ``identify`` links its visitor to the lead of its email. An unsigned
        browser identify the worker assigned to no lead named a lead that already existed: it
        stayed the visitor's own event (docs/http.md, "Trust model")."""
        return vouched(event) or event.event_id in self.assigned

    def leads(self) -> dict[str, LeadState]:
        """The final state of every known (not anonymous) lead."""
        return {k: v for k, v in self.states.items() if not v.anonymous}


def gained_since(entries: Iterable[LedgerEntry], since: datetime) -> list[DecayGroup]:
    """The decay accumulators of the behaviour credited by events at or after ``since``.

    What :class:`~scoring.state.RecycleInfo` ``gained`` holds, rebuilt from a lead's ledger: a
    replay credits every event that occurred since the recycle, including one that reached
    the worker before its recycle outcome (which the worker could not count).
    """
    groups: list[DecayGroup] = []
    for e in entries:
        if e.kind == "behaviour" and e.occurred_at >= since and e.anchor and e.half_life_days:
            add(groups, e.half_life_days, e.anchor, e.points)
    return groups


def rescore(
    stored: LeadState,
    replayed: LeadState,
    *,
    now: datetime,
    gained: list[DecayGroup] | None = None,
) -> LeadState:
    """``stored`` with the scoring part of ``replayed``; lifecycle facts stay as stored.

    Args:
        stored: the state the worker keeps (stage, history, BANT, recycle, profile...).
        replayed: the same lead folded from its events under the new rule set.
        now: stamped as ``updated_at``.
        gained: the rebuilt ``recycle.gained`` (see :func:`gained_since`); ignored when the
            stored lead was never recycled.
    """
    new = stored.copy()
    scoring = replayed.copy()
    for f in SCORING_FIELDS:
        setattr(new, f, getattr(scoring, f))
    if new.recycle is not None and gained is not None:
        new.recycle.gained = gained
    new.reading = None  # decay replaced
    new.updated_at = now
    return new


def same_scoring(a: LeadState, b: LeadState) -> bool:
    """Whether two states of one lead agree on every scoring field (exactly)."""
    gained_a = a.recycle.gained if a.recycle else []
    gained_b = b.recycle.gained if b.recycle else []
    return gained_a == gained_b and all(getattr(a, f) == getattr(b, f) for f in SCORING_FIELDS)


def over_mql_threshold(state: LeadState, at: datetime, rules: RuleSet) -> bool:
    """Whether the lead's scores at ``at`` meet the MQL condition of ``rules`` (priority at the
    threshold and behaviour at ``mql.min_behaviour``), whatever its stage."""
    return (
        priority(state, at, rules) >= rules.mql.threshold
        and behaviour_score(state, at, rules) >= rules.mql.min_behaviour
    )
