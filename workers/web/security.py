"""The HTTP edge's protections that are not one endpoint's business (docs/http.md, "Protections").

- :func:`protect`, one middleware for every route: browser hardening headers on every answer
  (errors included), the sales endpoints' per-client rate limit and bad-credential lockout,
  a deadline for reading a request's body, and a JSON 500 without internals for a bug.
- :class:`ConnectionGuard`: closes connections that take longer than
  ``LEADCYCLE_HTTP_READ_TIMEOUT`` to send a request's head (slowloris) or sit idle, and caps
  the connections one client may hold open.
- :func:`same_origin`: the Origin check of the page's forms (sign-in, outcome, sign-out).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from infra.settings import Settings
from workers.web import clients as clients_module
from workers.web.clients import Clients, parse_address, parse_networks, rate_key
from workers.web.ratelimit import RateLimiter, retry_after

log = logging.getLogger("leadcycle.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Routes of inside sales: rate-limited per client, and locked after repeated bad credentials.
SALES_PATHS = frozenset(
    {
        "/v1/call-lists",
        "/v1/outcomes",
        "/call-list",
        "/call-list/login",
        "/call-list/outcome",
        "/call-list/logout",
    }
)
#: Bad credentials refill at one a minute once the allowance is spent.
FAILURE_REFILL_PER_SECOND = 1 / 60
#: Answers anything but a page gets: nothing may load, frame or run it.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HARDENING = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on the
    # page's own form posts, and the Origin check would refuse them.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def page_csp(style: str) -> str:
    """The pages' policy: their one inline stylesheet by hash, no script at all, forms to
    this origin only, never framed."""
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


@dataclass
class ConnectionGuard:
    """Closes slow and surplus connections; one sweep a second over the server's connections.

    A connection not inside a handler (waiting for, or receiving, a request's head) may stay
    so for ``timeout`` seconds from when it opened or last answered; then it is closed, however
    many bytes it trickles meanwhile. aiohttp's own keep-alive timer (set to the same value)
    does much of this too; the guard makes it hold whatever the aiohttp version.
    """

    timeout: float
    max_per_client: int
    clients: Clients
    closed_slow: int = 0
    closed_surplus: int = 0
    _opened: dict[RequestHandler, float] = field(default_factory=dict)
    _busy: dict[RequestHandler, int] = field(default_factory=dict)
    _answered: dict[RequestHandler, float] = field(default_factory=dict)

    def started(self, protocol: RequestHandler | None) -> None:
        if protocol is not None:
            self._busy[protocol] = self._busy.get(protocol, 0) + 1

    def finished(self, protocol: RequestHandler | None, now: float) -> None:
        if protocol is not None:
            left = self._busy.get(protocol, 1) - 1
            if left > 0:
                self._busy[protocol] = left
            else:
                self._busy.pop(protocol, None)
            self._answered[protocol] = now

    def sweep(self, connections: list[RequestHandler], now: float) -> None:
        live = set(connections)
        for gone in [p for p in self._opened if p not in live]:
            self._opened.pop(gone, None)
            self._busy.pop(gone, None)
            self._answered.pop(gone, None)
        by_client: dict[str, list[RequestHandler]] = defaultdict(list)
        for protocol in connections:
            opened = self._opened.setdefault(protocol, now)
            idle_since = max(opened, self._answered.get(protocol, opened))
            if _idle(protocol, self._busy) and now - idle_since >= self.timeout:
                self.closed_slow += 1
                protocol.force_close()
                continue
            if self.max_per_client:
                peer = _peer(protocol)
                if peer is not None and not self.clients.is_trusted(parse_address(peer)):
                    by_client[rate_key(peer)].append(protocol)
        for client, held in by_client.items():
            surplus = len(held) - self.max_per_client
            if surplus <= 0:
                continue
            # The newest idle ones go: a client's working connections are left alone.
            idle = sorted((p for p in held if _idle(p, self._busy)), key=lambda p: -self._opened[p])
            for protocol in idle[:surplus]:
                self.closed_surplus += 1
                protocol.force_close()
            log.warning("client %s held %d connections; closed %d", client, len(held), surplus)

    async def run(self, server: Callable[[], web.Server | None]) -> None:
        """Sweep until cancelled (the web server's stop)."""
        period = min(1.0, self.timeout / 4)
        while True:
            await asyncio.sleep(period)
            found = server()
            if found is None:
                continue
            try:
                self.sweep(found.connections, time.monotonic())
            except Exception:  # a bug here must not end the sweeps: log it, sweep again
                log.exception("connection guard sweep failed")


def _idle(protocol: RequestHandler, busy: dict[RequestHandler, int]) -> bool:
    """Neither inside a handler nor still sending an answer (a large CSV to a slow link is
    not a slow request: the connection cap bounds how many of those one client holds)."""
    if protocol in busy:
        return False
    transport = protocol.transport
    return transport is None or not transport.get_write_buffer_size()


def _peer(protocol: RequestHandler) -> str | None:
    transport = protocol.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    return str(peername[0]) if isinstance(peername, tuple) and peername else None


@dataclass
class Security:
    """The edge's protections, built once from settings."""

    clients: Clients
    guard: ConnectionGuard
    read_timeout: float
    #: Sales requests per client; None when LEADCYCLE_SALES_RATE_LIMIT is 0.
    sales_limiter: RateLimiter | None
    #: Bad credentials per client: each one spends a token; none left = 429.
    failures: RateLimiter
    cookie_secure: bool | None
    page_origins: frozenset[str]
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def from_settings(cls, settings: Settings) -> Security:
        clients = Clients(
            parse_networks("LEADCYCLE_HTTP_TRUSTED_PROXIES", settings.http_trusted_proxies)
        )
        return cls(
            clients=clients,
            guard=ConnectionGuard(
                settings.http_read_timeout, settings.http_max_connections_per_client, clients
            ),
            read_timeout=settings.http_read_timeout,
            sales_limiter=(
                RateLimiter(settings.sales_rate_limit, settings.sales_rate_burst, group=_grouped)
                if settings.sales_rate_limit > 0
                else None
            ),
            failures=RateLimiter(
                FAILURE_REFILL_PER_SECOND, settings.sales_auth_failures, group=_grouped
            ),
            cookie_secure=settings.sales_cookie_secure,
            page_origins=frozenset(
                o.strip().rstrip("/") for o in settings.sales_origins.split(",") if o.strip()
            ),
        )

    def client(self, request: web.Request) -> str:
        return self.clients.client_ip(request) or ""

    def charge_failure(self, request: web.Request) -> None:
        """Count a bad credential against the request's client."""
        client = self.client(request)
        self.failures.take(client, self.clock())
        if self.failures.wait(client, self.clock()):
            log.warning("sales sign-in locked for client %s: too many bad credentials", client)

    def cookie_is_secure(self, request: web.Request) -> bool:
        if self.cookie_secure is not None:
            return self.cookie_secure
        return self.clients.scheme(request) == "https"


def _grouped(client: object) -> object:
    return rate_key(client) if isinstance(client, str) else client


SECURITY = web.AppKey("leadcycle.security", Security)


def security(request: web.Request) -> Security:
    return request.app[SECURITY]


def install(app: web.Application, found: Security) -> None:
    """Make ``found`` the app's protections (and its client identity for every handler)."""
    app[SECURITY] = found
    app[clients_module.CLIENTS] = found.clients


def same_origin(request: web.Request) -> bool:
    """Whether a form post comes from the server's own pages (or a configured origin).

    Browsers send ``Origin`` on every POST; without one, ``Sec-Fetch-Site`` (also set by
    browsers) decides; a request with neither is not from a browser, so no other site's page
    can have made it, and it passes (it still needs a valid token or cookie).
    """
    found = security(request)
    origin = request.headers.get("Origin")
    if origin is None:
        return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")
    own = _origin(found.clients.scheme(request), request.host)
    allowed = {own} | {_origin(*_split(o)) for o in found.page_origins}
    return _origin(*_split(origin)) in allowed - {None}


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _split(origin: str) -> tuple[str, str]:
    scheme, _, netloc = origin.strip().rstrip("/").partition("://")
    return scheme, netloc


def _origin(scheme: str, netloc: str) -> str | None:
    """``scheme://host:port`` with the default port spelled out; None if not an origin."""
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS or not netloc:
        return None
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        return None
    if not parts.hostname or parts.path or parts.username is not None:
        return None
    return f"{scheme}://{parts.hostname}:{port}"


def _too_many(message: str, wait: float) -> web.Response:
    seconds = retry_after(wait)
    return web.json_response(
        {"error": f"{message}: retry in {seconds} s"},
        status=429,
        headers={"Retry-After": str(seconds)},
    )


def _harden(response: web.StreamResponse) -> None:
    """Hardening headers a handler has not set itself (pages set their own CSP; the tracker
    script, the one cacheable answer, its own Cache-Control)."""
    for name, value in HARDENING.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Content-Security-Policy", API_CSP)
    response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def protect(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Headers, sales limits, the body deadline and no internals in errors, for every route."""
    found = security(request)
    protocol = request.protocol
    found.guard.started(protocol)
    deadline = _body_deadline(found, request)
    try:
        refused = _sales_gate(found, request) if request.path in SALES_PATHS else None
        response = refused if refused is not None else await handler(request)
    except web.HTTPException as exc:
        _harden(exc)
        raise
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        response = web.json_response({"error": "internal error"}, status=500)
    finally:
        if deadline is not None:
            deadline.cancel()
        found.guard.finished(protocol, time.monotonic())
    _harden(response)
    return response


def _sales_gate(found: Security, request: web.Request) -> web.Response | None:
    client = found.client(request)
    now = found.clock()
    wait = found.failures.wait(client, now)
    if wait:
        return _too_many(
            "too many bad sales tokens or sign-ins from this client"
            " (LEADCYCLE_SALES_AUTH_FAILURES)",
            wait,
        )
    if found.sales_limiter is not None:
        wait = found.sales_limiter.take(client, now)
        if wait:
            return _too_many(
                f"over the sales rate limit of {found.sales_limiter.rate:g} requests/s "
                f"(burst {found.sales_limiter.burst}) per client (LEADCYCLE_SALES_RATE_LIMIT)",
                wait,
            )
    return None


def _body_deadline(found: Security, request: web.Request) -> asyncio.TimerHandle | None:
    """Close the connection if the body is not all in ``read_timeout`` s after the head."""
    if not request.body_exists or request.content.is_eof():
        return None
    protocol = request.protocol

    def check() -> None:
        if not request.content.is_eof() and protocol is not None:
            log.info("closed %s: request body not received in time", found.client(request))
            protocol.force_close()

    return asyncio.get_running_loop().call_later(found.read_timeout, check)
