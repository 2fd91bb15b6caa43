"""What a drill found, and the table ``./run drills`` prints (and docs/reliability.md shows)."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any


def say(text: str) -> None:
    """Progress goes to stderr; each drill's report and the summary table go to stdout."""
    print(f"drills: {text}", file=sys.stderr, flush=True)


@dataclass
class DrillResult:
    """Before/after figures of one drill run and everything that did not hold."""

    name: str
    events_in: int = 0  # messages (or collector items) produced, duplicates and bad ones included
    distinct_valid: int = 0  # distinct valid event ids in the produced stream (bots included)
    scored: int = 0  # event_log rows with disposition 'accepted' at the end
    bots: int = 0  # event_log rows with disposition 'bot' (logged, not scored)
    stream_duplicates: int = 0  # valid messages re-sent with an id already in the stream
    #: Valid messages the worker recognised as already logged (stream duplicates plus
    #: redeliveries after crashes), summed from its batch log lines; None = not in the logs.
    duplicates_suppressed: int | None = None
    expected_dead_letters: int = 0
    dead_letters: int = 0  # dead_letters rows at the end
    restarts: int = 0  # worker processes started after the first one (kills and exits)
    unplanned_exits: int = 0  # worker exits the drill did not cause
    #: kill -9 only: kills that landed after a batch's database commit, before its offset
    #: commit, and valid messages delivered again after the kills (redeliveries).
    kills_in_ack_window: int | None = None
    redelivered: int | None = None
    #: Output topic -> distinct messages read from it (deduped on message_id).
    outputs: dict[str, int] = field(default_factory=dict)
    recovery: dict[str, float] = field(default_factory=dict)  # named durations, seconds
    seconds: float = 0.0  # wall time of the drill
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def fail(self, problem: str) -> None:
        self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}

    def render(self) -> str:
        """The drill's own block: what it did, before/after counts, the verdict and why."""
        lines = [
            f"== drill {self.name}: {self.verdict} ({self.seconds:.0f} s)",
            f"   in: {self.events_in:,} messages, {self.distinct_valid:,} distinct valid "
            f"({self.stream_duplicates:,} stream duplicates), "
            f"{self.expected_dead_letters:,} invalid",
            f"   out: event_log {self.scored + self.bots:,} ({self.scored:,} scored, {self.bots:,} "
            f"bots), dead_letters {self.dead_letters:,}, duplicates suppressed "
            f"{_maybe(self.duplicates_suppressed)}",
            f"   worker restarts {self.restarts} (unplanned exits {self.unplanned_exits})",
        ]
        if self.kills_in_ack_window is not None:
            lines.append(
                f"   kills between database commit and offset commit {self.kills_in_ack_window}, "
                f"messages redelivered {_maybe(self.redelivered)}"
            )
        if self.outputs:
            lines.append(
                "   outputs read (distinct): "
                + ", ".join(f"{t} {n:,}" for t, n in self.outputs.items())
            )
        if self.recovery:
            lines.append(
                "   timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.recovery.items())
            )
        lines += [f"   note: {n}" for n in self.notes]
        lines += [f"   PROBLEM: {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"   ... and {len(self.problems) - 20} more problems")
        return "\n".join(lines)


def _maybe(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


HEADER = (
    "| drill | events in | distinct valid | scored | duplicates suppressed | dead letters "
    "| worker restarts | recovery | verdict |"
)


def table(results: list[DrillResult]) -> str:
    """A markdown table, one row per drill run."""
    rows = [HEADER, "|" + "---|" * 9]
    for r in results:
        recovery = "; ".join(f"{k} {v:.1f} s" for k, v in r.recovery.items()) or "-"
        rows.append(
            f"| {r.name} | {r.events_in:,} | {r.distinct_valid:,} | {r.scored:,} "
            f"| {_maybe(r.duplicates_suppressed)} | {r.dead_letters:,} | {r.restarts} "
            f"| {recovery} | {r.verdict} |"
        )
    return "\n".join(rows)
