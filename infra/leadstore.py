"""PostgreSQL repository of lead state, ledger, stage history, recycle pool and follow-ups.

Every function takes a connection inside the batch's transaction and does one round trip for
the whole batch (per kind of row). Only the owner of a lead's shard writes it (infra/
shards.py); a write checks the row is still at the version its owner read, so an operator's
replay or the retention purge meanwhile makes the batch run again instead of being lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any

import asyncpg

from scoring.decision import StageTransition
from scoring.desk import Followup
from scoring.ledger import LedgerEntry
from scoring.rules import RuleSet
from scoring.state import LeadState, encode_state


@dataclass(frozen=True)
class LeadRow:
    lead_id: str
    anonymous: bool
    merged_into: str | None
    email: str | None
    company_name: str | None
    job_title: str | None
    industry: str | None
    company_size: int | None
    country: str | None
    source: str | None
    owner: str | None
    stage: str
    stage_since: datetime
    fit_score: float
    grade: str | None
    behaviour_score: float
    priority: float
    scored_at: datetime
    excluded: bool
    exclusion_reason: str | None
    rules_version: str
    stage_touched: bool
    state: str  # the stored form of the lead's state (scoring.state.encode)


@dataclass(frozen=True)
class TransitionRow:
    transition_id: str
    lead_id: str
    from_stage: str
    to_stage: str
    at: datetime
    reason: str | None
    event_id: str | None
    accepted: bool


@dataclass(frozen=True)
class PoolRow:
    lead_id: str
    reason: str
    since: datetime
    revisit_on: date | None
    track: str
    requeued_at: datetime | None


def lead_row(
    s: LeadState,
    merged_into: str | None,
    behaviour: float,
    priority: float,
    rules: RuleSet,
    now: datetime,
) -> LeadRow:
    """The ``leads`` row of a state: its stored form plus the columns lists and queries read."""
    p = s.profile
    return LeadRow(
        lead_id=s.lead_id,
        anonymous=s.anonymous,
        merged_into=merged_into,
        email=p.email,
        company_name=p.company_name,
        job_title=p.job_title,
        industry=p.industry,
        company_size=p.company_size,
        country=p.country,
        source=p.source,
        owner=p.owner,
        stage=s.stage,
        stage_since=s.stage_since,
        fit_score=s.fit_score,
        grade=s.fit_grade,
        behaviour_score=behaviour,
        priority=priority,
        scored_at=now,
        excluded=s.excluded,
        exclusion_reason=s.exclusion_reason,
        rules_version=s.rules_version or rules.version,
        stage_touched=s.stage_touched,
        state=encode_state(s),
    )


def transition_rows(lead_id: str, transitions: Sequence[StageTransition]) -> list[TransitionRow]:
    """Stage history rows; the id is deterministic (lead, cause, position, target), so a
    replayed decision inserts nothing new."""
    rows = []
    for i, tr in enumerate(transitions):
        cause = tr.event_id or f"sweep@{tr.at.isoformat()}"
        rows.append(
            TransitionRow(
                transition_id=f"{lead_id}:{cause}:{i}:{tr.to_stage}",
                lead_id=lead_id,
                from_stage=tr.from_stage,
                to_stage=tr.to_stage,
                at=tr.at,
                reason=tr.reason,
                event_id=tr.event_id,
                accepted=tr.accepted,
            )
        )
    return rows


#: A follow-up as stored: the desk's own object (scoring/desk.py) maps to the row one to one.
FollowupRow = Followup


JSON = "jsonb"


def _columns(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


async def _copy_upsert(
    conn: asyncpg.Connection,
    table: str,
    cols: Sequence[str],
    records: Sequence[tuple[Any, ...]],
    *,
    types: dict[str, str],
    conflict: str,
) -> None:
    """COPY ``records`` (tuples in ``cols`` order) into a temp staging table, then one
    INSERT ... SELECT ... ON CONFLICT."""
    if not records:
        return
    stage = f"stage_{table}"
    # JSON travels as text through COPY and is cast once, in the INSERT.
    defs = ", ".join(f"{c} {types.get(c, 'text').replace(JSON, 'text')}" for c in cols)
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} ({defs}) ON COMMIT DELETE ROWS")
    await conn.copy_records_to_table(stage, records=records, columns=list(cols))
    select = ", ".join(f"{c}::jsonb" if types.get(c) == JSON else c for c in cols)
    await conn.execute(
        f"INSERT INTO {table} ({', '.join(cols)}) SELECT {select} FROM {stage} {conflict}"
    )


def _records(cls: type, rows: Sequence[Any]) -> list[tuple[Any, ...]]:
    cols = _columns(cls)
    return [tuple(getattr(r, c) for c in cols) for r in rows]


_LEAD_TYPES = {
    "anonymous": "boolean",
    "company_size": "integer",
    "stage_since": "timestamptz",
    "fit_score": "double precision",
    "behaviour_score": "double precision",
    "priority": "double precision",
    "scored_at": "timestamptz",
    "excluded": "boolean",
    "stage_touched": "boolean",
}


async def load_states(
    conn: asyncpg.Connection,
    lead_ids: Iterable[str],
    *,
    known: Mapping[str, str] | None = None,
) -> dict[str, tuple[str | None, str | None, str]]:
    """``lead_id -> (stored state, merged_into, row version)`` of existing leads.

    A plain read: the caller owns these leads' shards (infra/shards.py), and
    :func:`save_leads` writes each only if it is still at the version read. The version is the
    row's ``xmin``: every committed update of the row changes it.
    ``known`` maps leads the caller holds a decoded state of to that state's version: their
    stored state comes back as None while the version still matches (nothing to decode).
    """
    ids = sorted(set(lead_ids))
    if not ids:
        return {}
    cached = known or {}
    have = [i for i in ids if i in cached]
    rows = await conn.fetch(
        """SELECT l.lead_id, l.merged_into, l.xmin::text AS version,
                   CASE WHEN k.version IS DISTINCT FROM l.xmin::text THEN l.state END AS state
              FROM leads l
              LEFT JOIN unnest($2::text[], $3::text[]) AS k(lead_id, version) USING (lead_id)
             WHERE l.lead_id = ANY($1::text[])
             ORDER BY l.lead_id""",
        ids,
        have,
        [cached[i] for i in have],
    )
    return {r["lead_id"]: (r["state"], r["merged_into"], r["version"]) for r in rows}


class StaleState(Exception):
    """A lead row changed after the batch read it (someone other than its owner wrote it: an
    operator's replay, the retention purge): the batch is rolled back and done again."""


async def save_leads(
    conn: asyncpg.Connection, rows: Sequence[LeadRow], read: Mapping[str, str | None]
) -> dict[str, str]:
    """Write the rows, each only if it is still at the version ``read`` (None: it did not
    exist); returns each lead's new row version (see :func:`load_states`).

    Raises:
        StaleState: a row was changed (or made) by someone else since it was read.
    """
    if not rows:
        return {}
    cols = _columns(LeadRow)
    defs = ", ".join(f"{c} {_LEAD_TYPES.get(c, 'text')}" for c in cols)
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS stage_leads ({defs}, read_version text)"
        " ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(
        "stage_leads",
        records=[
            (*rec, read.get(r.lead_id))
            for r, rec in zip(rows, _records(LeadRow, rows), strict=True)
        ],
        columns=[*cols, "read_version"],
    )
    updates = ", ".join(f"{c} = s.{c}" for c in cols if c != "lead_id")
    updated = await conn.fetch(
        f"""UPDATE leads l SET {updates}, updated_at = now() FROM stage_leads s
             WHERE l.lead_id = s.lead_id AND s.read_version IS NOT NULL
               AND l.xmin::text = s.read_version
         RETURNING l.lead_id, l.xmin::text AS version"""
    )
    inserted = await conn.fetch(
        f"""INSERT INTO leads ({", ".join(cols)})
            SELECT {", ".join(cols)} FROM stage_leads WHERE read_version IS NULL
            ON CONFLICT (lead_id) DO NOTHING
         RETURNING lead_id, xmin::text AS version"""
    )
    written = {r["lead_id"]: r["version"] for r in (*updated, *inserted)}
    if len(written) != len(rows):
        stale = sorted({r.lead_id for r in rows} - written.keys())
        raise StaleState(f"{len(stale)} leads changed since read, e.g. {stale[:3]}")
    return written


