"""Flood the worker's HTTP collector (``POST /v1/track``) at its configured rate limit.

Several simulated clients — each a write key's site and a source address of its own on the
loopback network, which is how the collector tells clients apart (the TCP peer) — send
requests at exactly ``LEADCYCLE_HTTP_RATE_LIMIT`` each, sustained: a seeded mix of valid
batches (realistic traffic, with client retries that reuse event ids), partly and wholly
invalid batches, oversized bodies (by Content-Length and chunked), batches over the event
limit and malformed JSON. On top of that rate they send unauthorized requests (no key, a wrong
key) and requests from a foreign ``Origin``, which the collector refuses before the limit
(they spend no token). One more client sends the same mix at three times the limit, and
sends the items of a request answered 429 again later (same event ids), as a client should.

Every answer must be the documented one for its kind (docs/http.md): nothing sent at the limit
may be answered 429, the greedy client must be (with ``Retry-After``) and may not get more than
the burst plus the rate through; the only 5xx documented is 503 (broker did not acknowledge).
The worker's RSS is sampled throughout and must stay within a bound; every accepted item must
end up in event_log, scored as the pure core says.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer

from bench.load import make_traffic
from infra.processes import free_port
from infra.settings import Settings

from .harness import DrillConfig, DrillWorker, Rig, Supervisor, wait_for
from .report import DrillResult, say
from .verify import conclude, expect

UA = "Mozilla/5.0 (X11; Linux x86_64) leadcycle-drill/1"
ORIGIN = "https://www.leadcycle.example"
Status = int | str  # "closed": the server closed the connection (413 early)
#: Requests that spend a token: kind -> (weight, documented answers).
KEYED: dict[str, tuple[float, frozenset[Status]]] = {
    "valid": (55, frozenset({202})),
    "retry": (8, frozenset({202})),
    "mixed": (8, frozenset({202})),
    "all_invalid": (4, frozenset({422})),
    "too_big": (3, frozenset({413, "closed"})),
    "too_big_chunked": (1, frozenset({413, "closed"})),
    "too_many_events": (3, frozenset({413})),
    "malformed": (7, frozenset({400})),
}
#: Requests refused before the limit is checked, sent on top of a client's rate.
FREE: dict[str, tuple[float, frozenset[Status]]] = {
    "no_key": (4, frozenset({401})),
    "wrong_key": (4, frozenset({401})),
    "foreign_origin": (3, frozenset({403})),
}
KINDS = {**KEYED, **FREE}
FREE_SHARE = 0.15  # free requests per keyed one, for the clients at the limit
GREEDY_FACTOR = 3.0  # the greedy client's rate, in limits
DOCUMENTED_5XX = frozenset({503})
RSS_BOUND_MB = 200.0  # growth over the pre-flood reading that fails the drill
#: The limit the drill floods at: the collector's defaults, set explicitly for the worker.
RATE = float(Settings.model_fields["http_rate_limit"].default)
BURST = int(Settings.model_fields["http_rate_burst"].default)
SITES = ("site-a", "site-b")


@dataclass
class Client:
    """One simulated client: a site's write key from one source address, at a set rate."""

    name: str
    site: str
    key: str
    ip: str
    rate: float
    greedy: bool  # above the limit: 429 is the expected answer to some of its requests
    rng: random.Random
    sent_ok: list[dict[str, Any]] = field(default_factory=list)  # its accepted items, as sent
    refused: list[dict[str, Any]] = field(default_factory=list)  # valid items answered 429
    statuses: Counter[Status] = field(default_factory=Counter)
    seconds: float = 0.0  # first request to last answer

    @property
    def group(self) -> str:
        return "above" if self.greedy else "at-limit"


