"""What the pure core says a stream should produce: the oracle for crash and scale tests
and the fault drills (`./run drills`).

Folds the valid, non-bot, distinct events of a stream in stream order with ``scoring.fold.Fold``
(the fold ``leadcycle replay`` runs: ``apply``, ``stitch`` on identify, anonymous links).
Fit and behaviour scores do not depend on the order events are applied in, so they must equal
what the worker stored, however it was interrupted or split across processes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime

import asyncpg

from events import BehaviourTracked, Rejection, decode
from events.decode import InputEvent
from scoring.fold import Fold
from scoring.intake import admitted, qualify, source_of
from scoring.rules import RuleSet
from scoring.scores import behaviour_score
from scoring.state import LeadState, decode_state
from workers.bots import BotFilter


def expected_states(
    messages: Iterable[tuple[str, bytes]],
    rules: RuleSet,
    *,
    now: datetime,
    assigned: Mapping[str, str] | None = None,
) -> dict[str, LeadState]:
    """``(topic suffix, value)`` in stream order -> final state of every known lead.

    ``assigned``: event id -> lead for identify events without a lead id that the worker sent
    to the lead with that email (see ``scoring.fold.Fold``).
    """
    fold = Fold(rules, now=now, assigned=assigned)
    for _, _, event in scored_events(messages):
        fold.add(event)
    return fold.leads()


def scored_events(
    messages: Iterable[tuple[str, bytes]],
) -> Iterator[tuple[str, bytes, InputEvent]]:
    """``(topic, value, event)`` of the messages the worker scores, in stream order: valid,
    the first of their event id in their source, not from a bot. Each event is known by its
    source-qualified id, as the worker knows it (``scoring.intake``); its time is as stated
    (the streams the oracle checks have no clock running ahead of the worker's)."""
    bots = BotFilter()
    seen: set[str] = set()
    for topic, value in messages:
        event = decode(topic, value, max_bytes=64 * 1024)
        if isinstance(event, Rejection):
            continue
        qualified = qualify(source_of(topic, event), event.event_id)
        if qualified in seen:
            continue
        seen.add(qualified)
        if isinstance(event, BehaviourTracked) and bots.is_bot(
            event.context.user_agent if event.context else None
        ):
            continue
        yield topic, value, admitted(event, qualified, event.occurred_at)


async def stored_states(dsn: str) -> dict[str, LeadState]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT lead_id, state FROM leads WHERE NOT anonymous AND merged_into IS NULL"
        )
    finally:
        await conn.close()
    return {r["lead_id"]: decode_state(r["state"]) for r in rows}


def score_mismatches(
    expected: dict[str, LeadState], stored: dict[str, LeadState], rules: RuleSet, *, at: datetime
) -> list[str]:
    """Leads whose fit or behaviour score (at ``at``) or number of applied events differ."""
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
        if want.events != got.events:
            problems.append(f"{lead_id}: {got.events} events applied, want {want.events}")
    return problems


def event_ids(messages: Iterable[tuple[str, bytes]]) -> set[str]:
    ids = set()
    for topic, value in messages:
        if not isinstance(decode(topic, value, max_bytes=64 * 1024), Rejection):
            ids.add(json.loads(value)["event_id"])
    return ids
