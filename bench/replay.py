"""Rescoring every retained event under a new rule-set version, with the pure core, in memory.

The operator command (``leadcycle replay``) is not built yet; this measures what it would cost:
read event_log in pages ordered by event time, validate each payload, and fold
``scoring.engine.apply`` (``stitch`` on identify) exactly as tests/integration/reference.py does.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import asyncpg

from events import BehaviourTracked
from events.decode import INPUT_MODELS, InputEvent
from scoring.engine import apply, stitch
from scoring.rules import RuleSet
from scoring.state import ANON_PREFIX, LeadState

PAGE = 5000


@dataclass(frozen=True)
class Replay:
    events: int
    leads: int
    seconds: float
    rules_version: str

    @property
    def rate(self) -> float:
        return self.events / max(self.seconds, 1e-9)


class _Bar:
    """A one-line progress bar on stderr (stdout stays for the figures)."""

    def __init__(self, total: int) -> None:
        self.total, self.started, self.shown = max(total, 1), time.monotonic(), 0.0

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.shown < 0.2:
            return
        self.shown = now
        filled = int(30 * done / self.total)
        rate = done / max(now - self.started, 1e-9)
        sys.stderr.write(
            f"\rreplay [{'#' * filled}{'.' * (30 - filled)}] {done:,}/{self.total:,} "
            f"{rate:,.0f} events/s"
        )
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


class _Fold:
    """The reference fold: subjects, anonymous links, stitching on identify."""

    def __init__(self, rules: RuleSet, now: datetime) -> None:
        self.rules, self.now = rules, now
        self.states: dict[str, LeadState] = {}
        self.links: dict[str, str] = {}
        self.history: dict[str, list[BehaviourTracked]] = defaultdict(list)

    def subject(self, event: InputEvent) -> str:
        if not isinstance(event, BehaviourTracked) or event.lead_id:
            return event.lead_id or ""
        if event.type == "identify" and event.email:
            return f"email:{event.email}"
        return self.links.get(event.anonymous_id or "", f"{ANON_PREFIX}{event.anonymous_id}")

    def add(self, event: InputEvent) -> None:
        subject = self.subject(event)
        state = self.states.get(subject) or LeadState.new(subject, now=self.now)
        tracked = isinstance(event, BehaviourTracked)
        if tracked and event.type == "identify" and event.anonymous_id:
            anon = f"{ANON_PREFIX}{event.anonymous_id}"
            self.links.setdefault(event.anonymous_id, subject)
            if anon in self.states and not state.anonymous:
                history = self.history.pop(anon, [])
                anon_state = self.states.pop(anon)
                state = stitch(state, anon_state, history, self.rules, now=self.now).state
        self.states[subject] = apply(state, event, self.rules, now=self.now).state
        if isinstance(event, BehaviourTracked) and subject.startswith(ANON_PREFIX):
            self.history[subject].append(event)


async def _replay(dsn: str, rules: RuleSet) -> Replay:
    conn = await asyncpg.connect(dsn)
    try:
        total = await conn.fetchval("SELECT count(*) FROM event_log WHERE disposition = 'accepted'")
        bar, fold, done = _Bar(total), _Fold(rules, datetime.now(UTC)), 0
        started = time.monotonic()
        async with conn.transaction():
            # One server-side cursor: one sort, then pages of PAGE rows (no OFFSET re-scans).
            cursor = await conn.cursor(
                """SELECT topic, payload::text AS payload FROM event_log
                    WHERE disposition = 'accepted' ORDER BY occurred_at, event_id"""
            )
            while rows := await cursor.fetch(PAGE):
                for row in rows:
                    model = INPUT_MODELS[row["topic"]][0]
                    fold.add(cast(InputEvent, model.model_validate_json(row["payload"])))
                done += len(rows)
                bar.update(done)
        seconds = time.monotonic() - started
        bar.update(done, final=True)
    finally:
        await conn.close()
    leads = sum(1 for s in fold.states.values() if not s.anonymous)
    return Replay(done, leads, seconds, rules.version)


def run_replay(dsn: str, rules: RuleSet) -> Replay:
    """Rescore the event log under ``rules`` given a new version (so every ledger entry and
    score would be re-derived, as a rule change demands)."""
    bumped = rules.model_copy(update={"version": f"{rules.version}+replay"})
    return asyncio.run(_replay(dsn, bumped))
