"""``leadcycle replay``: rescore every lead from the retained event log under a rule set.

One REPEATABLE READ transaction: read the accepted ``event_log`` (one server-side cursor, by
event time then id), fold it with :class:`scoring.fold.Fold`, then walk the stored leads and,
where the scoring part of a lead's state differs, write the replayed scores back onto it
(:func:`scoring.fold.rescore`: lifecycle facts stay as the worker decided them) and replace its
ledger entries (the superseded ones move to ``score_ledger_history``). A worker committing to a
lead after the snapshot makes the write fail with a serialization error: the whole replay is
retried a few times, then reported. See docs/operations.md, "Changing the rules".
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, cast

import asyncpg

from events.decode import INPUT_MODELS, InputEvent
from infra import db, replaystore
from infra.replaystore import ScoreRow
from scoring.fold import Fold, gained_since, over_mql_threshold, rescore, same_scoring
from scoring.intake import admitted
from scoring.ledger import LedgerEntry
from scoring.rules import RuleSet
from scoring.scores import behaviour_score, priority
from scoring.state import LeadState, decode_state, encode_state

log = logging.getLogger(__name__)

PAGE = 5000
#: Errors that mean "a worker wrote to a lead this replay read": retry the whole replay.
CONFLICTS = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)


class ReplayConflict(Exception):
    """The replay kept conflicting with concurrent writes; nothing was written."""


class ProgressBar:
    """A one-line progress bar on stderr (stdout stays for the figures)."""

    def __init__(self, total: int, *, label: str = "replay") -> None:
        self.total, self.label = max(total, 1), label
        self.started, self.shown = time.monotonic(), 0.0

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.shown < 0.2:
            return
        self.shown = now
        filled = int(30 * done / self.total)
        rate = done / max(now - self.started, 1e-9)
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done:,}/{self.total:,} "
            f"{rate:,.0f} events/s"
        )
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


@dataclass
class ReplayReport:
    """What a replay read, decided and (unless a dry run) wrote."""

    events: int = 0
    leads: int = 0
    #: Reading and folding the log (the events/s figure).
    seconds: float = 0.0
    #: Everything, write-back and commit included.
    total_seconds: float = 0.0
    rules_from: dict[str, int] = field(default_factory=dict)  # stored version -> leads
    rules_to: str = ""
    fit_changed: int = 0
    behaviour_changed: int = 0
    #: Leads (known, not excluded) on the other side of the MQL threshold under the new rules.
    mql_now_above: int = 0
    mql_now_below: int = 0
    rewritten: int = 0
    unchanged: int = 0
    #: Leads left as they are because the log does not reproduce what the worker applied.
    skipped: list[str] = field(default_factory=list)
    #: Stored leads with no event in the log (left as they are).
    not_in_log: int = 0
    ledger_archived: int = 0
    ledger_written: int = 0
    attempts: int = 0
    dry_run: bool = True

    @property
    def rate(self) -> float:
        return self.events / max(self.seconds, 1e-9)


def run_replay(
    dsn: str,
    rules: RuleSet,
    *,
    current: RuleSet,
    now: datetime,
    dry_run: bool,
    attempts: int = 3,
    progress: bool = True,
) -> ReplayReport:
    """Replay the log of ``dsn`` under ``rules``; ``current`` is the rule set the workers run
    (the "before" side of the MQL comparison)."""
    return asyncio.run(
        replay(
            dsn,
            rules,
            current=current,
            now=now,
            dry_run=dry_run,
            attempts=attempts,
            progress=progress,
        )
    )


async def replay(
    dsn: str,
    rules: RuleSet,
    *,
    current: RuleSet,
    now: datetime,
    dry_run: bool,
    attempts: int = 3,
    progress: bool = True,
) -> ReplayReport:
    """See :func:`run_replay`. Raises :class:`ReplayConflict` after ``attempts`` conflicts."""
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        conn = await db.connect(dsn)
        try:
            report = await _replay_once(
                conn,
                rules,
                current,
                now=now,
                dry_run=dry_run,
                bar=ProgressBar if progress else None,
            )
            report.attempts = attempt
            return report
        except CONFLICTS as exc:
            last = exc
            log.warning("replay attempt %d conflicted with a concurrent write: %s", attempt, exc)
            if progress:
                sys.stderr.write(f"\nattempt {attempt} conflicted with a worker's write: {exc}\n")
        finally:
            await conn.close()
        await asyncio.sleep(0.5 * attempt)
    raise ReplayConflict(
        f"the replay conflicted with concurrent writes {attempts} times (last: {last}); "
        "nothing was written. A worker kept committing to leads the replay was rewriting: "
        "stop the workers (or wait for a quieter moment) and run it again."
    )


async def _replay_once(
    conn: asyncpg.Connection,
    rules: RuleSet,
    current: RuleSet,
    *,
    now: datetime,
    dry_run: bool,
    bar: Callable[[int], ProgressBar] | None,
) -> ReplayReport:
    report = ReplayReport(rules_to=rules.version, dry_run=dry_run)
    started = time.monotonic()
    async with conn.transaction(isolation="repeatable_read", readonly=dry_run):
        total = await replaystore.count_events(conn)
        fold = Fold(
            rules,
            now=now,
            links=await replaystore.links(conn),
            assigned=await replaystore.identify_assignments(conn),
        )
        recycled = await replaystore.recycled_leads(conn)
        credited: dict[str, list[LedgerEntry]] = defaultdict(list)  # recycled leads only
        shown = bar(total) if bar else None
        async for rows in replaystore.events(conn, page=PAGE):
            staged: list[LedgerEntry] = []
            for row in rows:
                model = INPUT_MODELS[row["topic"]][0]
                received = cast(InputEvent, model.model_validate_json(row["payload"]))
                # By the id and at the time the worker scored it (the log's columns).
                event = admitted(received, row["qualified_id"], row["occurred_at"])
                for decision in fold.add(event):
                    for entry in decision.ledger:
                        if not dry_run:
                            staged.append(entry)
                        if entry.lead_id in recycled and entry.kind == "behaviour":
                            credited[entry.lead_id].append(entry)
            if staged:
                await replaystore.stage_ledger(conn, staged)
            report.events += len(rows)
            if shown:
                shown.update(report.events)
        if shown:
            shown.update(report.events, final=True)
        report.seconds = time.monotonic() - started
        report.leads = len(fold.leads())
        if not dry_run:
            # A merged lead's entries live on its survivor (the worker moved them there too).
            await replaystore.forward_staged(conn, fold.merges)
        versions: Counter[str] = Counter()
        async for rows in replaystore.stored_states(conn, page=PAGE):
            targets: list[ScoreRow] = []
            for row in rows:
                stored = decode_state(row["state"])
                replayed = fold.states.get(row["lead_id"])
                if replayed is None:
                    report.not_in_log += 1
                    continue
                why = _diverges(stored, replayed)
                if why:
                    report.skipped.append(f"{stored.lead_id}: {why}")
                    continue
                since = stored.recycle.since if stored.recycle else None
                gained = gained_since(credited.get(stored.lead_id, ()), since) if since else None
                new = rescore(stored, replayed, now=now, gained=gained)
                versions[stored.rules_version or "?"] += 1
                _compare(report, stored, new, current, rules, now)
                if same_scoring(stored, new):
                    report.unchanged += 1
                else:
                    targets.append(_score_row(new, rules, now))
            report.rewritten += len(targets)
            if targets and not dry_run:
                await _write(conn, report, targets, rules.version, now)
        report.rules_from = dict(sorted(versions.items()))
    report.total_seconds = time.monotonic() - started
    return report


def _diverges(stored: LeadState, replayed: LeadState) -> str | None:
    """Why the replayed state cannot stand in for the stored one's scores, if it cannot."""
    if stored.events != replayed.events:
        return f"{replayed.events} events in the log, {stored.events} applied by the worker"
    if stored.profile != replayed.profile:
        return "profile differs (updates of one field applied out of event-time order)"
    return None


