"""The check every drill ends with: PostgreSQL against the pure core, over the exact stream.

- ``event_log`` holds every distinct valid event id of the stream once, none else, bots marked
  as bots (nothing lost, nothing invented);
- ``dead_letters`` holds one row per invalid message — matched by source topic and payload
  digest, with the decoder's reason and a non-empty error — and no more (nothing counted twice);
- every lead's fit score, behaviour score and set of applied events equal what the pure core
  folded over the stream says (an event applied twice would show in the behaviour score);
- every lead's stage and open follow-up equal what the pure core decides over the same events
  in the order and at the time the worker applied them (stages depend on that order);
- the output topics, read by the drill as a downstream consumer would (outputs.py), carry
  every dead letter, ledger entry, follow-up version and nurture enrollment PostgreSQL holds,
  none counted twice, and the open follow-ups they describe are PostgreSQL's.

The fold itself is the integration tests' oracle (``bench/oracle.py``),
imported rather than copied.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from bench.oracle import expected_states, score_mismatches, stored_states
from events import Rejection, decode
from events.tracking import BehaviourTracked
from scoring.rules import RuleSet, load_rules
from workers.bots import BotFilter
from workers.process import ROOT

from .harness import Supervisor, wait_for
from .outputs import (
    OutputTap,
    check_outputs,
    expected_lifecycle,
    lifecycle_mismatches,
    processing_times,
)
from .report import DrillResult

#: Scores are compared decayed to one fixed instant, so the wall clock cannot matter.
AT = datetime(2030, 1, 1, tzinfo=UTC)
MAX_MESSAGE_BYTES = 64 * 1024  # the worker's default LEADCYCLE_MAX_MESSAGE_BYTES


def rules() -> RuleSet:
    return load_rules(ROOT / "rules" / "default.toml")


def digest(raw: bytes | None) -> str:
    """The payload digest a dead letter's message_id ends with (workers/ingest.py)."""
    return hashlib.sha256(raw or b"").hexdigest()[:12]


@dataclass
class Expected:
    """What the worker must end up with, derived from the produced stream alone."""

    messages: int = 0
    valid_messages: int = 0
    ids: set[str] = field(default_factory=set)  # distinct valid event ids, bots included
    bots: set[str] = field(default_factory=set)
    #: (topic suffix, payload digest) -> how many invalid messages carry it
    letters: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (topic suffix, payload digest) -> the reason the decoder gives (None: it raised)
    reasons: dict[tuple[str, str], str | None] = field(default_factory=dict)
    #: messages the decoder raised on instead of answering (a worker bug if any)
    undecodable: list[str] = field(default_factory=list)
    oracle_input: list[tuple[str, bytes]] = field(default_factory=list)
    #: (topic suffix, payload digest) -> a field the dead letter's error must name
    must_name: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (topic suffix, partition) -> corrupt record batches published there: each must leave
    #: a dead letter with reason ``undecodable_batch`` (its message id is the worker's choice)
    batch_letters: Counter[tuple[str, int]] = field(default_factory=Counter)

    def refuse(self, topic: str, value: bytes, *, naming: str) -> None:
        """Expect ``value`` dead-lettered, with an error naming ``naming``, whatever today's
        decoder says of it (inputs it passes but the database cannot store)."""
        key = (topic, digest(value))
        self.messages += 1
        self.letters[key] += 1
        self.reasons[key] = None
        self.must_name[key] = naming

    def add_valid(self, topic: str, value: bytes) -> None:
        """Expect ``value`` scored (published after the rest of the stream)."""
        more = expect([(topic, value)])
        self.messages += 1
        self.valid_messages += more.valid_messages
        self.ids |= more.ids
        self.bots |= more.bots
        self.oracle_input += more.oracle_input

    @property
    def invalid(self) -> int:
        return sum(self.letters.values())

    @property
    def stream_duplicates(self) -> int:
        return self.valid_messages - len(self.ids)


