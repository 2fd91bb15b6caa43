"""POST /v1/track: web-tracker events in, validated by the topic's own decoder, out to Kafka.

Each item is checked against what its key may send and completed (``event_id``,
``occurred_at`` corrected for the device's clock, the visitor's IP and user agent, the
``collected`` stamp: site, key kind, times; docs/http.md, "Trust model"), serialised, and run
through :func:`events.decode.decode` exactly as the worker will: what the collector accepts,
the worker accepts. Items whose visitor is a bot are published too and reported per item
(``status: "bot"``); the worker logs them with disposition ``bot`` and scores nothing.
Rejected items are dead-lettered with ``source_topic="http"``, ``partition=-1`` and
``offset`` = the item's index in the request.

A request with a known write key and an allowed origin spends a token of its client (the key's
site and :func:`client_ip`) before its body is read; over ``LEADCYCLE_HTTP_RATE_LIMIT`` it is
refused with 429 and ``Retry-After`` (workers/web/ratelimit.py, docs/http.md).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from events import DeadLetter, InputEvent, Rejection, decode
from events.common import EventTime
from events.decode import storable_float
from events.tracking import BehaviourTracked
from workers.bots import DEFAULT_BOT_PATTERN, BotFilter
from workers.ingest import PAYLOAD_PREFIX_BYTES
from workers.web import clients
from workers.web.auth import KeyHolder, WriteKeys
from workers.web.context import WebContext, context, problem
from workers.web.producer import BrokerUnavailable
from workers.web.ratelimit import retry_after

#: Longest user agent the Context model takes; longer headers are cut, not rejected.
MAX_USER_AGENT = 1024
Record = tuple[str, bytes | None, bytes]
#: Request fields of an item: read and taken out by the collector, never on the topic.
SIGNATURE_FIELD = "email_signature"
SENT_AT_FIELD = "sent_at"
MAX_SIGNATURE = 128
_EVENT_TIME: TypeAdapter[datetime] = TypeAdapter(EventTime)


class BadRequest(Exception):
    """The request as a whole cannot be read; ``status`` says how to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _no_constants(name: str) -> Any:
    # NaN/Infinity are not JSON and PostgreSQL jsonb cannot store them.
    raise ValueError(f"{name} is not valid JSON")


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The body, or BadRequest(413) as soon as it is known to exceed ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(413, f"body is {request.content_length} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"body exceeds the limit of {limit} bytes")
    return bytes(body)


def parse_items(body: bytes, max_events: int) -> list[Any]:
    """One event object, or ``{"batch": [...]}`` -> the list of items (not yet validated)."""
    if not body:
        raise BadRequest(400, "empty body")
    try:
        # Out-of-range floats (1e-400 would silently read as 0.0) become infinity, which the
        # item's decode refuses naming the field; 1e400 is infinity already.
        doc = json.loads(
            body.decode("utf-8"), parse_constant=_no_constants, parse_float=storable_float
        )
    except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError, int-digit limits
        raise BadRequest(400, f"malformed JSON: {str(exc)[:200]}") from exc
    if not isinstance(doc, dict):
        raise BadRequest(400, 'expected an event object or {"batch": [...]}')
    if "batch" not in doc:
        return [doc]
    items = doc["batch"]
    if set(doc) != {"batch"} or not isinstance(items, list) or not items:
        raise BadRequest(400, 'a batch is {"batch": [event, ...]} with at least one event')
    if len(items) > max_events:
        raise BadRequest(413, f"batch has {len(items)} events; the limit is {max_events}")
    return items


def client_ip(request: web.Request) -> str | None:
    """The client as the collector sees it (workers/web/clients.py: the TCP peer, or a trusted
    proxy's forwarded address). Both ``context.ip`` and the rate limit's client key come from
    here."""
    return clients.client_ip(request)


@dataclass(frozen=True)
class Intake:
    """One request as the collector received it: whose key, when, and from which client."""

    holder: KeyHolder
    received_at: datetime
    ip: str | None
    user_agent: str | None

    @classmethod
    def of(cls, request: web.Request, holder: KeyHolder, now: datetime) -> Intake:
        agent = request.headers.get("User-Agent")
        return cls(holder, now, client_ip(request), agent[:MAX_USER_AGENT] if agent else None)


def _refuse(field: str, message: str) -> Rejection:
    return Rejection("schema", f"{field}: {message}", field)


def _time(value: Any) -> datetime | None:
    """``value`` as an event time, or None when it is not one."""
    try:
        return _EVENT_TIME.validate_python(value)
    except ValidationError:
        return None


def complete(item: Any, intake: Intake, keys: WriteKeys) -> Any:
    """The item as the topic will carry it, or the :class:`Rejection` of what the key's holder
    may not send (docs/http.md, "Trust model").

    Fills what the collector owns: a missing id or time, the client's IP and user agent (browser
    keys: the request's client is the visitor), the ``collected`` stamp; corrects
    ``occurred_at`` for the device's clock when the item says when it was sent; takes out the
    request fields ``sent_at`` and ``email_signature``, which never reach the topic.
    """
    if not isinstance(item, dict):
        return item  # the decoder rejects it, naming why
    if "collected" in item:
        # The collector's own stamp: a client claiming it would forge its trust.
        return _refuse("collected", "is set by the collector only")
    doc = dict(item)
    signature = doc.pop(SIGNATURE_FIELD, None)
    sent = doc.pop(SENT_AT_FIELD, None)
    browser = intake.holder.kind == "browser"
    if browser and doc.get("lead_id") is not None:
        return _refuse(
            "lead_id",
            "a browser write key cannot name a CRM lead (browser keys are public); send events"
            " about known leads with a server key (LEADCYCLE_HTTP_SERVER_KEYS)",
        )
    now = intake.received_at
    stamp: dict[str, Any] = {
        "site": intake.holder.site,
        "key": intake.holder.kind,
        "received_at": now.isoformat(),
    }
    if sent is not None:
        sent_at = _time(sent)
        if sent_at is None:
            return _refuse(
                "sent_at", "must be an ISO 8601 time with a timezone (the device's send time)"
            )
        stamp["sent_at"] = sent_at.isoformat()
        device = _time(doc.get("occurred_at"))
        if device is not None:
            # Snowplow's derived_tstamp / Segment's timestamp: the device's clock is trusted
            # for the interval between creating and sending the event, not for the date.
            # An event cannot have happened after it arrived.
            corrected = min(now - (sent_at - device), now)
            stamp["device_occurred_at"] = device.isoformat()
            doc["occurred_at"] = corrected.isoformat()
    if signature is not None:
        email = doc.get("email")
        if not isinstance(signature, str) or len(signature) > MAX_SIGNATURE:
            return _refuse("email_signature", "must be a hex HMAC-SHA256 string")
        if not isinstance(email, str):
            return _refuse("email_signature", "signs the email: the item has none")
        if not keys.email_signed(intake.holder.site, email, signature):
            return _refuse(
                "email_signature",
                "does not match the email (hex HMAC-SHA256 of the lower-cased email keyed"
                " with the site's server key)",
            )
        stamp["email_verified"] = True
    if doc.get("event_id") is None:
        doc["event_id"] = f"http-{uuid.uuid4().hex}"
    if doc.get("occurred_at") is None:
        doc["occurred_at"] = now.isoformat()
    ctx = doc.get("context")
    if browser and (ctx is None or isinstance(ctx, dict)):
        # The request's client is the visitor: what the server saw wins over what the client
        # claims. A server key's request comes from the site's server, so its items keep the
        # visitor's user agent and IP as forwarded; the sender's are not the visitor's.
        ctx = dict(ctx or {})
        if intake.ip:
            ctx["ip"] = intake.ip
        if intake.user_agent:
            ctx["user_agent"] = intake.user_agent
        doc["context"] = ctx
    doc["collected"] = stamp
    return doc


def serialise(doc: Any) -> bytes:
    # A lone surrogate cannot be UTF-8: keep it as bytes the decoder rejects as invalid_utf8.
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


def partition_key(event: BehaviourTracked) -> bytes:
    """docs/contract.md: the lead when known, else the anonymous visitor."""
    return (event.lead_id or event.anonymous_id or "").encode()


def dead_letter(ctx: WebContext, index: int, raw: bytes, why: Rejection, now: datetime) -> Record:
    digest = hashlib.sha256(raw).hexdigest()[:12]
    letter = DeadLetter(
        message_id=f"http:-1:{index}:{digest}",
        source_topic="http",
        partition=-1,
        offset=index,
        received_at=now,
        error=why.error,
        reason=why.reason,
        payload_size=len(raw),
        payload_prefix=base64.b64encode(raw[:PAYLOAD_PREFIX_BYTES]).decode(),
    )
    return ctx.settings.topics.dead_letters, b"http", letter.model_dump_json().encode()


@functools.lru_cache(maxsize=4)
def _bot_filter(pattern: str | None) -> BotFilter:
    return BotFilter(pattern or DEFAULT_BOT_PATTERN)


@dataclass
class Triage:
    """Per-item results and the records to publish."""

    results: list[dict[str, Any]] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    accepted: int = 0
    bots: int = 0


def triage(ctx: WebContext, items: list[Any], intake: Intake) -> Triage:
    """Judge every item; bots are published too (the worker logs them, disposition ``bot``,
    and scores nothing), so the event log counts every bot the collector saw."""
    out = Triage()
    bots = _bot_filter(ctx.settings.bot_pattern)
    for index, item in enumerate(items):
        doc = complete(item, intake, ctx.write_keys)
        found: InputEvent | Rejection
        if isinstance(doc, Rejection):
            found, raw = doc, serialise(item)
        else:
            raw = serialise(doc)
            found = decode("events", raw, max_bytes=ctx.settings.max_message_bytes)
        if isinstance(found, BehaviourTracked):
            out.records.append((ctx.settings.topics.events, partition_key(found), raw))
            if bots.is_bot(found.context.user_agent if found.context else None):
                out.bots += 1
                out.results.append({"index": index, "status": "bot", "event_id": found.event_id})
            else:
                out.accepted += 1
                out.results.append(
                    {"index": index, "status": "accepted", "event_id": found.event_id}
                )
        else:
            assert isinstance(found, Rejection)  # the events topic only yields BehaviourTracked
            out.results.append(
                {
                    "index": index,
                    "status": "rejected",
                    "reason": found.reason,
                    "field": found.field,
                    "error": found.error,
                }
            )
            out.records.append(dead_letter(ctx, index, raw, found, intake.received_at))
    return out


def over_limit(ctx: WebContext, site: str, request: web.Request) -> web.Response | None:
    """Spend a token of the client (site, IP); the 429 to answer when it has none."""
    if ctx.limiter is None:
        return None
    wait = ctx.limiter.take((site, client_ip(request) or ""), ctx.clock())
    if not wait:
        return None
    seconds = retry_after(wait)
    return problem(
        429,
        f"over the rate limit of {ctx.limiter.rate:g} requests/s (burst {ctx.limiter.burst})"
        f" per site and client IP (LEADCYCLE_HTTP_RATE_LIMIT): retry in {seconds} s",
        headers={"Retry-After": str(seconds)},
    )


async def track(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    if not ctx.write_keys.configured:
        return problem(
            401,
            "the collector has no write keys"
            " (set LEADCYCLE_HTTP_WRITE_KEYS or LEADCYCLE_HTTP_SERVER_KEYS)",
        )
    holder = ctx.write_keys.holder(request)
    if holder is None:
        return problem(401, "missing or unknown write key (X-Leadcycle-Key header or ?key=)")
    site = holder.site
    origin = request.headers.get("Origin")
    if origin is not None and origin not in ctx.cors_origins:
        # Write keys are public; the origin list is what ties a key's use to the site's pages.
        return problem(403, f"origin {origin[:200]!r} is not allowed")
    # After the refusals that cost nothing (no body read, no site to charge), before the body.
    refused = over_limit(ctx, site, request)
    if refused is not None:
        return refused
    try:
        items = parse_items(
            await read_limited(request, ctx.settings.http_max_body_bytes),
            ctx.settings.http_batch_max_events,
        )
    except BadRequest as exc:
        response = problem(exc.status, str(exc))
        if exc.status == 413:
            response.force_close()  # the rest of the body is never read
        return response
    judged = triage(ctx, items, Intake.of(request, holder, ctx.now()))
    try:
        await ctx.producer.send_all(judged.records)
    except BrokerUnavailable:
        return problem(
            503,
            "the broker did not acknowledge in time: retry the request "
            "(an event_id is applied once, however often it arrives)",
            headers={"Retry-After": "5"},
        )
    body = {
        "accepted": judged.accepted,
        "bots": judged.bots,
        "rejected": len(items) - judged.accepted - judged.bots,
        "results": judged.results,
    }
    return web.json_response(body, status=202 if judged.accepted or judged.bots else 422)
