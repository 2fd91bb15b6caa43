"""Call lists for inside sales, read from PostgreSQL: open follow-ups with the rep's context."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg


@dataclass(frozen=True)
class CallListEntry:
    followup_id: str
    lead_id: str
    assignee: str | None
    due_at: datetime
    sla_breached: bool
    priority: float
    why_now: str
    company: str | None
    job_title: str | None
    email: str | None
    grade: str | None
    stage: str
    source: str | None
    recent_activity: list[str]
    previous_lost_reason: str | None
    unknown_bant: list[str]

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["due_at"] = self.due_at.isoformat()
        return doc


async def open_followups(
    conn: asyncpg.Connection,
    *,
    rep: str | None = None,
    day: date | None = None,
    tz: str = "UTC",
    limit: int | None = None,
) -> list[CallListEntry]:
    """Open follow-ups ordered by due time, then priority (highest first).

    With ``day``: those due by the end of that day in ``tz`` (overdue ones included).
    """
    due_by = None
    if day is not None:
        due_by = datetime.combine(day + timedelta(days=1), time(0), tzinfo=ZoneInfo(tz))
    rows = await conn.fetch(
        """SELECT f.followup_id, f.lead_id, f.assignee, f.due_at, f.sla_breached, f.priority,
                  f.why_now, f.context::text AS context, l.company_name, l.job_title, l.email,
                  l.grade, l.stage, l.source
             FROM followups f JOIN leads l USING (lead_id)
            WHERE f.status = 'open'
              AND ($1::text IS NULL OR f.assignee = $1)
              AND ($2::timestamptz IS NULL OR f.due_at < $2)
              AND NOT l.excluded
         ORDER BY f.due_at, f.priority DESC, f.followup_id
            LIMIT $3""",
        rep,
        due_by,
        limit,
    )
    return [_entry(r) for r in rows]


def _entry(r: asyncpg.Record) -> CallListEntry:
    ctx: dict[str, Any] = json.loads(r["context"]) if r["context"] else {}
    return CallListEntry(
        followup_id=r["followup_id"],
        lead_id=r["lead_id"],
        assignee=r["assignee"],
        due_at=r["due_at"],
        sla_breached=r["sla_breached"],
        priority=round(float(r["priority"]), 1),
        why_now=r["why_now"],
        company=r["company_name"] or ctx.get("company"),
        job_title=r["job_title"] or ctx.get("job_title"),
        email=r["email"],
        grade=r["grade"] or ctx.get("grade"),
        stage=r["stage"],
        source=r["source"] or ctx.get("source"),
        recent_activity=[str(a) for a in ctx.get("recent_activities", [])],
        previous_lost_reason=ctx.get("previous_lost_reason"),
        unknown_bant=[str(b) for b in ctx.get("unknown_bant", [])],
    )