@dataclass
class Flood:
    """The state of one flood: items to send, what was accepted, what came back."""

    items: list[dict[str, Any]]
    max_events: int
    max_body: int
    next_item: int = 0
    sent_ok: list[dict[str, Any]] = field(default_factory=list)  # every accepted item, as sent
    statuses: Counter[str] = field(default_factory=Counter)  # "kind status" -> n
    by_group: dict[str, Counter[Status]] = field(default_factory=dict)
    unexpected: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def take(self, client: Client, n: int) -> list[dict[str, Any]]:
        """Items a 429 refused first (re-sent as they were), then fresh items while they
        last, then re-sends of the client's accepted ones."""
        if client.refused:
            chunk, client.refused[:n] = client.refused[:n], []
            return chunk
        if self.next_item >= len(self.items):
            return [client.rng.choice(client.sent_ok) for _ in range(n)] if client.sent_ok else []
        chunk = self.items[self.next_item : self.next_item + n]
        self.next_item += len(chunk)
        # The collector sets context.ip to the peer: send what the worker will score.
        return [{**i, "context": {**i["context"], "ip": client.ip}} for i in chunk]

    def request(self, client: Client, kind: str) -> tuple[dict[str, str], Any, list[Any]]:
        """Headers, body (bytes, a file or an async chunk generator) and its valid items."""
        rng = client.rng
        headers = {
            "X-Leadcycle-Key": client.key,
            "User-Agent": UA,
            "Content-Type": "application/json",
        }
        n = rng.randint(1, 20)
        items: list[dict[str, Any]] = []
        body: Any
        if kind == "retry" and client.sent_ok:
            items = [rng.choice(client.sent_ok) for _ in range(n)]
            body = {"batch": items}
        elif kind in ("valid", "retry", "no_key", "wrong_key", "foreign_origin"):
            items = self.take(client, n if kind in ("valid", "retry") else 1)
            body = {"batch": items} if items else {"batch": [{"type": "page_view"}]}
        elif kind == "mixed":
            items = self.take(client, n)
            body = {"batch": [*items, *_invalid_items(rng)]}
        elif kind == "all_invalid":
            body = {"batch": _invalid_items(rng)}
        elif kind == "too_big":
            # A file-like body: aiohttp warns that big bytes bodies block the event loop.
            body = io.BytesIO(b'{"batch": ["' + b"x" * (self.max_body + 1024) + b'"]}')
        elif kind == "too_big_chunked":
            body = _chunks(self.max_body + 256 * 1024)
        elif kind == "too_many_events":
            body = {"batch": [{"type": "page_view", "anonymous_id": "a"}] * (self.max_events + 1)}
        else:  # malformed
            body = rng.choice([b"{not json", b"[]", b'{"x": NaN}', b"", b'{"batch": []}'])
        if kind == "no_key":
            del headers["X-Leadcycle-Key"]
        elif kind == "wrong_key":
            headers["X-Leadcycle-Key"] = "not-the-key"
        elif kind == "foreign_origin":
            headers["Origin"] = "https://evil.example"
        if kind not in ("valid", "retry", "mixed"):
            items = []  # refused as a whole: nothing in it may be accepted
        if isinstance(body, dict):
            body = json.dumps(body, ensure_ascii=False).encode()
        return headers, body, items


def _invalid_items(rng: random.Random) -> list[Any]:
    return [
        rng.choice(
            [
                {"type": "page_view", "occurred_at": "2026-01-01T00:00:00"},  # naive, no subject
                {"type": "purchase", "anonymous_id": "x"},
                {"type": "page_view", "anonymous_id": ["x"]},
                "not an object",
            ]
        )
        for _ in range(rng.randint(1, 5))
    ]