def expect(messages: Iterable[tuple[str, bytes]]) -> Expected:
    """Classify ``(topic suffix, value)`` messages with the worker's own decoder."""
    bots = BotFilter()
    exp = Expected()
    for topic, value in messages:
        exp.messages += 1
        try:
            event = decode(topic, value, max_bytes=MAX_MESSAGE_BYTES)
        except Exception as exc:  # the worker calls the same decoder: see the fuzz drill
            key = (topic, digest(value))
            exp.letters[key] += 1
            exp.reasons[key] = None
            exp.undecodable.append(f"{topic} {value[:60]!r}...: {type(exc).__name__}: {exc}")
            continue
        if isinstance(event, Rejection):
            key = (topic, digest(value))
            exp.letters[key] += 1
            exp.reasons[key] = event.reason
            continue
        exp.valid_messages += 1
        exp.ids.add(event.event_id)
        exp.oracle_input.append((topic, value))
        if isinstance(event, BehaviourTracked) and bots.is_bot(
            event.context.user_agent if event.context else None
        ):
            exp.bots.add(event.event_id)
    return exp


def fill_in(result: DrillResult, exp: Expected) -> None:
    result.events_in = exp.messages
    result.distinct_valid = len(exp.ids)
    result.stream_duplicates = exp.stream_duplicates
    result.expected_dead_letters = exp.invalid


async def check(dsn: str, exp: Expected, result: DrillResult, *, ruleset: RuleSet) -> None:
    """Compare the database with ``exp`` and the oracle; record counts and every mismatch."""
    fill_in(result, exp)
    if exp.undecodable:  # the root cause of whatever else fails: say it first
        result.problems.insert(
            0,
            f"events.decode raised on {len(exp.undecodable)} messages instead of rejecting them"
            f" (the worker exits 70 on such a batch, and again on every redelivery), e.g. "
            f"{exp.undecodable[0][:200]}",
        )
    conn = await asyncpg.connect(dsn)
    try:
        logged = {
            r["event_id"]: r["disposition"]
            for r in await conn.fetch("SELECT event_id, disposition FROM event_log")
        }
        letters = await conn.fetch(
            "SELECT message_id, source_topic, partition, reason, error FROM dead_letters"
        )
    finally:
        await conn.close()
    result.scored = sum(1 for d in logged.values() if d == "accepted")
    result.bots = sum(1 for d in logged.values() if d == "bot")
    result.dead_letters = len(letters)

    lost = exp.ids - logged.keys()
    invented = logged.keys() - exp.ids
    if lost:
        result.fail(f"{len(lost)} valid events missing from event_log, e.g. {sorted(lost)[:5]}")
    if invented:
        result.fail(f"{len(invented)} event_log rows not in the stream: {sorted(invented)[:5]}")
    wrong_bots = {i for i, d in logged.items() if (d == "bot") != (i in exp.bots)}
    if wrong_bots:
        result.fail(f"{len(wrong_bots)} events with the wrong bot disposition")

    found: Counter[tuple[str, str]] = Counter()
    batches: Counter[tuple[str, int]] = Counter()
    for row in letters:
        if not row["reason"] or not row["error"]:
            result.fail(f"dead letter {row['message_id']} has no reason or error")
        if row["reason"] == "undecodable_batch":
            batches[(row["source_topic"].rsplit(".", 1)[-1], row["partition"])] += 1
            continue
        topic, _, _, payload_digest = row["message_id"].split(":")
        key = (topic, payload_digest)
        found[key] += 1
        want = exp.reasons.get(key)
        if want is not None and row["reason"] != want:
            result.fail(f"dead letter {row['message_id']}: reason {row['reason']}, want {want}")
        naming = exp.must_name.get(key)
        if naming is not None and naming not in row["error"]:
            result.fail(
                f"dead letter {row['message_id']} ({row['reason']}) does not name the field "
                f"{naming!r}: {row['error'][:160]}"
            )
    for where, n in sorted(exp.batch_letters.items()):
        if batches[where] < n:
            result.fail(
                f"{n - batches[where]} corrupt record batches on {where[0]}[{where[1]}] left no "
                "undecodable_batch dead letter"
            )
    stray = set(batches) - set(exp.batch_letters)
    if stray:
        result.fail(f"undecodable_batch dead letters where no corrupt batch was: {sorted(stray)}")
    missing, extra = exp.letters - found, found - exp.letters
    if missing:
        result.fail(f"{sum(missing.values())} invalid messages not dead-lettered")
    if extra:
        result.fail(
            f"{sum(extra.values())} dead letters more than invalid messages (counted twice?)"
        )

    want_states = expected_states(exp.oracle_input, ruleset, now=AT)
    problems = score_mismatches(want_states, await stored_states(dsn), ruleset, at=AT)
    if problems:
        result.fail(f"{len(problems)} leads differ from the pure core, e.g. {problems[:3]}")
    lifecycle = expected_lifecycle(
        exp.oracle_input, ruleset, applied_at=await processing_times(dsn)
    )
    moved = await lifecycle_mismatches(dsn, lifecycle)
    if moved:
        result.fail(
            f"{len(moved)} stages or open follow-ups differ from the pure core, e.g. {moved[:3]}"
        )
    stages = Counter(lifecycle.stages.values())
    result.notes.append(
        f"oracle: {len(want_states):,} leads compared (fit, behaviour, applied, stage: "
        + ", ".join(f"{k} {n}" for k, n in sorted(stages.items()))
        + f"; {len(lifecycle.open_followups):,} open follow-ups)"
    )


