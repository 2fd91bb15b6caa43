"""What every handler needs, built once when the web server starts."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from infra.settings import Settings
from workers.web.auth import SalesTokens, WriteKeys
from workers.web.producer import EdgeProducer
from workers.web.ratelimit import RateLimiter


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class WebContext:
    settings: Settings
    producer: EdgeProducer
    write_keys: WriteKeys
    sales: SalesTokens
    timezone: str  # the rule set's calendar time zone: call-list days and due times
    pool: Callable[[], Any]  # the worker's asyncpg pool (None until the runtime started)
    cors_origins: frozenset[str] = frozenset()
    #: The collector's per-client buckets; None when LEADCYCLE_HTTP_RATE_LIMIT is 0.
    limiter: RateLimiter | None = None
    now: Callable[[], datetime] = field(default=_utcnow)
    clock: Callable[[], float] = field(default=time.monotonic)  # what the buckets count in
    #: Input partitions with lag that stopped moving (workers/consumer.py); None = not tracked.
    stalled: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None


CONTEXT = web.AppKey("leadcycle", WebContext)


def context(request: web.Request) -> WebContext:
    return request.app[CONTEXT]


def problem(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error body: ``{"error": message}``."""
    return web.json_response({"error": message}, status=status, headers=headers)
