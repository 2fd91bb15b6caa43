"""GET /call-list: the page a rep keeps open. Server-rendered HTML, no script, no build step.

A browser cannot send a bearer header on a plain navigation, so the page also accepts a
session cookie (HttpOnly, SameSite=Strict, signed with the token, never the token itself:
workers/web/auth.py) set by a small sign-in form. Outcome buttons are plain form posts (POST,
then redirect back), guarded by that cookie and an Origin check; so are sign-in and sign-out.
The pages' Content-Security-Policy allows their one stylesheet by hash and no script at all.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from html import escape
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from infra.calllist import CallListEntry
from workers.web.auth import SALES_COOKIE, SESSION_SECONDS, Principal
from workers.web.context import context
from workers.web.sales import (
    Refused,
    fetch_list,
    principal,
    record_outcome,
    rep_in_scope,
    rep_param,
)
from workers.web.security import page_csp, same_origin, security

#: Outcome buttons on each row; reasons, BANT and revisit dates go through POST /v1/outcomes.
BUTTONS = (
    ("contacted", "Contacted"),
    ("no_answer", "No answer"),
    ("appointment_set", "Appointment set"),
    ("nurture", "Nurture"),
    ("lost", "Lost"),
    ("disqualified", "Disqualified"),
)

STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:1rem auto;max-width:60rem;color:#222}
h1{font-size:1.3rem} .note{background:#eef7ee;padding:.4rem .8rem}
.err{background:#fbeaea;padding:.4rem .8rem} ol{padding-left:1.5rem}
li{border-bottom:1px solid #ddd;padding:.6rem 0} .due{font-weight:600}
.late{color:#b00} .meta{color:#555} .bant{color:#8a4b00}
form{display:inline} button{margin:.3rem .3rem 0 0;padding:.25rem .6rem}
.out{float:right}
"""
#: The pages' policy: STYLE by hash, no script, forms to this origin, never framed.
CSP = page_csp(STYLE)


def _page(title: str, body: str, *, refresh: bool = False) -> str:
    meta = '<meta http-equiv="refresh" content="120">' if refresh else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": CSP},
    )


def _entry(e: CallListEntry, tz: ZoneInfo, rep: str | None) -> str:
    due = e.due_at.astimezone(tz).strftime("%a %Y-%m-%d %H:%M")
    late = ' <span class="late">past SLA</span>' if e.sla_breached else ""
    who = " / ".join(x for x in (e.company, e.job_title) if x) or e.lead_id
    activity = "; ".join(e.recent_activity) or "none recorded"
    unknown = ", ".join(e.unknown_bant) or "nothing: BANT known"
    lost = f" · last lost: {escape(e.previous_lost_reason)}" if e.previous_lost_reason else ""
    event_id = f"page-{e.followup_id}-{uuid.uuid4().hex[:12]}"  # a double submit counts once
    buttons = "".join(
        f'<button name="outcome" value="{value}">{label}</button>' for value, label in BUTTONS
    )
    return (
        f'<li data-lead="{escape(e.lead_id)}">'
        f'<div class="due">{escape(due)}{late} · {escape(e.why_now)}</div>'
        f"<div><b>{escape(who)}</b> · {escape(e.email or '')}</div>"
        f'<div class="meta">grade {escape(e.grade or "-")} · priority {e.priority:.0f} · '
        f"{escape(e.stage)} · {escape(e.assignee or 'unassigned')}{lost}</div>"
        f'<div class="meta">recent: {escape(activity)}</div>'
        f'<div class="bant">ask about: {escape(unknown)}</div>'
        f'<form method="post" action="/call-list/outcome">'
        f'<input type="hidden" name="lead_id" value="{escape(e.lead_id)}">'
        f'<input type="hidden" name="event_id" value="{escape(event_id)}">'
        f'<input type="hidden" name="rep" value="{escape(rep or "")}">{buttons}</form></li>'
    )