async def identity_links(conn: asyncpg.Connection, anonymous_ids: Iterable[str]) -> dict[str, str]:
    ids = sorted(set(anonymous_ids))
    if not ids:
        return {}
    rows = await conn.fetch(
        "SELECT anonymous_id, lead_id FROM identity_links WHERE anonymous_id = ANY($1::text[])",
        ids,
    )
    return {r["anonymous_id"]: r["lead_id"] for r in rows}


async def leads_by_email(conn: asyncpg.Connection, emails: Iterable[str]) -> dict[str, str]:
    found = sorted(set(emails))
    if not found:
        return {}
    rows = await conn.fetch(
        # A live lead of the email; a CRM lead before an email lead (they are merged as soon as
        # the CRM lead is touched), the oldest first.
        """SELECT DISTINCT ON (email) email, lead_id FROM leads
            WHERE email = ANY($1::text[]) AND NOT anonymous AND merged_into IS NULL
            ORDER BY email, lead_id LIKE 'email:%', created_at""",
        found,
    )
    return {r["email"]: r["lead_id"] for r in rows}


async def link_identities(
    conn: asyncpg.Connection, links: Sequence[tuple[str, str, str, datetime]]
) -> None:
    """Record ``(anonymous_id, lead_id, event_id, at)``; the first identify of an id wins."""
    if links:
        await conn.executemany(
            """INSERT INTO identity_links (anonymous_id, lead_id, event_id, linked_at)
               VALUES ($1, $2, $3, $4) ON CONFLICT (anonymous_id) DO NOTHING""",
            links,
        )


