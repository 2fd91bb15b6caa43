"""Render call lists and lead explanations for people: table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from infra.calllist import CallListEntry

TABLE_COLUMNS = (
    ("due", 16),
    ("rep", 8),
    ("pri", 5),
    ("gr", 2),
    ("why now", 12),
    ("company / title", 34),
    ("recent activity", 34),
    ("lost reason", 12),
    ("ask about", 20),
)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def call_list_table(entries: Sequence[CallListEntry], tz: str = "UTC") -> str:
    """A fixed-width table; due times in ``tz`` (the rule set's business time zone)."""
    if not entries:
        return "no open follow-ups"
    zone = ZoneInfo(tz)
    header = "  ".join(name.ljust(w) for name, w in TABLE_COLUMNS)
    lines = [header, "-" * len(header)]
    for e in entries:
        due = e.due_at.astimezone(zone).strftime("%Y-%m-%d %H:%M") + ("!" if e.sla_breached else "")
        who = " / ".join(x for x in (e.company, e.job_title) if x) or e.lead_id
        cells = (
            due,
            e.assignee or "-",
            f"{e.priority:.0f}",
            e.grade or "-",
            e.why_now,
            who,
            "; ".join(e.recent_activity[:2]) or "-",
            e.previous_lost_reason or "-",
            ", ".join(e.unknown_bant) or "-",
        )
        lines.append(
            "  ".join(_cut(c, w).ljust(w) for c, (_, w) in zip(cells, TABLE_COLUMNS, strict=True))
        )
    lines.append(f"{len(entries)} open follow-ups; due times in {tz} ('!' = past due)")
    return "\n".join(lines)


def call_list_json(entries: Sequence[CallListEntry]) -> str:
    return json.dumps([e.as_dict() for e in entries], ensure_ascii=False, indent=2)


def call_list_csv(entries: Sequence[CallListEntry]) -> str:
    out = io.StringIO()
    fields = list(CallListEntry.__dataclass_fields__)
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for e in entries:
        row = e.as_dict()
        for key in ("recent_activity", "unknown_bant"):
            row[key] = "; ".join(row[key])
        writer.writerow(row)
    return out.getvalue()
