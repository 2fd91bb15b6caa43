"""Render call lists and lead explanations for people: table, JSON or CSV.

What leads, visitors and CRMs typed reaches two readers that can be attacked through it:

- **a terminal** (``leadcycle calllist``, ``lead``, ``replay``, the demo summary): an escape
  sequence in a tracked URL could clear the operator's screen, retitle the window or forge
  lines. Table and text output pass every value through :func:`printable`, and whole outputs
  through :func:`terminal_text`. JSON stays JSON: C0 controls are escaped by the encoder, and
  :func:`json_text` escapes DEL and C1 as well (same value, nothing raw left).
- **a spreadsheet** (the call-list CSV reps open in Excel): a cell starting with ``=``, ``+``,
  ``-``, ``@``, tab or CR is a formula there (``=HYPERLINK(...)``, ``+cmd|' /C calc'!A0``).
  :func:`csv_cell` prefixes such a cell with a single quote, as OWASP's "CSV injection"
  advice says, after dropping control characters.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from infra.calllist import CallListEntry

#: Whole escape sequences first (CSI, OSC/DCS/PM/APC strings, two-byte ESC x), in their 7-bit
#: and 8-bit (C1) forms, so their parameters do not survive as visible junk.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI ... final byte
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # strings
    r"|\x1b[ -/]*[0-~]?"  # ESC + intermediates + final (ESC c resets the terminal)
)
#: C0 but tab/LF/CR, DEL, C1, and the bidi controls that reorder what is shown.
_CONTROLS = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
_LINE_BREAKS = re.compile(r"[\t\n\r\u2028\u2029]+")
#: A spreadsheet reads a cell starting with one of these as a formula (OWASP).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_JSON_RAW = re.compile(r"[\x7f-\x9f]")


def terminal_text(text: str) -> str:
    """``text`` safe to print on a terminal: escape sequences and controls gone, lines kept."""
    text = _ESCAPES.sub("", text)
    return _CONTROLS.sub("", text.replace("\r", "").replace("\t", " "))


def printable(value: object) -> str:
    """One value for a table cell or a text line: no controls, and no line breaks either (a
    value cannot start a line of its own that looks like the program's)."""
    return _LINE_BREAKS.sub(" ", terminal_text(str(value)))


def printable_tree(doc: Any) -> Any:
    """``doc`` with :func:`printable` applied to every string in it (dict keys included)."""
    if isinstance(doc, str):
        return printable(doc)
    if isinstance(doc, dict):
        return {printable_tree(k): printable_tree(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [printable_tree(v) for v in doc]
    return doc


def csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: controls dropped, formulas quoted (OWASP)."""
    if not isinstance(value, str):
        return value
    text = _ESCAPES.sub("", value)
    text = _CONTROLS.sub("", text)
    return "'" + text if text.startswith(_FORMULA_START) else text


def json_text(text: str) -> str:
    """JSON text with DEL and C1 escaped too (json.dumps leaves them raw with
    ``ensure_ascii=False``); they can only occur inside strings, so the value is unchanged."""
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


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
        raw = (
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
        cells = [printable(c) for c in raw]  # values from leads and visitors: no escapes
        lines.append(
            "  ".join(_cut(c, w).ljust(w) for c, (_, w) in zip(cells, TABLE_COLUMNS, strict=True))
        )
    lines.append(f"{len(entries)} open follow-ups; due times in {printable(tz)} ('!' = past due)")
    return "\n".join(lines)


def call_list_json(entries: Sequence[CallListEntry]) -> str:
    return json_text(json.dumps([e.as_dict() for e in entries], ensure_ascii=False, indent=2))


def call_list_csv(entries: Sequence[CallListEntry]) -> str:
    out = io.StringIO()
    fields = list(CallListEntry.__dataclass_fields__)
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for e in entries:
        row = e.as_dict()
        for key in ("recent_activity", "unknown_bant"):
            row[key] = "; ".join(row[key])
        writer.writerow({k: csv_cell(v) for k, v in row.items()})
    return out.getvalue()
