"""The pure scoring core alone: decode + ``apply``/``stitch`` folded over a generated stream.

No broker, no database, no clock: seeded traffic from workers/traffic.py (the benchmark's mix:
~1 % duplicates, ~0.5 % invalid), bots and invalid messages dropped and duplicates removed as
the worker's event log would, sorted by event time like the replay (bench/replay.py), then
decoded with ``events.decode`` and folded through ``scoring.engine`` with a fixed ``now`` (the
end of the traffic window). Prints events/s and µs/event for decode, the fold, and both.

``--digest`` also prints a SHA-256 of every decision (state JSON, ledger, transitions,
follow-ups, recycles) and every final state, once folding the states as they are and once
loading each through its JSON form first (as the worker does): two versions of the core that
print the same digests decided exactly the same things.

    .venv/bin/python -m bench.core [--leads N] [--seed S] [--repeat R] [--digest]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.oracle import scored_events
from events import BehaviourTracked, decode
from events.decode import InputEvent, Rejection
from scoring.decay import read
from scoring.decision import Decision
from scoring.fold import Fold
from scoring.rules import RuleSet, load_rules
from scoring.state import ANON_PREFIX, LeadState, decode_state, encode_state
from workers.traffic import TrafficSpec, generate

MAX_BYTES = 65_536
START = datetime(2026, 1, 5, tzinfo=UTC)
DAYS = 60


@dataclass(frozen=True)
class Raw:
    """One message the worker would accept, still as bytes."""

    topic: str
    value: bytes


def make_stream(*, leads: int, seed: int) -> list[Raw]:
    """The accepted messages of a seeded stream, deduplicated, in (event time, id) order."""
    spec = TrafficSpec(
        leads=leads, seed=seed, start=START, days=DAYS, duplicate_rate=0.01, invalid_rate=0.005
    )
    keyed = [
        (event.occurred_at, event.event_id, Raw(topic, value))
        for topic, value, event in scored_events((m.topic, m.value) for m in generate(spec))
    ]
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [raw for _, _, raw in keyed]


def decode_all(stream: Sequence[Raw]) -> list[InputEvent]:
    """Every message decoded (they are all valid)."""
    out = []
    for raw in stream:
        event = decode(raw.topic, raw.value, max_bytes=MAX_BYTES)
        assert not isinstance(event, Rejection)
        out.append(event)
    return out


class RoundTrip(Fold):
    """The fold, with each state it touches loaded through its JSON form first, as the worker
    loads it from PostgreSQL, so that no object is shared from one event to the next."""

    def add(self, event: InputEvent) -> list[Decision]:
        touched = [self.subject(event)]
        if isinstance(event, BehaviourTracked) and event.anonymous_id:
            touched.append(f"{ANON_PREFIX}{event.anonymous_id}")
        for key in touched:
            if key in self.states:
                self.states[key] = decode_state(encode_state(self.states[key]))
        return super().add(event)


def run_fold(events: Sequence[InputEvent], rules: RuleSet, now: datetime) -> Fold:
    fold = Fold(rules, now=now)
    for event in events:
        fold.add(event)
    return fold


def digest(
    events: Sequence[InputEvent], rules: RuleSet, now: datetime, *, roundtrip: bool = False
) -> str:
    """A SHA-256 over every decision and every final state (see the module docstring).

    Built from values, not from a serialisation (floats to 9 decimals, times in UTC), so two
    versions of the core with different state classes can be compared.
    """
    h = hashlib.sha256()
    fold = (RoundTrip if roundtrip else Fold)(rules, now=now)
    for event in events:
        for d in fold.add(event):
            doc: list[Any] = [
                [e.entry_id, _r(e.points), _r(e.decayed_points), _r(e.score_before),
                 _r(e.score_after), _t(e.anchor)]
                for e in d.ledger
            ]  # fmt: skip
            doc.append([[x.from_stage, x.to_stage, _t(x.at), x.reason, x.accepted]
                        for x in d.transitions])  # fmt: skip
            f, r = d.followup, d.recycle
            doc.append(f and [f.why_now, _r(f.priority), _t(f.due_at), f.reason])
            doc.append(r and [r.reason, _t(r.since), str(r.revisit_on)])
            doc.append([d.close_followup, d.excluded, d.duplicate])
            h.update(json.dumps(doc).encode())
    for subject in sorted(fold.states):
        h.update(json.dumps(_state_values(fold.states[subject], now)).encode())
    return h.hexdigest()


def _r(x: float | None) -> str | None:
    return None if x is None else repr(round(x, 9))


def _t(x: datetime | None) -> str | None:
    return None if x is None else x.astimezone(UTC).isoformat()


def _state_values(s: LeadState, now: datetime) -> list[Any]:
    r = s.recycle
    return [
        s.lead_id, s.stage, _t(s.stage_since), _r(s.fit_score), s.fit_grade,
        _r(read(s.decay, now)), sorted((k, _r(v[0]), _r(v[1])) for k, v in s.caps.items()),
        [a.event_id for a in s.activities], s.events, s.excluded, list(s.linked_anonymous_ids),
        r and [r.reason, _t(r.since), str(r.revisit_on), _r(read(r.gained, now))],
        _t(s.last_requeue_at), _t(s.last_touch_at), s.stage_touched, s.sla_escalated,
    ]  # fmt: skip


def _line(what: str, count: int, seconds: float) -> str:
    return f"{what:<16} {count / seconds:>10,.0f} events/s  {seconds / count * 1e6:>8.1f} µs/event"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__.split("\n")[0])
    ap.add_argument("--leads", type=int, default=2000, help="leads (~11 events each)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    ap.add_argument("--rules", default="rules/default.toml")
    ap.add_argument("--digest", action="store_true", help="print a digest of every decision")
    args = ap.parse_args(argv)

    rules = load_rules(args.rules)
    now = START + timedelta(days=DAYS)
    stream = make_stream(leads=args.leads, seed=args.seed)
    n = len(stream)
    print(f"{n:,} events ({args.leads:,} leads, seed {args.seed}), now = {now.isoformat()}")
    best_decode = best_fold = float("inf")
    for _ in range(args.repeat):
        started = time.perf_counter()
        events = decode_all(stream)
        decoded = time.perf_counter()
        run_fold(events, rules, now)
        folded = time.perf_counter()
        best_decode = min(best_decode, decoded - started)
        best_fold = min(best_fold, folded - decoded)
    print(_line("decode", n, best_decode))
    print(_line("fold (core)", n, best_fold))
    print(_line("decode + fold", n, best_decode + best_fold))
    if args.digest:
        events = decode_all(stream)
        print(f"digest {digest(events, rules, now)}")
        print(f"digest, states through JSON {digest(events, rules, now, roundtrip=True)}")


if __name__ == "__main__":
    main()