async def anonymous_histories(
    conn: asyncpg.Connection, subjects: Iterable[str]
) -> dict[str, list[tuple[str, str, datetime]]]:
    """The behaviour each anonymous subject was credited with, in one query: ``subject ->
    [(payload JSON, qualified id, time scored at)]``, by the id and time the worker scored each
    event by and at."""
    wanted = sorted(set(subjects))
    if not wanted:
        return {}
    rows = await conn.fetch(
        """SELECT subject, payload::text AS payload, qualified_id, occurred_at FROM event_log
            WHERE subject = ANY($1::text[]) AND topic = 'events' AND disposition = 'accepted'
              -- forwarded to the visitor's owner and not applied yet: applied when taken
              AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.qualified_id = event_log.qualified_id)
            ORDER BY subject, occurred_at, qualified_id""",
        wanted,
    )
    found: dict[str, list[tuple[str, str, datetime]]] = {s: [] for s in wanted}
    for r in rows:
        found[r["subject"]].append((r["payload"], r["qualified_id"], r["occurred_at"]))
    return found


async def record_merges(
    conn: asyncpg.Connection, merges: Sequence[tuple[str, str, str, str]], at: datetime
) -> None:
    """Record ``(absorbed, survivor, email, event id)`` merges and move the absorbed leads'
    history to their survivors: ledger, stage history, follow-ups (the open one was closed in
    this transaction) and visitor links. The absorbed row stays, ``merged_into`` the survivor."""
    if not merges:
        return
    absorbed = [m[0] for m in merges]
    survivor = [m[1] for m in merges]
    await conn.execute(
        """INSERT INTO lead_merges (absorbed, survivor, email, event_id, merged_at)
           SELECT a, s, e, ev, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                                    AS x(a, s, e, ev)
           ON CONFLICT (absorbed) DO NOTHING""",
        absorbed,
        survivor,
        [m[2] for m in merges],
        [m[3] for m in merges],
        at,
    )
    for table in ("score_ledger", "stage_transitions", "followups", "identity_links"):
        await conn.execute(
            f"""UPDATE {table} t SET lead_id = x.s
                  FROM unnest($1::text[], $2::text[]) AS x(a, s) WHERE t.lead_id = x.a""",
            absorbed,
            survivor,
        )


async def duplicate_emails(conn: asyncpg.Connection) -> list[tuple[str, list[str]]]:
    """Emails that several live CRM leads share, with their lead ids (oldest first)."""
    rows = await conn.fetch(
        """SELECT email, array_agg(lead_id ORDER BY created_at, lead_id) AS ids FROM leads
            WHERE email IS NOT NULL AND NOT anonymous AND merged_into IS NULL
              AND lead_id NOT LIKE 'email:%'
            GROUP BY email HAVING count(*) > 1 ORDER BY email"""
    )
    return [(r["email"], list(r["ids"])) for r in rows]


