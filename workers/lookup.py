"""Which lead an operator means: ``leadcycle lead`` takes a lead id, an email or an anonymous id.

What was typed is tried, in this order, as

1. an exact lead id (a CRM lead's, or an anonymous visitor's ``anon:<id>``);
2. an email, normalised as the wire schemas normalise one (``events.common.Email``: trimmed,
   lowercased), among known leads: not anonymous visitors (a visitor's email is only what it
   typed into a form, docs/http.md "Trust model") and not merged ones. Two leads or more with
   that email is an ambiguity the operator settles by passing a lead id; it is also how two
   CRM leads sharing an email show up as duplicates;
3. an anonymous id, with or without the ``anon:`` prefix: the visitor's row, or else the lead
   ``identity_links`` recorded for it.

A match that was merged (``merged_into``: an anonymous visitor whose history an identify moved
to a lead) is followed to the lead it was merged into, at most :data:`MAX_HOPS` steps, as the
worker itself follows it (``workers/leads.py``); every step is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from pydantic import TypeAdapter, ValidationError

from events.common import Email
from scoring.state import ANON_PREFIX

#: How many ``merged_into`` steps are followed (the worker follows as many).
MAX_HOPS = 5

Match = Literal["lead_id", "email", "anonymous_id"]

_EMAIL: TypeAdapter[str] = TypeAdapter(Email)


@dataclass(frozen=True, slots=True)
class Hop:
    """One step from a subject to the lead it forwards to."""

    source: str
    target: str
    #: ``merged_into`` of the source's row, or the identity link of an anonymous id.
    via: Literal["merged_into", "identity_link"]


@dataclass(frozen=True, slots=True)
class Resolution:
    """What :func:`resolve` found for ``query``.

    Found: ``lead_id`` is set (after ``hops``). Ambiguous: ``candidates`` lists the leads an
    email matched and ``lead_id`` is None. Nothing: ``matched_by`` is None.
    """

    query: str
    matched_by: Match | None = None
    #: What was looked up: the lead id, the normalised email or the anonymous id.
    key: str | None = None
    lead_id: str | None = None
    candidates: tuple[str, ...] = ()
    hops: tuple[Hop, ...] = ()

    @property
    def found(self) -> bool:
        return self.lead_id is not None

    @property
    def ambiguous(self) -> bool:
        return self.lead_id is None and len(self.candidates) > 1

    def as_json(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "matched_by": self.matched_by,
            "key": self.key,
            "lead_id": self.lead_id,
            "candidates": list(self.candidates),
            "hops": [{"from": h.source, "to": h.target, "via": h.via} for h in self.hops],
        }


async def resolve(conn: asyncpg.Connection, query: str) -> Resolution:
    """The lead ``query`` (a lead id, an email or an anonymous id) names; see the module."""
    text = query.strip()
    if not text or "\x00" in text:  # PostgreSQL text cannot hold NUL: no row has it
        return Resolution(query)
    anonymous = await conn.fetchval("SELECT anonymous FROM leads WHERE lead_id = $1", text)
    if anonymous is not None:
        lead_id, hops = await _follow(conn, text)
        if anonymous:
            return Resolution(
                query, "anonymous_id", text.removeprefix(ANON_PREFIX), lead_id, hops=hops
            )
        return Resolution(query, "lead_id", text, lead_id, hops=hops)
    email = _email(text)
    if email is not None:
        rows = await conn.fetch(
            """SELECT lead_id FROM leads
                WHERE email = $1 AND NOT anonymous AND merged_into IS NULL
                ORDER BY created_at, lead_id""",
            email,
        )
        if len(rows) == 1:
            return Resolution(query, "email", email, rows[0]["lead_id"])
        if rows:
            return Resolution(query, "email", email, candidates=tuple(r["lead_id"] for r in rows))
        return Resolution(query)  # an email is never an anonymous id (no "@" in those)
    anon_id = text.removeprefix(ANON_PREFIX)
    subject = f"{ANON_PREFIX}{anon_id}"
    if await conn.fetchval("SELECT true FROM leads WHERE lead_id = $1", subject):
        lead_id, hops = await _follow(conn, subject)
        return Resolution(query, "anonymous_id", anon_id, lead_id, hops=hops)
    linked = await conn.fetchval(
        "SELECT lead_id FROM identity_links WHERE anonymous_id = $1", anon_id
    )
    if linked is not None:
        lead_id, hops = await _follow(conn, linked)
        first = Hop(subject, linked, "identity_link")
        return Resolution(query, "anonymous_id", anon_id, lead_id, hops=(first, *hops))
    return Resolution(query)


def _email(text: str) -> str | None:
    """``text`` as the wire schemas store an email, or None when it is not one."""
    try:
        return _EMAIL.validate_python(text)
    except ValidationError:
        return None


async def _follow(conn: asyncpg.Connection, lead_id: str) -> tuple[str, tuple[Hop, ...]]:
    """The lead ``lead_id`` was merged into, step by step. A step to a lead that has no row
    is not taken, nor one back to a lead already passed: the walk stops on the last row found
    (whose explanation then says where it was merged into)."""
    current, hops = lead_id, list[Hop]()
    for _ in range(MAX_HOPS):
        target = await conn.fetchval(
            """SELECT t.lead_id FROM leads s JOIN leads t ON t.lead_id = s.merged_into
                WHERE s.lead_id = $1""",
            current,
        )
        if target is None or target == lead_id or any(h.target == target for h in hops):
            break
        hops.append(Hop(current, target, "merged_into"))
        current = target
    return current, tuple(hops)


_LABELS: dict[Match, str] = {"lead_id": "lead id", "email": "email", "anonymous_id": "anonymous id"}


def describe(found: Resolution) -> list[str]:
    """Lines for a terminal saying how ``found`` was reached (pass them through
    ``workers.render.printable``: what was typed and lead ids come from outside)."""
    if found.matched_by is None:
        return []
    if found.lead_id is None:
        return [
            f"{_LABELS[found.matched_by]} {found.key} matches {len(found.candidates)} leads:",
            *(f"  {c}" for c in found.candidates),
        ]
    lines = [f"resolved {found.query} ({_LABELS[found.matched_by]}) -> {found.lead_id}"]
    for h in found.hops:
        lines.append(
            f"  {h.source} merged into {h.target}"
            if h.via == "merged_into"
            else f"  {h.source} linked to {h.target} (identity link)"
        )
    return lines
