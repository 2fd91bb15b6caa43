"""The follow-up desk: how a lead's decisions open, update and close its call-list entry.

A lead has at most one open follow-up. Pure: the caller passes the open one (if any), the
lead's decisions of one batch in order, and ``now``; :func:`settle` changes the follow-up in
place (bumping its version, so every change is a new ``followup_changed`` message) and says
which follow-ups to write.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from scoring.decision import Decision, FollowupDecision


@dataclass
class Followup:
    """One call-list entry, as stored (``followups`` table) and published."""

    followup_id: str
    lead_id: str
    status: str
    why_now: str
    priority: float
    due_at: datetime
    assignee: str | None
    sla_breached: bool
    context: str  # JSON
    version: int
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    closed_reason: str | None


@dataclass
class Settled:
    """What the desk did with one lead's decisions."""

    #: Every follow-up changed or opened, in the order they were last touched.
    changed: dict[str, Followup] = field(default_factory=dict)
    #: The follow-ups opened (a rep is to be assigned), a subset of ``changed``.
    opened: list[Followup] = field(default_factory=list)


def needs_desk(decisions: Iterable[Decision]) -> bool:
    """Whether any decision touches the call list (so the open follow-up must be read)."""
    return any(d.followup or d.close_followup or d.excluded for d in decisions)


def settle(open_row: Followup | None, decisions: Iterable[Decision], now: datetime) -> Settled:
    """Apply ``decisions`` (one lead's, in order) to its open follow-up ``open_row``.

    A sales touch, a recycle or an exclusion closes the open follow-up (with that reason); a
    follow-up decision opens one, or updates the open one: its why-now, priority and context
    are the newest, its due time the earliest of the two.
    """
    out = Settled()
    for d in decisions:
        if open_row is not None and (d.close_followup or d.excluded):
            reason = "lead excluded" if d.excluded else "sales outcome recorded"
            if d.stage == "recycled":
                reason = "lead recycled"
            reason = d.closed_reason or reason
            _bump(open_row, now, status="done", closed_at=now, closed_reason=reason)
            out.changed[open_row.followup_id] = open_row
            open_row = None
        if d.followup is not None and not d.excluded:
            if open_row is None:
                open_row = _opened(d.followup, now)
                out.opened.append(open_row)
            else:
                _bump(
                    open_row,
                    now,
                    why_now=d.followup.why_now,
                    priority=d.followup.priority,
                    due_at=min(open_row.due_at, d.followup.due_at),
                    context=context_json(d.followup),
                )
            out.changed[open_row.followup_id] = open_row
    return out


def context_json(f: FollowupDecision) -> str:
    """The rep's context of a follow-up decision, as stored and published."""
    ctx = f.context.model_dump(mode="json")
    ctx["recent_activities"] = [
        f"{a.type}: {a.label}" if a.label else a.type for a in f.context.recent_activities
    ]
    ctx["reason"] = f.reason
    return json.dumps(ctx, ensure_ascii=False)


def _opened(f: FollowupDecision, now: datetime) -> Followup:
    fid = uuid.uuid5(uuid.NAMESPACE_URL, f"leadcycle:{f.lead_id}:{f.created_at.isoformat()}")
    return Followup(
        followup_id=f"fu-{fid.hex[:20]}",
        lead_id=f.lead_id,
        status="open",
        why_now=f.why_now,
        priority=f.priority,
        due_at=f.due_at,
        assignee=None,
        sla_breached=False,
        context=context_json(f),
        version=1,
        created_at=now,
        updated_at=now,
        closed_at=None,
        closed_reason=None,
    )


def _bump(row: Followup, now: datetime, **changes: object) -> None:
    for key, value in changes.items():
        setattr(row, key, value)
    row.version += 1
    row.updated_at = now