async def record_resolutions(
    conn: asyncpg.Connection, resolved: Sequence[tuple[str, str, str]]
) -> None:
    """Note ``(source, event_id, lead)``: the lead an email-only event was applied to."""
    if resolved:
        await conn.execute(
            """UPDATE event_log e SET resolved_to = x.lead
                 FROM unnest($1::text[], $2::text[], $3::text[]) AS x(source, event_id, lead)
                WHERE e.source = x.source AND e.event_id = x.event_id""",
            [r[0] for r in resolved],
            [r[1] for r in resolved],
            [r[2] for r in resolved],
        )


#: Ledger columns, in the order of :class:`LedgerEntry`'s fields (entries are the records).
LEDGER_COLUMNS: tuple[str, ...] = LedgerEntry._fields
LEDGER_TYPES = {
    "occurred_at": "timestamptz",
    "raw_points": "double precision",
    "points": "double precision",
    "decayed_points": "double precision",
    "score_before": "double precision",
    "score_after": "double precision",
    "anchor": "timestamptz",
    "half_life_days": "double precision",
}


async def insert_ledger(conn: asyncpg.Connection, entries: Sequence[LedgerEntry]) -> None:
    await _copy_upsert(
        conn,
        "score_ledger",
        LEDGER_COLUMNS,
        entries,
        types=LEDGER_TYPES,
        conflict="ON CONFLICT (entry_id) DO NOTHING",
    )


def ledger_entry(row: asyncpg.Record) -> LedgerEntry:
    """A ledger entry from a row selected with :data:`LEDGER_COLUMNS`."""
    return LedgerEntry(*(row[c] for c in LEDGER_COLUMNS))


async def ledger_of(conn: asyncpg.Connection, lead_id: str) -> list[LedgerEntry]:
    """A lead's ledger, in event-time order."""
    rows = await conn.fetch(
        f"""SELECT {", ".join(LEDGER_COLUMNS)} FROM score_ledger WHERE lead_id = $1
             ORDER BY occurred_at, entry_id""",
        lead_id,
    )
    return [ledger_entry(r) for r in rows]


async def insert_transitions(conn: asyncpg.Connection, rows: Sequence[TransitionRow]) -> None:
    await _copy_upsert(
        conn,
        "stage_transitions",
        _columns(TransitionRow),
        _records(TransitionRow, rows),
        types={"at": "timestamptz", "accepted": "boolean"},
        conflict="ON CONFLICT (transition_id) DO NOTHING",
    )


async def sync_recycle_pool(
    conn: asyncpg.Connection, members: Sequence[PoolRow], leaving: Sequence[str]
) -> None:
    """The pool is a projection of lead state: upsert recycled leads, drop those that left."""
    if leaving:
        await conn.execute(
            "DELETE FROM recycle_pool WHERE lead_id = ANY($1::text[])", sorted(leaving)
        )
    await _copy_upsert(
        conn,
        "recycle_pool",
        _columns(PoolRow),
        _records(PoolRow, members),
        types={"since": "timestamptz", "revisit_on": "date", "requeued_at": "timestamptz"},
        conflict="""ON CONFLICT (lead_id) DO UPDATE SET reason = EXCLUDED.reason,
                    since = EXCLUDED.since, revisit_on = EXCLUDED.revisit_on,
                    track = EXCLUDED.track, requeued_at = EXCLUDED.requeued_at""",
    )


async def open_followups(
    conn: asyncpg.Connection, lead_ids: Iterable[str]
) -> dict[str, FollowupRow]:
    ids = sorted(set(lead_ids))
    if not ids:
        return {}
    rows = await conn.fetch(
        f"""SELECT {_followup_columns()} FROM followups
             WHERE lead_id = ANY($1::text[]) AND status = 'open' ORDER BY lead_id FOR UPDATE""",
        ids,
    )
    out = {}
    for r in rows:
        doc = {c: r[c] for c in _columns(FollowupRow)}
        out[r["lead_id"]] = FollowupRow(**doc)
    return out


