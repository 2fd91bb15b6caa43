"""What the pure core says a stream should produce: the oracle for crash and scale tests.

Folds ``scoring.engine.apply`` (and ``stitch`` on identify) over the valid, non-bot, distinct
events of a stream in stream order, resolving anonymous visitors exactly as the contract says.
Fit and behaviour scores do not depend on the order events are applied in, so they must equal
what the worker stored, however it was interrupted or split across processes.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

import asyncpg

from events import BehaviourTracked, Rejection, decode
from scoring.engine import apply, stitch
from scoring.rules import RuleSet
from scoring.scores import behaviour_score
from scoring.state import ANON_PREFIX, LeadState
from workers.bots import BotFilter


def expected_states(
    messages: Iterable[tuple[str, bytes]], rules: RuleSet, *, now: datetime
) -> dict[str, LeadState]:
    """``(topic suffix, value)`` in stream order -> final state of every known lead."""
    bots = BotFilter()
    states: dict[str, LeadState] = {}
    links: dict[str, str] = {}
    history: dict[str, list[BehaviourTracked]] = defaultdict(list)
    seen: set[str] = set()
    for topic, value in messages:
        event = decode(topic, value, max_bytes=64 * 1024)
        if isinstance(event, Rejection) or event.event_id in seen:
            continue
        seen.add(event.event_id)
        if isinstance(event, BehaviourTracked):
            if bots.is_bot(event.context.user_agent if event.context else None):
                continue
            if event.lead_id:
                subject = event.lead_id
            elif event.type == "identify" and event.email:
                subject = f"email:{event.email}"
            else:
                assert event.anonymous_id is not None
                subject = links.get(event.anonymous_id, f"{ANON_PREFIX}{event.anonymous_id}")
        else:
            subject = event.lead_id
        state = states.get(subject) or LeadState.new(subject, now=now)
        if isinstance(event, BehaviourTracked) and event.type == "identify" and event.anonymous_id:
            anon_subject = f"{ANON_PREFIX}{event.anonymous_id}"
            links.setdefault(event.anonymous_id, subject)
            if anon_subject in states and not state.anonymous:
                state = stitch(
                    state, states.pop(anon_subject), history.pop(anon_subject, []), rules, now=now
                ).state
        state = apply(state, event, rules, now=now).state
        states[subject] = state
        if isinstance(event, BehaviourTracked) and subject.startswith(ANON_PREFIX):
            history[subject].append(event)
    return {k: v for k, v in states.items() if not v.anonymous}


async def stored_states(dsn: str) -> dict[str, LeadState]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT lead_id, state::text AS s FROM leads WHERE NOT anonymous")
    finally:
        await conn.close()
    return {r["lead_id"]: LeadState.model_validate_json(r["s"]) for r in rows}


def score_mismatches(
    expected: dict[str, LeadState], stored: dict[str, LeadState], rules: RuleSet, *, at: datetime
) -> list[str]:
    """Leads whose fit or behaviour score (at ``at``) or applied events differ."""
    problems = []
    for lead_id in sorted(set(expected) | set(stored)):
        want, got = expected.get(lead_id), stored.get(lead_id)
        if want is None or got is None:
            problems.append(f"{lead_id}: {'missing' if got is None else 'unexpected'}")
            continue
        if not math.isclose(want.fit_score, got.fit_score, abs_tol=1e-6):
            problems.append(f"{lead_id}: fit {got.fit_score} != {want.fit_score}")
        b_want, b_got = behaviour_score(want, at, rules), behaviour_score(got, at, rules)
        if not math.isclose(b_want, b_got, rel_tol=1e-9, abs_tol=1e-6):
            problems.append(f"{lead_id}: behaviour {b_got} != {b_want}")
        if set(want.applied) != set(got.applied):
            problems.append(
                f"{lead_id}: {len(got.applied)} events applied, want {len(want.applied)}"
            )
    return problems


def event_ids(messages: Iterable[tuple[str, bytes]]) -> set[str]:
    ids = set()
    for topic, value in messages:
        if not isinstance(decode(topic, value, max_bytes=64 * 1024), Rejection):
            ids.add(json.loads(value)["event_id"])
    return ids