def _compare(
    report: ReplayReport,
    stored: LeadState,
    new: LeadState,
    current: RuleSet,
    rules: RuleSet,
    now: datetime,
) -> None:
    if not math.isclose(stored.fit_score, new.fit_score, abs_tol=1e-6):
        report.fit_changed += 1
    before, after = behaviour_score(stored, now, current), behaviour_score(new, now, rules)
    if not math.isclose(before, after, rel_tol=1e-9, abs_tol=1e-6):
        report.behaviour_changed += 1
    if stored.anonymous or stored.excluded:
        return
    was, now_over = over_mql_threshold(stored, now, current), over_mql_threshold(new, now, rules)
    report.mql_now_above += now_over and not was
    report.mql_now_below += was and not now_over


async def _write(
    conn: asyncpg.Connection,
    report: ReplayReport,
    targets: list[ScoreRow],
    version: str,
    now: datetime,
) -> None:
    ids = [t.lead_id for t in targets]
    await replaystore.lock_leads(conn, ids)
    await replaystore.write_scores(conn, targets)
    archived, written = await replaystore.replace_ledger(conn, ids, version=version, at=now)
    report.ledger_archived += archived
    report.ledger_written += written


def _score_row(s: LeadState, rules: RuleSet, now: datetime) -> ScoreRow:
    return ScoreRow(
        lead_id=s.lead_id,
        fit_score=s.fit_score,
        grade=s.fit_grade,
        behaviour_score=behaviour_score(s, now, rules),
        priority=priority(s, now, rules),
        scored_at=now,
        rules_version=rules.version,
        state=encode_state(s),
    )


def render_report(report: ReplayReport, fmt: str) -> str:
    """The summary as an aligned table or JSON."""
    doc: dict[str, Any] = {**asdict(report), "rate": report.rate}
    if fmt == "json":
        return json.dumps(doc, indent=2)
    olds = ", ".join(f"{v} ({n})" for v, n in report.rules_from.items()) or "-"
    lines = [
        f"{'dry run: nothing written' if report.dry_run else 'replayed and written'}"
        f" (attempt {report.attempts})",
        f"events            {report.events:,}",
        f"leads             {report.leads:,}",
        f"seconds           {report.seconds:.2f} (fold), {report.total_seconds:.2f} (total)",
        f"events/s          {report.rate:,.0f}",
        f"rules             {olds} -> {report.rules_to}",
        f"fit changed       {report.fit_changed:,}",
        f"behaviour changed {report.behaviour_changed:,}",
        f"MQL threshold     {report.mql_now_above:,} now above, {report.mql_now_below:,} now below"
        " (stages are not moved)",
        f"{'would rewrite' if report.dry_run else 'rewritten'}     {report.rewritten:,} "
        f"({report.unchanged:,} unchanged, {report.not_in_log:,} without events)",
    ]
    if not report.dry_run:
        lines.append(
            f"ledger            {report.ledger_written:,} entries written, "
            f"{report.ledger_archived:,} moved to score_ledger_history"
        )
    if report.skipped:
        lines.append(f"skipped           {len(report.skipped):,} leads (left as they are):")
        lines += [f"  {s}" for s in report.skipped[:20]]
    return "\n".join(lines)