async def _chunks(size: int) -> AsyncIterator[bytes]:
    yield b'{"batch": ["'
    for _ in range(size // 65536 + 1):
        yield b"y" * 65536


def _items(leads: int, seed: int) -> list[dict[str, Any]]:
    """Realistic tracker events whose context is what the collector will set anyway (the
    client's IP, set when sent, and our User-Agent), so the items as sent are exactly what
    the worker scores."""
    out = []
    for m in make_traffic(leads=leads, seed=seed, events=None).messages:
        if m.topic == "events" and m.valid:
            doc = json.loads(m.value)
            ctx = doc.get("context") or {}
            doc["context"] = {"ip": "127.0.0.1", "user_agent": UA}
            if "locale" in ctx:
                doc["context"]["locale"] = ctx["locale"]
            out.append(doc)
    return out


async def _send(http: aiohttp.ClientSession, url: str, flood: Flood, c: Client, kind: str) -> None:
    headers, body, items = flood.request(c, kind)
    started = time.monotonic()
    retry_after = None
    try:
        async with http.post(url, data=body, headers=headers) as resp:
            status: Status = resp.status
            retry_after = resp.headers.get("Retry-After")
            answer = await resp.read()
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
        status, answer = "closed", b""
    flood.latencies.append(time.monotonic() - started)
    flood.statuses[f"{kind} {status}"] += 1
    flood.by_group.setdefault(c.group, Counter())[status] += 1
    c.statuses[status] += 1
    allowed = KINDS[kind][1] | DOCUMENTED_5XX | ({429} if c.greedy else set())
    if status not in allowed:
        flood.unexpected[f"{c.group} {kind} -> {status}: {answer[:120]!r}"] += 1
    if status == 429 and not (retry_after or "").isdigit():
        flood.unexpected[f"429 with Retry-After {retry_after!r}"] += 1
    if status == 202:
        accepted = {
            r["event_id"] for r in json.loads(answer)["results"] if r["status"] == "accepted"
        }
        sent = {i.get("event_id") for i in items}
        if accepted != sent:
            flood.unexpected[f"{kind}: accepted {len(accepted)} of {len(sent)} valid items"] += 1
        c.sent_ok.extend(items)
        flood.sent_ok.extend(items)
    elif status == 429:
        c.refused.extend(items)  # nothing of it was taken: the client sends them again


async def _pace(base: str, flood: Flood, c: Client, seconds: float) -> None:
    """``c.rate`` token-spending requests a second for ``seconds`` (never earlier than their
    slot), plus the free ones on top for a client at the limit."""
    keyed, keyed_w = list(KEYED), [w for w, _ in KEYED.values()]
    free, free_w = list(FREE), [w for w, _ in FREE.values()]
    connector = aiohttp.TCPConnector(limit=8, local_addr=(c.ip, 0))
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as http:
        url = f"{base}/v1/track"
        tasks = []
        began = time.monotonic()
        for i in range(int(seconds * c.rate)):
            ahead = began + i / c.rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            kind = c.rng.choices(keyed, keyed_w)[0]
            tasks.append(asyncio.create_task(_send(http, url, flood, c, kind)))
            if not c.greedy and c.rng.random() < FREE_SHARE:
                kind = c.rng.choices(free, free_w)[0]
                tasks.append(asyncio.create_task(_send(http, url, flood, c, kind)))
        await asyncio.gather(*tasks)
        c.seconds = time.monotonic() - began


def _clients(count: int, keys: dict[str, str], seed: int) -> list[Client]:
    """``count`` clients at the limit — two sites from each address, so only the pair (site,
    IP) tells them apart — and one greedy client above it."""
    clients = [
        Client(
            f"c{i}",
            SITES[i % 2],
            keys[SITES[i % 2]],
            f"127.0.0.{10 + i // 2}",
            RATE,
            greedy=False,
            rng=random.Random(f"{seed}-c{i}"),
        )
        for i in range(count)
    ]
    greedy = Client(
        "greedy",
        SITES[0],
        keys[SITES[0]],
        "127.0.0.99",
        RATE * GREEDY_FACTOR,
        greedy=True,
        rng=random.Random(f"{seed}-greedy"),
    )
    return [*clients, greedy]


def _loopback_aliases() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.99", 0))
    except OSError:
        return False
    return True


async def _sample_rss(worker: DrillWorker, peaks: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        rss = worker.rss_mb()
        if rss is not None:
            peaks.append(rss)
        await asyncio.sleep(0.5)


def _counts(counter: Counter[Status]) -> str:
    return ", ".join(f"{k} {n:,}" for k, n in sorted(counter.items(), key=lambda kv: str(kv[0])))


def _judge_greedy(c: Client, result: DrillResult, burst: int) -> None:
    """The limit held: some 429s, and no more through than the burst plus the rate allow
    (one second of slack for the time between the client's clock and the server's)."""
    through = sum(n for s, n in c.statuses.items() if s != 429)
    bound = burst + RATE * (c.seconds + 1.0)
    result.notes.append(
        f"above the limit ({c.rate:.0f}/s from {c.ip}): {through:,} through, "
        f"{c.statuses[429]:,} answered 429 (at most {bound:,.0f} may pass in {c.seconds:.1f} s)"
    )
    if not c.statuses[429]:
        result.fail("the client at 3x the limit never got a 429")
    if through > bound:
        result.fail(f"{through:,} requests of the greedy client passed (bound {bound:,.0f})")


async def run(cfg: DrillConfig) -> DrillResult:
    result = DrillResult("flood")
    started = time.monotonic()
    seconds, count, leads = (4.0, 2, 150) if cfg.quick else (60.0, 4, 3000)
    # The short form runs inside the test suite on a busy machine: a bucket of 5 s instead of
    # 2 s, so that a server stall there is not mistaken for the limit refusing a fair client.
    burst = int(RATE * 5) if cfg.quick else BURST
    if not _loopback_aliases():
        result.fail("the drill's clients need 127.0.0.0/8 on the loopback interface (Linux)")
        return result
    rng = random.Random(cfg.seed)
    keys = {site: f"wk-{site}-{rng.getrandbits(48):x}" for site in SITES}
    clients = _clients(count, keys, cfg.seed)
    port = free_port()
    flood = Flood(_items(leads, cfg.seed), max_events=100, max_body=1024 * 1024)
    async with Rig("flood", cfg) as rig:
        broker = rig.broker()
        dsn = await rig.database(await rig.server())
        tap = await rig.topics_on(broker.url)
        sup = await rig.supervisor(
            broker.url,
            dsn,
            LEADCYCLE_WEB_ENABLED="true",
            LEADCYCLE_WEB_BIND="127.0.0.1",
            LEADCYCLE_WEB_PORT=str(port),
            # Server keys: the traffic names CRM leads, unsubscribes and identifies known
            # emails, which only a site's server may (docs/http.md, "Trust model").
            LEADCYCLE_HTTP_SERVER_KEYS=",".join(f"{s}={k}" for s, k in keys.items()),
            LEADCYCLE_HTTP_CORS_ORIGINS=ORIGIN,
            LEADCYCLE_HTTP_BATCH_MAX_EVENTS=str(flood.max_events),
            LEADCYCLE_HTTP_MAX_BODY_BYTES=str(flood.max_body),
            LEADCYCLE_HTTP_RATE_LIMIT=f"{RATE:g}",
            LEADCYCLE_HTTP_RATE_BURST=str(burst),
        )
        base = f"http://127.0.0.1:{port}"
        if not await _ready(base, sup):
            result.fail(f"/readyz never answered 200:\n{sup.tail()}")
            await conclude(dsn, sup, expect([]), result, tap)
            return result
        worker = sup.current
        before = worker.rss_mb() or 0.0
        peaks: list[float] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_rss(worker, peaks, stop))
        say(
            f"flood: {count} clients at the limit ({RATE:g}/s, burst {burst}, +{FREE_SHARE:.0%}"
            f" unauthorized/foreign origin) and one at {GREEDY_FACTOR:g}x for {seconds:.0f} s"
            f" against {base}/v1/track"
        )
        began = time.monotonic()
        await asyncio.gather(*(_pace(base, flood, c, seconds) for c in clients))
        sent_for = time.monotonic() - began
        flood_end = time.monotonic()
        stop.set()
        await sampler
        # The oracle folds the events as the worker reads them: as the collector published
        # them, stamped with `collected` (whose site keys their idempotency), not as sent.
        published = await _published(
            broker.url, tap.topics.events, {str(i["event_id"]) for i in flood.sent_ok}
        )
        exp = expect(("events", value) for value in published)
        ok, now, _ = await wait_for(dsn, lambda c: c.events >= len(exp.ids), seconds=120, sup=sup)
        if ok:
            result.recovery["flood end->all accepted in event_log"] = time.monotonic() - flood_end
        else:
            result.fail(f"only {now.events:,} of {len(exp.ids):,} accepted events in event_log")
        after = worker.rss_mb() or 0.0
        peak = max(peaks, default=after)
        total = sum(sum(g.values()) for g in flood.by_group.values())
        everything: Counter[Status] = sum(flood.by_group.values(), Counter())
        result.notes.append(
            f"{total:,} requests in {sent_for:.1f} s ({total / sent_for:.0f}/s); "
            f"by status: {_counts(everything)}"
        )
        result.notes.append(
            f"at the limit ({count} clients x {RATE:g}/s + free ones): "
            f"{_counts(flood.by_group.get('at-limit', Counter()))}"
        )
        _judge_greedy(clients[-1], result, burst)
        result.notes.append(
            "by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(flood.statuses.items()))
        )
        lat = sorted(flood.latencies)
        result.notes.append(
            f"latency p50 {lat[len(lat) // 2] * 1000:.0f} ms, p99 "
            f"{lat[int(len(lat) * 0.99)] * 1000:.0f} ms; worker RSS before {before:.0f} MB, "
            f"peak {peak:.0f} MB, after {after:.0f} MB (bound: +{RSS_BOUND_MB:.0f} MB)"
        )
        for what, n in flood.unexpected.most_common(10):
            result.fail(f"{n} x undocumented answer: {what}")
        if peak - before > RSS_BOUND_MB:
            result.fail(f"worker RSS grew {peak - before:.0f} MB (bound {RSS_BOUND_MB:.0f} MB)")
        await conclude(dsn, sup, exp, result, tap)
    result.seconds = time.monotonic() - started
    return result


async def _published(
    kafka_url: str, topic: str, ids: set[str], seconds: float = 60.0
) -> list[bytes]:
    """Every record of ``topic`` (partition order), read until each of ``ids`` has been seen
    and a read comes back empty, or ``seconds`` pass (the check then reports what is missing)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_url, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    values: list[bytes] = []
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=500)
            for records in got.values():
                for record in records:
                    if record.value is not None:
                        values.append(record.value)
                        seen.add(str(json.loads(record.value).get("event_id")))
            if not got and ids <= seen:
                break
    finally:
        await consumer.stop()
    return values


async def _ready(base: str, sup: Supervisor, seconds: float = 90.0) -> bool:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not sup.crash_loop:
            try:
                async with http.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    return False
