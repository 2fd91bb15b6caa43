"""Rescoring every retained event under a new rule-set version: the product command's code path.

Runs ``workers.replay`` (what ``leadcycle replay`` runs) as a dry run under the rules with a
bumped version, so every lead is rescored: one REPEATABLE READ snapshot, the event log read in
pages from a server-side cursor ordered by event time, each payload validated, folded with
``scoring.fold.Fold`` (``apply``, ``stitch`` on identify), then every stored lead compared with
its replayed scores. The figure is the read-and-fold part in events/s; ``write=True`` also
writes the result back (the whole command) and ``total_seconds`` includes that.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from scoring.rules import RuleSet
from workers import replay as product
from workers.replay import ProgressBar

__all__ = ["ProgressBar", "Replay", "run_replay"]


@dataclass(frozen=True)
class Replay:
    events: int
    leads: int
    seconds: float
    rules_version: str
    total_seconds: float
    written: bool

    @property
    def rate(self) -> float:
        return self.events / max(self.seconds, 1e-9)


def run_replay(dsn: str, rules: RuleSet, *, write: bool = False) -> Replay:
    """Rescore the event log under ``rules`` given a new version (so every ledger entry and
    score is re-derived, as a rule change demands)."""
    bumped = rules.model_copy(update={"version": f"{rules.version}+replay"})
    report = product.run_replay(
        dsn, bumped, current=rules, now=datetime.now(UTC), dry_run=not write
    )
    return Replay(
        events=report.events,
        leads=report.leads,
        seconds=report.seconds,
        rules_version=bumped.version,
        total_seconds=report.total_seconds,
        written=write,
    )
