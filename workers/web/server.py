"""The worker's HTTP server: an aiohttp app run by a mode Service that faust starts.

Registered with ``app.web_server(...)`` in :func:`workers.app.create_app` when
``LEADCYCLE_WEB_ENABLED`` is true; faust then starts it (after recovery) instead of its own
web stack. It owns a producer of its own so HTTP never waits behind the worker's batches.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from mode import Service

from infra.services import Endpoints
from infra.settings import Settings
from scoring.rules import load_rules
from workers.web import collector, pages, sales
from workers.web.auth import SalesTokens, WriteKeys, parse_pairs
from workers.web.clients import rate_key
from workers.web.context import CONTEXT, WebContext, context
from workers.web.openapi import build_openapi
from workers.web.producer import EdgeProducer
from workers.web.ratelimit import RateLimiter
from workers.web.security import SECURITY, Security, install, protect

log = logging.getLogger("leadcycle.web")

TRACKER_JS = Path(__file__).with_name("static") / "tracker.js"
#: Paths browsers on the configured origins may call cross-origin.
CORS_PATHS = frozenset({"/v1/track"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for the collector only, and only for configured origins."""
    if request.path not in CORS_PATHS:
        return await handler(request)
    origin = request.headers.get("Origin")
    allowed = origin is not None and origin in context(request).cors_origins
    if request.method == "OPTIONS":
        wanted = request.headers.get("Access-Control-Request-Method")
        if not allowed or wanted != "POST":
            return web.Response(
                status=403, text="CORS preflight refused", headers={"Vary": "Origin"}
            )
        assert origin is not None
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "Content-Type, X-Leadcycle-Key",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )
    response = await handler(request)
    response.headers["Vary"] = "Origin"
    if allowed:
        assert origin is not None
        response.headers["Access-Control-Allow-Origin"] = origin
    return response


async def preflight(request: web.Request) -> web.StreamResponse:
    # The cors middleware answers; this route only makes OPTIONS routable.
    return web.Response(status=403)


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "up"})


async def readyz(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    broker, database, stalled = await asyncio.gather(
        ctx.producer.reachable(), _database_ok(ctx), _stalled_partitions(ctx)
    )
    ready = broker and database and not stalled
    return web.json_response(
        {
            "status": "ready" if ready else "not ready",
            "broker": broker,
            "database": database,
            # input partitions with lag that made no progress for LEADCYCLE_STALL_SECONDS
            "stalled_partitions": stalled,
        },
        status=200 if ready else 503,
    )


async def _stalled_partitions(ctx: WebContext) -> list[dict[str, Any]]:
    return [] if ctx.stalled is None else await ctx.stalled()


async def _database_ok(ctx: WebContext) -> bool:
    pool = ctx.pool()
    if pool is None:
        return False
    try:
        async with asyncio.timeout(2.0), pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1") == 1)
    except Exception:  # any failure means "not ready"; the reason is in the database log
        return False


def _openapi_handler() -> Handler:
    body = json.dumps(build_openapi(), ensure_ascii=False, sort_keys=True)

    async def openapi(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, content_type="application/json")

    return openapi


def _tracker_handler() -> Handler:
    script = TRACKER_JS.read_bytes()

    async def tracker(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=script,
            content_type="text/javascript",
            charset="utf-8",
            headers={"Cache-Control": "public, max-age=300"},
        )

    return tracker


def build_app(ctx: WebContext) -> web.Application:
    # protect first (outermost): its headers and limits cover what cors answers by itself too.
    app = web.Application(
        middlewares=[protect, cors], client_max_size=ctx.settings.http_max_body_bytes
    )
    app[CONTEXT] = ctx
    install(app, Security.from_settings(ctx.settings))
    app.router.add_post("/v1/track", collector.track)
    app.router.add_route("OPTIONS", "/v1/track", preflight)
    app.router.add_get("/v1/tracker.js", _tracker_handler())
    app.router.add_get("/v1/call-lists", sales.call_lists)
    app.router.add_post("/v1/outcomes", sales.outcomes)
    app.router.add_get("/call-list", pages.call_list_page)
    app.router.add_post("/call-list/login", pages.login)
    app.router.add_post("/call-list/outcome", pages.outcome_form)
    app.router.add_post("/call-list/logout", pages.logout)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", _openapi_handler())
    return app


def web_context(settings: Settings, endpoints: Endpoints, pool: Callable[[], Any]) -> WebContext:
    """Everything the handlers need; fails at start on a malformed secrets setting."""
    return WebContext(
        settings=settings,
        producer=EdgeProducer(endpoints.kafka_url, timeout=settings.http_publish_timeout),
        write_keys=WriteKeys.from_settings(settings),
        sales=SalesTokens(
            by_rep=parse_pairs("LEADCYCLE_SALES_REP_TOKENS", settings.sales_rep_tokens),
            admin=(
                settings.sales_admin_token.get_secret_value()
                if settings.sales_admin_token
                else None
            ),
        ),
        timezone=load_rules(settings.rules_file).calendar.timezone,
        pool=pool,
        cors_origins=frozenset(
            o.strip().rstrip("/") for o in settings.http_cors_origins.split(",") if o.strip()
        ),
        limiter=(
            RateLimiter(settings.http_rate_limit, settings.http_rate_burst, group=_site_client)
            if settings.http_rate_limit > 0
            else None
        ),
    )


def _site_client(key: Any) -> Any:
    """The collector counts (site, IP) with an IPv6 address as its /64 (clients.py)."""
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], str):
        return (key[0], rate_key(key[1]))
    return key


class WebServer(Service):
    """Runs the aiohttp app on ``LEADCYCLE_WEB_BIND:LEADCYCLE_WEB_PORT`` for the worker's life."""

    def __init__(self, ctx: WebContext, **kw: Any) -> None:
        super().__init__(**kw)
        self.ctx = ctx
        self._runner: web.AppRunner | None = None
        self._guard: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        await self.ctx.producer.start()
        settings = self.ctx.settings
        app = build_app(self.ctx)
        # aiohttp's own timers, set to the read timeout: an idle connection (or one trickling
        # a request's head) is closed by keepalive_timeout, the unread rest of a refused
        # request's body is drained for at most lingering_time. The guard adds what they miss.
        runner = self._runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=settings.http_read_timeout,
            lingering_time=settings.http_read_timeout,
        )
        await runner.setup()
        await web.TCPSite(runner, settings.web_bind, settings.web_port).start()
        self._guard = asyncio.create_task(app[SECURITY].guard.run(lambda: runner.server))
        log.info("HTTP on %s:%d", settings.web_bind, settings.web_port)

    async def on_stop(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.ctx.producer.stop()