def event_id(value: bytes) -> str | None:
    """The ``event_id`` of a JSON message, if it has a string one."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    found = doc.get("event_id") if isinstance(doc, dict) else None
    return found if isinstance(found, str) else None


async def wait_all_in(
    dsn: str,
    exp: Expected,
    sup: Supervisor,
    result: DrillResult,
    *,
    seconds: float,
    stall: float | None = None,
) -> float | None:
    """Seconds until event_log and dead_letters hold the whole stream; on a timeout, a stall
    (``stall`` s without progress) or a crash loop, None and a problem with the counts reached
    and the worker log's tail."""
    letters = exp.invalid + exp.batch_letters.total()
    ok, now, waited = await wait_for(
        dsn,
        lambda c: c.events >= len(exp.ids) and c.letters >= letters,
        seconds=seconds,
        sup=sup,
        stall=stall,
    )
    if ok:
        return waited
    result.fail(
        f"{'crash loop' if sup.crash_loop else 'timeout or stall'} after {waited:.0f} s at "
        f"{now.events:,}/{len(exp.ids):,} events, {now.letters:,}/{letters:,} dead letters"
        f":\n{sup.tail(1500)}"
    )
    return None


async def conclude(
    dsn: str,
    sup: Supervisor,
    exp: Expected,
    result: DrillResult,
    tap: OutputTap,
    *,
    outbox_grace: float = 25.0,
    exempt: tuple[datetime, datetime] | None = None,
) -> None:
    """Let the outbox drain and the output tap catch up, stop the worker, then run
    :func:`check` and :func:`~.outputs.check_outputs` and record restarts."""
    drained, last, _ = await wait_for(dsn, lambda c: c.outbox == 0, seconds=outbox_grace)
    if not drained:
        result.fail(f"{last.outbox} output messages still in the outbox after {outbox_grace:.0f} s")
    await tap.settle()
    await sup.stop()
    result.restarts = sup.restarts
    result.unplanned_exits = len(sup.exit_codes)
    if sup.exit_codes:
        result.fail(
            f"the worker exited {len(sup.exit_codes)} times unasked (codes {sup.exit_codes})"
        )
    result.duplicates_suppressed = sup.duplicates_suppressed()
    await check(dsn, exp, result, ruleset=rules())
    await check_outputs(dsn, tap, result, exempt=exempt)