def _followup_columns() -> str:
    # Context is read as JSON text, so callers do not depend on a connection's codecs.
    return ", ".join(
        "context::text AS context" if c == "context" else c for c in _columns(FollowupRow)
    )


async def save_followups(conn: asyncpg.Connection, rows: Sequence[FollowupRow]) -> None:
    updates = ", ".join(
        f"{c} = EXCLUDED.{c}" for c in _columns(FollowupRow) if c not in ("followup_id", "lead_id")
    )
    await _copy_upsert(
        conn,
        "followups",
        _columns(FollowupRow),
        _records(FollowupRow, rows),
        types={
            "priority": "double precision",
            "due_at": "timestamptz",
            "sla_breached": "boolean",
            "context": JSON,
            "version": "integer",
            "created_at": "timestamptz",
            "updated_at": "timestamptz",
            "closed_at": "timestamptz",
        },
        conflict=f"ON CONFLICT (followup_id) DO UPDATE SET {updates}",
    )


async def rep_loads(conn: asyncpg.Connection, day: date) -> dict[str, int]:
    rows = await conn.fetch("SELECT rep, assigned FROM rep_load WHERE day = $1", day)
    return {r["rep"]: r["assigned"] for r in rows}


async def add_rep_load(conn: asyncpg.Connection, day: date, counts: dict[str, int]) -> None:
    if counts:
        await conn.executemany(
            """INSERT INTO rep_load (rep, day, assigned) VALUES ($1, $2, $3)
               ON CONFLICT (rep, day) DO UPDATE SET assigned = rep_load.assigned + $3""",
            [(rep, day, n) for rep, n in sorted(counts.items())],
        )


async def take_cursor(conn: asyncpg.Connection) -> int:
    """The round-robin position, locked until the transaction ends."""
    return int(await conn.fetchval("SELECT cursor FROM assignment_cursor WHERE id = 1 FOR UPDATE"))


async def put_cursor(conn: asyncpg.Connection, cursor: int) -> None:
    await conn.execute("UPDATE assignment_cursor SET cursor = $1 WHERE id = 1", cursor)


SWEEP_LOCK = 0x1EADC7C2  # one sweeper at a time across all workers


async def try_sweep_lock(conn: asyncpg.Connection) -> bool:
    """Take the sweep's advisory lock for this transaction, if no other worker holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SWEEP_LOCK))


async def sweep_candidates(
    conn: asyncpg.Connection, *, now: datetime, today: date, sla_hours: float, limit: int
) -> list[str]:
    """Leads a time rule may apply to, locked; rows a batch is working on are skipped (next
    sweep gets them): stage SLA possibly expired without a touch, revisit date reached, won."""
    rows = await conn.fetch(
        """SELECT l.lead_id FROM leads l LEFT JOIN recycle_pool p USING (lead_id)
            WHERE NOT l.anonymous AND NOT l.excluded AND l.merged_into IS NULL
              AND (   (l.stage IN ('mql', 'appointment', 'opportunity')
                       AND NOT l.stage_touched
                       AND l.stage_since
                           < $1::timestamptz - make_interval(secs => $3::float8 * 3600))
                   OR (l.stage = 'recycled' AND p.revisit_on <= $2::date
                       AND (p.requeued_at IS NULL OR p.requeued_at::date < p.revisit_on))
                   OR l.stage = 'won')
            ORDER BY l.stage_since
            LIMIT $4
              FOR UPDATE OF l SKIP LOCKED""",
        now,
        today,
        sla_hours,
        limit,
    )
    return [r["lead_id"] for r in rows]


async def flag_overdue(conn: asyncpg.Connection, *, now: datetime) -> list[FollowupRow]:
    """Mark open follow-ups past their due time as SLA breached (once); return them."""
    rows = await conn.fetch(
        f"""UPDATE followups SET sla_breached = true, version = version + 1, updated_at = $1
             WHERE status = 'open' AND NOT sla_breached AND due_at < $1
         RETURNING {_followup_columns()}""",
        now,
    )
    return [FollowupRow(**{c: r[c] for c in _columns(FollowupRow)}) for r in rows]