def _login(rep: str, message: str = "") -> str:
    note = f'<p class="err">{escape(message)}</p>' if message else ""
    return _page(
        "leadcycle: sign in",
        f"<h1>Call list</h1>{note}<form method='post' action='/call-list/login'>"
        f"<input type='hidden' name='rep' value='{escape(rep)}'>"
        "<label>Sales token <input type='password' name='token' autocomplete='off'></label> "
        "<button>Open</button></form>",
    )


def _principal_or_none(request: web.Request) -> Principal | None:
    try:
        return principal(request, cookie=True)
    except Refused:
        return None


async def _form(request: web.Request) -> dict[str, str]:
    """The posted form's text fields; a body that is not a readable form is a 400."""
    try:
        form = await request.post()
    except web.HTTPException:
        raise  # 413 from client_max_size
    except (ValueError, AssertionError, LookupError, HttpProcessingError) as exc:
        # What aiohttp's form readers raise on broken multipart parts and boundaries, bytes
        # that are not the declared charset, and unknown charsets.
        raise Refused(400, f"malformed form body: {type(exc).__name__}") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _cross_site(request: web.Request) -> None:
    if not same_origin(request):
        raise Refused(403, "cross-site form post refused (Origin is not this server's)")


async def call_list_page(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    asked = rep_param(request)
    who = _principal_or_none(request)
    if who is None:
        return _html(_login(asked or ""), status=401)
    rep = rep_in_scope(who, asked)
    entries = await fetch_list(ctx, rep=rep)
    tz = ZoneInfo(ctx.timezone)
    done = request.query.get("recorded")
    note = f'<p class="note">Recorded {escape(done[:300])}.</p>' if done else ""
    out = (
        "<form class='out' method='post' action='/call-list/logout'>"
        "<button>Sign out</button></form>"
    )
    rows = "".join(_entry(e, tz, rep) for e in entries) or "<p>No open follow-ups.</p>"
    now = datetime.now(tz).strftime("%Y-%m-%d %H:%M")
    title = f"Call list: {rep or 'all reps'}"
    body = (
        f"{out}<h1>{escape(title)}</h1><p class='meta'>{len(entries)} open · as of {now} "
        f"({escape(ctx.timezone)}) · due time, then priority</p>{note}<ol>{rows}</ol>"
    )
    return _html(_page(title, body, refresh=True))


async def login(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    _cross_site(request)
    form = await _form(request)
    rep = str(form.get("rep", ""))
    who = ctx.sales.principal(str(form.get("token", "")))
    if who is None:
        security(request).charge_failure(request)
        return _html(_login(rep, "Unknown token."), status=401)
    target = "/call-list" + (f"?{urlencode({'rep': rep})}" if rep else "")
    response = web.Response(status=303, headers={"Location": target})
    expires = int(ctx.now().timestamp()) + SESSION_SECONDS
    response.set_cookie(
        SALES_COOKIE,
        ctx.sales.session(who, expires=expires),
        httponly=True,
        samesite="Strict",
        secure=security(request).cookie_is_secure(request),
        max_age=SESSION_SECONDS,
        path="/",
    )
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """Forget the session in this browser (the cookie is signed, not stored: see auth.py)."""
    _cross_site(request)
    response = web.Response(status=303, headers={"Location": "/call-list"})
    response.del_cookie(
        SALES_COOKIE,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=security(request).cookie_is_secure(request),
    )
    return response


async def outcome_form(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    _cross_site(request)
    who = principal(request, cookie=True)
    form = await _form(request)
    rep = str(form.get("rep", "")) or None
    doc = {
        "type": "sales_outcome",
        "lead_id": str(form.get("lead_id", "")),
        "event_id": str(form.get("event_id", "")) or None,
        "outcome": str(form.get("outcome", "")),
    }
    found = await record_outcome(ctx, who, doc)
    query = {"recorded": f"{found.outcome} for {found.lead_id}"}
    if rep:
        query["rep"] = rep
    raise web.HTTPSeeOther("/call-list?" + urlencode(query))
