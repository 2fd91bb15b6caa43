"""One batch of input messages: decode, dead-letter, log, apply, commit, then publish.

The order is what makes delivery effectively-once: everything a batch changes (event log,
dead letters, lead state, outbox) is written in one transaction; the batch's Kafka offsets are
acknowledged only after :meth:`Ingestor.handle` returns, which it does only once that
transaction has committed; output messages leave through the outbox after the commit.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import asyncpg

from events import DeadLetter, Rejection, TopicNames, decode
from events.decode import InputEvent
from events.outcomes import OutcomeRecorded
from events.profiles import ProfileUpdated
from events.tracking import BehaviourTracked
from infra import store
from infra.leadstore import StaleState
from infra.store import DeadLetterRow, LoggedEvent, OutboxRecord
from scoring.intake import admitted, qualify, scored_time, source_of
from workers.bots import BotFilter

log = logging.getLogger("leadcycle.ingest")

#: Errors that mean "the database is away for now": wait and try the same batch again.
TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.AdminShutdownError,
    # A lead row its owner read was changed meanwhile by another writer: do the batch again.
    StaleState,
)
PAYLOAD_PREFIX_BYTES = 4096


@dataclass(frozen=True)
class Incoming:
    """One message as read from an input topic."""

    topic: str  # suffix: events | profiles | outcomes
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def position(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


class Publisher(Protocol):
    async def publish(self, records: Sequence[OutboxRecord]) -> None: ...


@dataclass
class BatchReport:
    received: int = 0
    new_events: int = 0
    duplicates: int = 0
    bots: int = 0
    dead_letters: int = 0
    attempts: int = 0
    rejected: list[str] = field(default_factory=list)


#: What a batch does to leads once its new events are known (the scoring step plugs in here).
Apply = Callable[
    [asyncpg.Connection, Sequence[InputEvent], datetime], Awaitable[list[OutboxRecord]]
]


async def _no_apply(
    conn: asyncpg.Connection, events: Sequence[InputEvent], now: datetime
) -> list[OutboxRecord]:
    return []


class Ingestor:
    """Handles batches for one worker process. Never lets a database error escape a batch."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        topics: TopicNames,
        publisher: Publisher,
        *,
        max_message_bytes: int,
        bots: BotFilter | None = None,
        apply: Apply = _no_apply,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_backoff: float = 5.0,
        max_future_skew: float = 300.0,
        committed: Callable[[], None] = lambda: None,
        aborted: Callable[[], None] = lambda: None,
    ) -> None:
        self.pool = pool
        self.topics = topics
        self.publisher = publisher
        self.max_message_bytes = max_message_bytes
        self.bots = bots or BotFilter()
        self.apply = apply
        self.clock = clock
        self.max_backoff = max_backoff
        #: An ``occurred_at`` further ahead of its receive time is scored at the receive time.
        self.max_future_skew = timedelta(seconds=max_future_skew)
        #: Told after each batch transaction commits, or rolls back (the scoring step keeps
        #: the states it wrote for the next batch only once they are committed).
        self.committed = committed
        self.aborted = aborted
        #: The previous batch's publish, still running while this batch is processed.
        self._publishing: asyncio.Future[None] | None = None

    async def handle(self, batch: Sequence[Incoming]) -> BatchReport:
        report = BatchReport(received=len(batch))
        accepted: list[tuple[Incoming, InputEvent]] = []
        rejected: list[tuple[Incoming, Rejection]] = []
        for msg in batch:
            try:
                result = decode(msg.topic, msg.value, max_bytes=self.max_message_bytes)
            except Exception as exc:
                # decode() rejects what it knows to be bad; anything else it raises on is a
                # bug there, and must cost this one message, not the batch or the worker.
                log.exception("decoding %s raised; dead-lettering it", msg.position)
                result = Rejection("processing_error", f"{type(exc).__name__}: {exc}"[:1000])
            if isinstance(result, Rejection):
                rejected.append((msg, result))
            else:
                accepted.append((msg, result))
        report.rejected = [f"{m.position} {r.reason}: {r.error}" for m, r in rejected]
        for line in report.rejected:
            log.warning("dead-lettered %s", line)
        try:
            await self._commit_with_retry(accepted, rejected, report)
        except Exception:
            # Not a passing outage but something in this batch itself: find it by bisection.
            log.exception("batch of %d failed; bisecting it to isolate what fails", len(batch))
            await self._isolate(accepted, rejected, report)
        return report

    async def _commit_with_retry(
        self,
        accepted: Sequence[tuple[Incoming, InputEvent]],
        rejected: Sequence[tuple[Incoming, Rejection]],
        report: BatchReport,
    ) -> None:
        delay = 0.2
        while True:
            report.attempts += 1
            try:
                ids, records = await self._commit(accepted, rejected, report)
                break
            except TRANSIENT as exc:
                log.warning("batch not committed (%r); retrying it in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        await self._publish_behind(ids, records)

    async def _publish_behind(self, ids: list[int], records: list[OutboxRecord]) -> None:
        """Publish a committed batch's outputs while the next batch is processed: one publish
        in flight at a time, so outputs leave in batch order and memory stays bounded."""
        await self.drain()
        if records:
            self._publishing = asyncio.ensure_future(self.publish_committed(ids, records))

    async def drain(self) -> None:
        """Wait for the publish in flight (it never raises: failures are left to the relay)."""
        if self._publishing is not None:
            publishing, self._publishing = self._publishing, None
            await publishing

    async def _commit(
        self,
        accepted: Sequence[tuple[Incoming, InputEvent]],
        rejected: Sequence[tuple[Incoming, Rejection]],
        report: BatchReport,
    ) -> tuple[list[int], list[OutboxRecord]]:
        now = self.clock()
        rows = [self._log_row(msg, event, now) for msg, event in accepted]
        letters = [self._dead_letter(msg, why, now) for msg, why in rejected]
        try:
            new_letters, seen, outputs, ids = await self._transaction(
                rows, letters, accepted, now
            )
        except BaseException:
            self.aborted()
            raise
        self.committed()
        report.new_events = len(seen)
        report.duplicates = len(rows) - len(seen)
        report.bots = sum(1 for r in rows if r.key in seen and r.disposition == "bot")
        report.dead_letters = new_letters
        return ids, outputs

    async def _transaction(
        self,
        rows: list[LoggedEvent],
        letters: list[tuple[DeadLetterRow, OutboxRecord]],
        accepted: Sequence[tuple[Incoming, InputEvent]],
        now: datetime,
    ) -> tuple[int, set[str], list[OutboxRecord], list[int]]:
        """The transaction: ``(new dead letters, keys of new events, outputs, outbox ids)``."""
        async with self.pool.acquire() as conn, conn.transaction():
            new_keys = await store.log_events(conn, rows)
            new_letters = await store.record_dead_letters(conn, [row for row, _ in letters])
            fresh: list[InputEvent] = []
            seen: set[str] = set()
            for row, (_, event) in zip(rows, accepted, strict=True):
                if row.key in new_keys and row.key not in seen:
                    seen.add(row.key)
                    if row.disposition == "accepted":
                        # Scored as logged: by its qualified id, at the time it is scored at.
                        fresh.append(admitted(event, row.qualified_id, row.occurred_at))
            outputs = await self.apply(conn, fresh, now)
            outputs = [record for _, record in letters] + outputs
            ids = await store.add_outbox(conn, outputs)
        return new_letters, seen, outputs, ids

    async def _isolate(
        self,
        accepted: Sequence[tuple[Incoming, InputEvent]],
        rejected: Sequence[tuple[Incoming, Rejection]],
        report: BatchReport,
    ) -> None:
        """Commit a failed batch in parts, bisecting down to the messages that fail.

        The dead letters commit first, then the accepted messages in halves, left before right
        (so events apply in their batch order); a half that fails is split again, and a single
        message that fails is dead-lettered as ``processing_error``. One bad message among
        ``n`` costs at most ``2 * ceil(log2 n) + 1`` commits instead of ``n``
        (docs/reliability.md, "A batch that fails"). ``report`` adds up every part.
        """

        async def commit(
            good: Sequence[tuple[Incoming, InputEvent]], bad: Sequence[tuple[Incoming, Rejection]]
        ) -> None:
            part = BatchReport()
            try:
                await self._commit_with_retry(good, bad, part)
            finally:
                report.attempts += part.attempts
            report.new_events += part.new_events
            report.duplicates += part.duplicates
            report.bots += part.bots
            report.dead_letters += part.dead_letters

        async def bisect(part: Sequence[tuple[Incoming, InputEvent]], *, fails: bool) -> bool:
            """Commit ``part``; ``fails``: it is already known to fail whole. Whether every
            message in it committed (no failing one was found)."""
            if not fails:
                try:
                    await commit(part, [])
                    return True
                except Exception as exc:
                    if len(part) > 1:
                        log.info("a part of %d messages failed (%r); splitting it", len(part), exc)
                        fails = True
                    else:
                        msg = part[0][0]
                        log.exception(
                            "message %s cannot be processed; dead-lettering it", msg.position
                        )
                        why = Rejection("processing_error", f"{type(exc).__name__}: {exc}"[:1000])
                        await commit([], [(msg, why)])
                        return False
            if len(part) == 1:  # known to fail alone: find the error again, to record it
                return await bisect(part, fails=False)
            mid = len(part) // 2
            left_clean = await bisect(part[:mid], fails=False)
            # Left committed whole, so the failure is on the right: split it without retrying it.
            right_clean = await bisect(part[mid:], fails=left_clean)
            return left_clean and right_clean

        if rejected:
            await commit([], rejected)
        if accepted:
            await bisect(accepted, fails=True)

    async def publish_committed(self, ids: list[int], records: list[OutboxRecord]) -> None:
        """Publish committed outbox rows and clear them; on failure the relay retries later."""
        if not records:
            return
        try:
            await self.publisher.publish(records)
        except Exception as exc:
            # Committed and safe in the outbox: the relay publishes it when the broker is back.
            log.warning(
                "publishing %d output messages failed (%r); left to the relay", len(ids), exc
            )
            return
        try:
            async with self.pool.acquire() as conn:
                await store.delete_outbox(conn, ids)
        except TRANSIENT as exc:
            log.warning(
                "could not clear %d sent outbox rows (%r); they may be re-sent", len(ids), exc
            )

    def _log_row(self, msg: Incoming, event: InputEvent, now: datetime) -> LoggedEvent:
        site: str | None = None
        received = now
        if isinstance(event, BehaviourTracked):
            ua = event.context.user_agent if event.context else None
            subject, lead_id, anonymous_id = event.subject, event.lead_id, event.anonymous_id
            disposition = "bot" if self.bots.is_bot(ua) else "accepted"
            if event.collected is not None:
                site, received = event.collected.site, event.collected.received_at
        else:
            assert isinstance(event, ProfileUpdated | OutcomeRecorded)
            subject, lead_id, anonymous_id = event.lead_id, event.lead_id, None
            disposition = "accepted"
        source = source_of(msg.topic, event)
        # A clock far ahead would anchor this event's decay in the future and make every
        # real event of its group count ~0 (docs/operations.md, "Event time").
        used = scored_time(
            event.occurred_at, received=received, now=now, max_skew=self.max_future_skew
        )
        return LoggedEvent(
            event_id=event.event_id,
            source=source,
            qualified_id=qualify(source, event.event_id),
            topic=msg.topic,
            type=event.type,
            subject=subject,
            lead_id=lead_id,
            anonymous_id=anonymous_id,
            occurred_at=used,
            stated_occurred_at=event.occurred_at if used != event.occurred_at else None,
            site=site,
            disposition=disposition,
            position=msg.position,
            # The message as received: decode() proved it valid UTF-8 JSON of this model.
            payload=msg.value.decode("utf-8") if msg.value else event.model_dump_json(),
        )

    def _dead_letter(
        self, msg: Incoming, why: Rejection, now: datetime
    ) -> tuple[DeadLetterRow, OutboxRecord]:
        return dead_letter_records(
            self.topics,
            suffix=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            raw=msg.value or b"",
            why=why,
            now=now,
        )


def dead_letter_records(
    topics: TopicNames,
    *,
    suffix: str,
    partition: int,
    offset: int,
    raw: bytes,
    why: Rejection,
    now: datetime,
) -> tuple[DeadLetterRow, OutboxRecord]:
    """The dead-letter row and message of input that could not be accepted: a message
    (``offset`` its own) or an undecodable record batch (``offset`` its base offset)."""
    position = f"{suffix}:{partition}:{offset}"
    # Position alone is not unique: a memory broker restarts its offsets at 0.
    message_id = f"{position}:{hashlib.sha256(raw).hexdigest()[:12]}"
    letter = DeadLetter(
        message_id=message_id,
        source_topic=topics.name(suffix),
        partition=partition,
        offset=offset,
        received_at=now,
        error=why.error,
        reason=why.reason,
        payload_size=len(raw),
        payload_prefix=base64.b64encode(raw[:PAYLOAD_PREFIX_BYTES]).decode(),
    )
    row = DeadLetterRow(
        message_id=message_id,
        source_topic=letter.source_topic,
        partition=partition,
        offset=offset,
        reason=why.reason,
        error=why.error,
        payload_size=len(raw),
    )
    record = OutboxRecord(
        topic=topics.dead_letters, key=position.encode(), value=letter.model_dump_json().encode()
    )
    return row, record
