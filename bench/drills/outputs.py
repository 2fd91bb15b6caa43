"""The drills read what the worker publishes, as a downstream consumer would, and check it.

:class:`OutputTap` reads the four output topics (score changes, follow-ups, nurture, dead
letters) from the beginning for the whole drill, without a consumer group, and dedupes on
``message_id`` (outputs are at-least-once). :func:`check_outputs` then holds the outputs
against PostgreSQL:

- every dead letter, every score-ledger entry, the final version of every follow-up and every
  lead in the recycle pool arrived as an output message (nothing committed went unpublished);
- a ``message_id`` seen twice carries the same bytes both times (a re-send, not a recount),
  and no ledger entry was published in two different score changes (credited twice);
- the open follow-ups the outputs describe (latest version of each) are the open follow-ups
  in PostgreSQL.

:func:`lifecycle_mismatches` compares stages and open follow-ups in PostgreSQL with what the
pure core decides over the same events (``scoring.fold.Fold``, as ``bench/oracle.py`` uses it),
applied in the order the worker applied them (see :func:`expected_lifecycle`).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer

from bench.oracle import scored_events
from events.topics import TopicNames
from scoring.fold import Fold
from scoring.rules import RuleSet

from .report import DrillResult, say

OUTPUTS = ("score-changes", "followups", "nurture", "dead-letters")


@dataclass
class OutputTap:
    """Every output message the drill's broker delivered, deduped on ``message_id``."""

    kafka_url: str
    topics: TopicNames
    #: topic suffix -> message_id -> the value first read with that id
    messages: dict[str, dict[str, bytes]] = field(default_factory=lambda: {t: {} for t in OUTPUTS})
    deliveries: Counter[str] = field(default_factory=Counter)  # records read, re-sends included
    conflicts: list[str] = field(default_factory=list)  # one message_id, two different values
    restamped: int = 0  # dead letters sent again with only a later received_at
    unreadable: list[str] = field(default_factory=list)
    last_read: float = 0.0  # loop time of the last record read
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka_url,
            group_id=None,  # no group: every partition, nothing committed
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
            metadata_max_age_ms=2000,
        )
        consumer.subscribe([self.topics.name(t) for t in OUTPUTS])
        await consumer.start()
        self._consumer = consumer
        self._task = asyncio.get_running_loop().create_task(self._read(consumer))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def restart(self) -> None:
        """Read again from the start of every partition: after a memory broker restart the
        log starts again at offset 0, below where the tap stood."""
        await self.stop()
        await self.start()

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                fetched = await consumer.getmany(timeout_ms=200, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away (restart drill): read on when back
                say(f"output tap: {exc!r}; reading on")
                await asyncio.sleep(0.5)
                continue
            for records in fetched.values():
                for record in records:
                    self._take(record.topic.removeprefix(self.topics.prefix), record.value)
                    self.last_read = loop.time()

    def _take(self, topic: str, value: bytes | None) -> None:
        self.deliveries[topic] += 1
        try:
            doc = json.loads(value or b"")
            message_id = doc["message_id"]
        except (ValueError, KeyError, TypeError):
            self.unreadable.append(f"{topic}: {(value or b'')[:80]!r}")
            return
        seen = self.messages[topic].setdefault(message_id, value or b"")
        if seen == value:
            return
        first = json.loads(seen)
        if topic == "dead-letters" and {**first, "received_at": None} == {
            **doc,
            "received_at": None,
        }:
            # A redelivered bad message is dead-lettered again under the same id, stamped
            # with the time of the redelivery: the same letter, re-sent. (The collector's
            # letters, ``http:-1:<item>:<digest>``, collide so for one bad item sent twice.)
            self.restamped += 1
            return
        self.conflicts.append(f"{topic} {message_id}")

    async def settle(self, quiet: float = 1.5, seconds: float = 30.0) -> None:
        """Wait until nothing new was read for ``quiet`` seconds (the worker's outbox is
        empty before this is called, so what is published has been published)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline and loop.time() - self.last_read < quiet:  # noqa: ASYNC110
            await asyncio.sleep(0.2)  # polled: the tap's reader records when it last read

    def docs(self, topic: str) -> list[dict[str, object]]:
        return [json.loads(v) for v in self.messages[topic].values()]


async def check_outputs(
    dsn: str,
    tap: OutputTap,
    result: DrillResult,
    *,
    exempt: tuple[datetime, datetime] | None = None,
) -> None:
    """Hold the outputs read by ``tap`` against PostgreSQL (see the module docstring).

    ``exempt``: a time window whose outputs may be missing, because the broker they were
    acknowledged by was restarted with its memory store before the tap read them (the
    broker-restart drill); they are counted in a note, not failed.
    """
    conn = await asyncpg.connect(dsn)
    try:
        letters = await conn.fetch("SELECT message_id, received_at FROM dead_letters")
        ledger = await conn.fetch("SELECT entry_id, lead_id, recorded_at FROM score_ledger")
        followups = await conn.fetch(
            "SELECT followup_id, lead_id, version, status, updated_at FROM followups"
        )
        pool = await conn.fetch("SELECT lead_id, since FROM recycle_pool")
    finally:
        await conn.close()

    def excused(at: datetime) -> bool:
        return exempt is not None and exempt[0] <= at <= exempt[1]

    missing: Counter[str] = Counter()
    lost_in_restart: Counter[str] = Counter()
    when: dict[str, list[datetime]] = defaultdict(list)

    def expect_one(topic: str, present: bool, at: datetime) -> None:
        if not present:
            (lost_in_restart if excused(at) else missing)[topic] += 1
            if not excused(at):
                when[topic].append(at)

    got_letters = tap.messages["dead-letters"]
    for row in letters:
        expect_one("dead-letters", row["message_id"] in got_letters, row["received_at"])

    published: dict[str, set[str]] = defaultdict(set)  # entry id -> score-change message ids
    for doc in tap.docs("score-changes"):
        for entry in doc["entries"]:  # type: ignore[attr-defined]
            published[entry["entry_id"]].add(str(doc["message_id"]))
    for row in ledger:
        expect_one("score-changes", row["entry_id"] in published, row["recorded_at"])
    twice = [e for e, ids in published.items() if len(ids) > 1]
    if twice:
        result.fail(
            f"{len(twice)} ledger entries published in two different score changes (counted "
            f"twice?), e.g. {twice[:3]}"
        )

    got_followups = tap.messages["followups"]
    latest: dict[str, dict[str, object]] = {}
    for doc in tap.docs("followups"):
        fid = str(doc["followup_id"])
        if fid not in latest or int(doc["version"]) > int(latest[fid]["version"]):  # type: ignore[call-overload]
            latest[fid] = doc
    for row in followups:
        present = f"{row['followup_id']}:v{row['version']}" in got_followups
        expect_one("followups", present, row["updated_at"])
    db_open = {r["lead_id"] for r in followups if r["status"] == "open"}
    out_open = {str(d["lead_id"]) for d in latest.values() if d["status"] == "open"}
    if exempt is None and db_open != out_open:
        result.fail(
            f"open follow-ups per the outputs differ from PostgreSQL: {len(out_open - db_open)} "
            f"only in the outputs, {len(db_open - out_open)} only in PostgreSQL"
        )

    enrolled = {
        (str(d["lead_id"]), datetime.fromisoformat(str(d["recycled_at"])))
        for d in tap.docs("nurture")
    }
    for row in pool:
        expect_one("nurture", (row["lead_id"], row["since"]) in enrolled, row["since"])

    window = f" (restart window {exempt[0]:%H:%M:%S}..{exempt[1]:%H:%M:%S})" if exempt else ""
    for topic, n in sorted(missing.items()):
        span = f"{min(when[topic]):%H:%M:%S.%f}..{max(when[topic]):%H:%M:%S.%f}"
        result.fail(
            f"{n} {topic} outputs committed in PostgreSQL (at {span} UTC) never arrived on the "
            f"topic{window}"
        )
    if tap.conflicts:
        result.fail(
            f"{len(tap.conflicts)} message ids delivered with different contents, e.g. "
            f"{tap.conflicts[:3]}"
        )
    if tap.unreadable:
        result.fail(f"{len(tap.unreadable)} output messages without a message_id")
    distinct = {t: len(m) for t, m in tap.messages.items()}
    resent = sum(tap.deliveries.values()) - sum(distinct.values())
    result.outputs = distinct
    result.notes.append(
        "outputs read: "
        + ", ".join(f"{t} {n:,}" for t, n in distinct.items())
        + f" distinct ({resent:,} re-sends deduped, {tap.restamped} of them dead letters"
        " stamped with a later received_at); expected from PostgreSQL: "
        f"{len(letters):,} dead letters, {len(ledger):,} ledger entries, "
        f"{len(followups):,} follow-ups ({len(db_open):,} open), {len(pool):,} recycled"
    )
    if lost_in_restart:
        result.notes.append(
            "acknowledged by the broker before its restart, then forgotten by its memory store "
            "before the drill read them: "
            + ", ".join(f"{t} {n}" for t, n in sorted(lost_in_restart.items()))
        )


@dataclass
class Lifecycle:
    """What the pure core says about each lead's stage and call-list entry."""

    stages: dict[str, str]
    open_followups: set[str]


async def processing_times(dsn: str) -> dict[str, datetime]:
    """qualified event id (``<source>|<event id>``, as the core knows events) -> the time of
    the transaction that logged (and applied) it."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT qualified_id, received_at FROM event_log")
    finally:
        await conn.close()
    return {r["qualified_id"]: r["received_at"] for r in rows}


def expected_lifecycle(
    messages: Iterable[tuple[str, bytes]], rules: RuleSet, *, applied_at: Mapping[str, datetime]
) -> Lifecycle:
    """Fold the events the worker scores (``bench.oracle.scored_events``) in the order and at
    the time the worker applied them, following each decision's follow-up the way
    ``workers/leads.py`` does: a follow-up decision opens (or updates) the lead's entry, a
    close or an exclusion ends it.

    Stages and follow-ups, unlike scores, depend on the order events are applied in, and
    Kafka orders only within a partition: a lead's outcome and its tracked behaviour travel
    on different topics, so after a restart or a rebalance one can be read before the other.
    The order the worker applied them in is its transactions' order (``event_log.received_at``),
    by event time within one transaction (the worker sorts a batch so), ties in stream order.
    """
    events = list(scored_events(messages))
    last = max(applied_at.values(), default=datetime.now(UTC))
    order = sorted(
        range(len(events)),
        key=lambda n: (applied_at.get(events[n][2].event_id, last), events[n][2].occurred_at, n),
    )
    fold = Fold(rules, now=last)
    open_: dict[str, bool] = {}
    for n in order:
        event = events[n][2]
        fold.now = applied_at.get(event.event_id, last)
        for d in fold.add(event):
            lead = d.state.lead_id
            if open_.get(lead) and (d.close_followup or d.excluded):
                open_[lead] = False
            if d.followup is not None and not d.excluded:
                open_[lead] = True
    leads = fold.leads()
    return Lifecycle(
        {k: s.stage for k, s in leads.items()},
        {k for k, is_open in open_.items() if is_open and k in leads},
    )


async def lifecycle_mismatches(dsn: str, want: Lifecycle) -> list[str]:
    """Leads whose stage or open follow-up in PostgreSQL differs from ``want``."""
    conn = await asyncpg.connect(dsn)
    try:
        stages = {
            r["lead_id"]: r["stage"]
            for r in await conn.fetch("SELECT lead_id, stage FROM leads WHERE NOT anonymous")
        }
        open_ = {
            r["lead_id"]
            for r in await conn.fetch("SELECT lead_id FROM followups WHERE status = 'open'")
        }
    finally:
        await conn.close()
    problems = [
        f"{lead}: stage {stages.get(lead)}, want {want.stages.get(lead)}"
        for lead in sorted(set(stages) | set(want.stages))
        if stages.get(lead) != want.stages.get(lead)
    ]
    problems += [f"{k}: open follow-up, the core has none" for k in open_ - want.open_followups]
    problems += [f"{k}: no open follow-up, the core has one" for k in want.open_followups - open_]
    return problems
