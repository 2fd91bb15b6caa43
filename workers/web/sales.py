"""Inside sales over HTTP: the call list (JSON/CSV) and recording outcomes.

The call list is :func:`infra.calllist.open_followups` rendered by :mod:`workers.render`, the
same rows in the same order as ``leadcycle calllist``. Outcomes are not applied here: they are
published to the outcomes topic, so the worker handles them on the same path as CRM outcomes.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import date
from typing import Any

from aiohttp import web

from events import OutcomeRecorded, Rejection, decode
from infra.calllist import CallListEntry, open_followups
from workers.render import call_list_csv, call_list_json
from workers.web.auth import Malformed, Principal
from workers.web.collector import BadRequest, read_limited, serialise
from workers.web.context import WebContext, context
from workers.web.producer import BrokerUnavailable
from workers.web.security import security

MAX_LIMIT = 10_000
#: What a rep id may look like in a query (the contract's RepId): anything else is a 400, not
#: a database error (``?rep=%00``) or a row nobody can have.
_REP = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
_DIGITS = re.compile(r"[0-9]{1,6}")


class Refused(web.HTTPException):
    """An HTTP error with a JSON body ``{"error": ...}`` (raised from helpers, not returned)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps({"error": message}), content_type="application/json", headers=headers
        )


def principal(request: web.Request, *, cookie: bool = False) -> Principal:
    ctx = context(request)
    if not ctx.sales.configured:
        raise Refused(
            401,
            "sales endpoints have no tokens "
            "(set LEADCYCLE_SALES_REP_TOKENS and/or LEADCYCLE_SALES_ADMIN_TOKEN)",
        )
    guard = security(request)
    try:
        found = ctx.sales.from_request(request, cookie=cookie, now=int(ctx.now().timestamp()))
    except Malformed as exc:
        guard.charge_failure(request)
        raise Refused(400, str(exc)) from None
    if found is None:
        if ctx.sales.presented(request, cookie=cookie):
            guard.charge_failure(request)  # a guess, or a stale cookie: both count
        raise Refused(
            401, "missing or unknown bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    return found


def rep_param(request: web.Request) -> str | None:
    """``?rep=``, checked: absent is None; not a rep id is 400."""
    rep = request.query.get("rep")
    if rep is None or rep == "":
        return None
    if not _REP.fullmatch(rep):
        raise Refused(400, "rep must be a rep id (letters, digits and . _ : @ -, at most 64)")
    return rep


def rep_in_scope(who: Principal, asked: str | None) -> str | None:
    """The rep whose list to show: a rep sees only their own; an admin any (None = all)."""
    rep = asked or who.rep
    if not who.may_see(rep):
        raise Refused(403, f"this token sees only rep {who.rep!r}'s call list")
    return rep


def _day(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        if len(text) != 10 or not text.isascii():  # the API promises one form: YYYY-MM-DD
            raise ValueError(text)
        day = date.fromisoformat(text)
    except ValueError:
        raise Refused(400, "date must be YYYY-MM-DD") from None
    if day >= date.max:  # "due by the end of the day" needs the next one
        raise Refused(400, "date must be before 9999-12-31")
    return day


def _limit(text: str | None) -> int | None:
    if text is None:
        return None
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_LIMIT:
        raise Refused(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


async def fetch_list(
    ctx: WebContext, *, rep: str | None, day: date | None = None, limit: int | None = None
) -> list[CallListEntry]:
    pool = ctx.pool()
    if pool is None:
        raise Refused(503, "the database is not connected yet")
    async with pool.acquire() as conn:
        return await open_followups(conn, rep=rep, day=day, tz=ctx.timezone, limit=limit)


def _wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt not in ("json", "csv"):
            raise Refused(400, "format must be json or csv")
        return fmt == "csv"
    return "text/csv" in request.headers.get("Accept", "")


async def call_lists(request: web.Request) -> web.StreamResponse:
    """GET /v1/call-lists?rep=R&date=D[&limit=N][&format=csv]"""
    ctx = context(request)
    rep = rep_in_scope(principal(request), rep_param(request))
    day = _day(request.query.get("date"))
    entries = await fetch_list(ctx, rep=rep, day=day, limit=_limit(request.query.get("limit")))
    if _wants_csv(request):
        # A download, never shown inline: the browser saves it under a name of ours.
        who = re.sub(r"[^A-Za-z0-9._-]", "_", rep or "all")
        name = f"call-list-{who}-{(day or ctx.now().date()).isoformat()}.csv"
        return web.Response(
            text=call_list_csv(entries),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return web.Response(text=call_list_json(entries), content_type="application/json")


async def record_outcome(ctx: WebContext, who: Principal, doc: Any) -> OutcomeRecorded:
    """Validate an outcome as the worker will, then publish it keyed by lead; Refused if not."""
    if not isinstance(doc, dict):
        raise Refused(400, "expected a JSON object")
    doc = dict(doc)
    if doc.get("event_id") is None:
        doc["event_id"] = f"http-{uuid.uuid4().hex}"
    if doc.get("occurred_at") is None:
        doc["occurred_at"] = ctx.now().isoformat()
    if who.rep is not None:
        if doc.get("rep") not in (None, who.rep):
            raise Refused(403, f"this token records outcomes as rep {who.rep!r} only")
        doc["rep"] = who.rep
    raw = serialise(doc)
    found = decode("outcomes", raw, max_bytes=ctx.settings.max_message_bytes)
    if isinstance(found, Rejection):
        raise Refused(422, found.error)
    assert isinstance(found, OutcomeRecorded)
    if who.rep is not None:
        mine = {e.lead_id for e in await fetch_list(ctx, rep=who.rep)}
        if found.lead_id not in mine:
            raise Refused(403, f"lead {found.lead_id!r} is not on rep {who.rep!r}'s call list")
    try:
        await ctx.producer.send_all([(ctx.settings.topics.outcomes, found.lead_id.encode(), raw)])
    except BrokerUnavailable:
        raise Refused(
            503, "the broker did not acknowledge in time: retry", headers={"Retry-After": "5"}
        ) from None
    return found


async def outcomes(request: web.Request) -> web.StreamResponse:
    """POST /v1/outcomes: one leadcycle.outcomes message (event_id/occurred_at optional)."""
    ctx = context(request)
    who = principal(request)
    try:
        body = await read_limited(request, ctx.settings.max_message_bytes)
        doc = json.loads(body.decode("utf-8"))
    except BadRequest as exc:
        raise Refused(exc.status, str(exc)) from None
    except (ValueError, RecursionError):
        raise Refused(400, "malformed JSON") from None
    found = await record_outcome(ctx, who, doc)
    return web.json_response({"event_id": found.event_id, "lead_id": found.lead_id}, status=202)
