"""POST /v1/track: web-tracker events in, validated by the topic's own decoder, out to Kafka.

Each item is completed (``event_id``, ``occurred_at``, client IP and user agent), serialised,
and run through :func:`events.decode.decode` exactly as the worker will: what the collector
accepts, the worker accepts. Rejected items are dead-lettered with ``source_topic="http"``,
``partition=-1`` and ``offset`` = the item's index in the request.

A request with a known write key and an allowed origin spends a token of its client (the key's
site and :func:`client_ip`) before its body is read; over ``LEADCYCLE_HTTP_RATE_LIMIT`` it is
refused with 429 and ``Retry-After`` (workers/web/ratelimit.py, docs/http.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import datetime
from typing import Any

from aiohttp import web

from events import DeadLetter, InputEvent, Rejection, decode
from events.decode import storable_float
from events.tracking import BehaviourTracked
from workers.ingest import PAYLOAD_PREFIX_BYTES
from workers.web.context import WebContext, context, problem
from workers.web.producer import BrokerUnavailable
from workers.web.ratelimit import retry_after

#: Longest user agent the Context model takes; longer headers are cut, not rejected.
MAX_USER_AGENT = 1024
Record = tuple[str, bytes | None, bytes]


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
    """The client as the collector sees it: the TCP peer. ``X-Forwarded-For`` is not read (a
    client could claim any address in it), so behind a proxy this is the proxy. Both
    ``context.ip`` and the rate limit's client key come from here."""
    return request.remote


def complete(item: Any, request: web.Request, now: datetime) -> Any:
    """Fill what the collector owns: a missing id or time, the client's IP and user agent."""
    if not isinstance(item, dict):
        return item  # the decoder rejects it, naming why
    doc = dict(item)
    if doc.get("event_id") is None:
        doc["event_id"] = f"http-{uuid.uuid4().hex}"
    if doc.get("occurred_at") is None:
        doc["occurred_at"] = now.isoformat()
    ctx = doc.get("context")
    if ctx is None or isinstance(ctx, dict):
        # What the server saw wins over what the client claims.
        ctx = dict(ctx or {})
        ip = client_ip(request)
        if ip:
            ctx["ip"] = ip
        agent = request.headers.get("User-Agent")
        if agent:
            ctx["user_agent"] = agent[:MAX_USER_AGENT]
        doc["context"] = ctx
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


def triage(
    ctx: WebContext, items: list[Any], request: web.Request, now: datetime
) -> tuple[list[dict[str, Any]], list[Record], int]:
    """Per-item results, the records to publish, and how many items were accepted."""
    results: list[dict[str, Any]] = []
    records: list[Record] = []
    accepted = 0
    for index, item in enumerate(items):
        raw = serialise(complete(item, request, now))
        found: InputEvent | Rejection
        if isinstance(item, dict) and "collected" in item:
            # The collector's own stamp: a client claiming it would forge its trust.
            found = Rejection("schema", "collected: is set by the collector only", "collected")
        else:
            found = decode("events", raw, max_bytes=ctx.settings.max_message_bytes)
        if isinstance(found, BehaviourTracked):
            accepted += 1
            results.append({"index": index, "status": "accepted", "event_id": found.event_id})
            records.append((ctx.settings.topics.events, partition_key(found), raw))
        else:
            assert isinstance(found, Rejection)  # the events topic only yields BehaviourTracked
            results.append(
                {
                    "index": index,
                    "status": "rejected",
                    "reason": found.reason,
                    "field": found.field,
                    "error": found.error,
                }
            )
            records.append(dead_letter(ctx, index, raw, found, now))
    return results, records, accepted


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
    if not ctx.write_keys.by_site:
        return problem(401, "the collector has no write keys (set LEADCYCLE_HTTP_WRITE_KEYS)")
    site = ctx.write_keys.site_for(request)
    if site is None:
        return problem(401, "missing or unknown write key (X-Leadcycle-Key header or ?key=)")
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
    now = ctx.now()
    results, records, accepted = triage(ctx, items, request, now)
    try:
        await ctx.producer.send_all(records)
    except BrokerUnavailable:
        return problem(
            503,
            "the broker did not acknowledge in time: retry the request "
            "(an event_id is applied once, however often it arrives)",
            headers={"Retry-After": "5"},
        )
    body = {"accepted": accepted, "rejected": len(items) - accepted, "results": results}
    return web.json_response(body, status=202 if accepted else 422)
