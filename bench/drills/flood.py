"""Flood the worker's HTTP collector (``POST /v1/track``) and check answers, memory and effects.

A seeded mix of requests is sent at a steady rate (the collector has no request-rate setting
of its own, so the drill's rate is the load): valid batches (from realistic traffic, with
client retries that reuse event ids), partly and wholly invalid batches, unauthorized ones
(no key, a wrong key, a foreign Origin), oversized bodies (by Content-Length and chunked),
batches over the event limit and malformed JSON. Every answer must be the documented one
for its kind (docs/http.md); the only 5xx documented is 503 (broker did not acknowledge). The
worker's RSS is sampled throughout and must stay within a bound; every accepted item must end
up in event_log, scored as the pure core says.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.load import make_traffic
from infra.processes import free_port

from .harness import DrillConfig, DrillWorker, Rig, Supervisor, wait_for
from .report import DrillResult, say
from .verify import conclude, expect

UA = "Mozilla/5.0 (X11; Linux x86_64) leadcycle-drill/1"
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1)"
ORIGIN = "https://www.leadcycle.example"
#: kind -> (weight, documented answers). "closed": the server closed the connection (413 early).
KINDS: dict[str, tuple[float, frozenset[int | str]]] = {
    "valid": (55, frozenset({202})),
    "retry": (8, frozenset({202})),
    "mixed": (8, frozenset({202})),
    "all_invalid": (4, frozenset({422})),
    "no_key": (4, frozenset({401})),
    "wrong_key": (4, frozenset({401})),
    "foreign_origin": (3, frozenset({403})),
    "too_big": (3, frozenset({413, "closed"})),
    "too_big_chunked": (1, frozenset({413, "closed"})),
    "too_many_events": (3, frozenset({413})),
    "malformed": (7, frozenset({400})),
}
DOCUMENTED_5XX = frozenset({503})
RSS_BOUND_MB = 200.0  # growth over the pre-flood reading that fails the drill


@dataclass
class Flood:
    """The state of one flood: items to send, what was accepted, what came back."""

    items: list[dict[str, Any]]
    rng: random.Random
    key: str
    max_events: int
    max_body: int
    next_item: int = 0
    sent_ok: list[dict[str, Any]] = field(default_factory=list)  # accepted items, as sent
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def take(self, n: int) -> list[dict[str, Any]]:
        """Fresh items while they last, then re-sends of accepted ones (client retries)."""
        if self.next_item >= len(self.items):
            return [self.rng.choice(self.sent_ok) for _ in range(n)] if self.sent_ok else []
        chunk = self.items[self.next_item : self.next_item + n]
        self.next_item += len(chunk)
        return chunk

    def request(self, kind: str) -> tuple[dict[str, str], Any, list[dict[str, Any]]]:
        """Headers, body (bytes or an async chunk generator) and the valid items it carries."""
        headers = {
            "X-Leadcycle-Key": self.key,
            "User-Agent": UA,
            "Content-Type": "application/json",
        }
        n = self.rng.randint(1, 20)
        items: list[dict[str, Any]] = []
        body: Any
        if kind == "retry" and self.sent_ok:
            items = [self.rng.choice(self.sent_ok) for _ in range(n)]
            body = {"batch": items}
        elif kind in ("valid", "retry", "no_key", "wrong_key", "foreign_origin"):
            items = self.take(n) if kind in ("valid", "retry") else self.take(1)
            body = {"batch": items} if items else {"batch": [{"type": "page_view"}]}
        elif kind == "mixed":
            items = self.take(n)
            body = {"batch": [*items, *_invalid_items(self.rng)]}
        elif kind == "all_invalid":
            body = {"batch": _invalid_items(self.rng)}
        elif kind == "too_big":
            # A file-like body: aiohttp warns that big bytes bodies block the event loop.
            body = io.BytesIO(b'{"batch": ["' + b"x" * (self.max_body + 1024) + b'"]}')
        elif kind == "too_big_chunked":
            body = _chunks(self.max_body + 256 * 1024)
        elif kind == "too_many_events":
            body = {"batch": [{"type": "page_view", "anonymous_id": "a"}] * (self.max_events + 1)}
        else:  # malformed
            body = self.rng.choice([b"{not json", b"[]", b'{"x": NaN}', b"", b'{"batch": []}'])
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
    """Realistic tracker events whose context is what the collector will set anyway (our IP
    and User-Agent), so the items as sent are exactly what the worker scores."""
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


async def _send(http: aiohttp.ClientSession, url: str, flood: Flood, kind: str) -> None:
    headers, body, items = flood.request(kind)
    started = time.monotonic()
    try:
        async with http.post(url, data=body, headers=headers) as resp:
            status: int | str = resp.status
            answer = await resp.read()
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
        status, answer = "closed", b""
    flood.latencies.append(time.monotonic() - started)
    flood.statuses[f"{kind} {status}"] += 1
    allowed = KINDS[kind][1] | DOCUMENTED_5XX
    if status not in allowed:
        flood.unexpected[f"{kind} -> {status}: {answer[:120]!r}"] += 1
    if status == 202:
        accepted = {
            r["event_id"] for r in json.loads(answer)["results"] if r["status"] == "accepted"
        }
        sent = {i.get("event_id") for i in items}
        if accepted != sent:
            flood.unexpected[f"{kind}: accepted {len(accepted)} of {len(sent)} valid items"] += 1
        flood.sent_ok.extend(items)


async def _sample_rss(worker: DrillWorker, peaks: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        rss = worker.rss_mb()
        if rss is not None:
            peaks.append(rss)
        await asyncio.sleep(0.5)


async def run(cfg: DrillConfig) -> DrillResult:
    result = DrillResult("flood")
    started = time.monotonic()
    seconds, rate, leads = (4.0, 60.0, 150) if cfg.quick else (60.0, 100.0, 3000)
    rng = random.Random(cfg.seed)
    port = free_port()
    flood = Flood(
        _items(leads, cfg.seed),
        rng,
        key=f"wk-{rng.getrandbits(48):x}",
        max_events=100,
        max_body=1024 * 1024,
    )
    async with Rig("flood", cfg) as rig:
        broker = rig.broker()
        dsn = await rig.database(await rig.server())
        await rig.topics_on(broker.url)
        sup = await rig.supervisor(
            broker.url,
            dsn,
            LEADCYCLE_WEB_ENABLED="true",
            LEADCYCLE_WEB_BIND="127.0.0.1",
            LEADCYCLE_WEB_PORT=str(port),
            LEADCYCLE_HTTP_WRITE_KEYS=f"drill={flood.key}",
            LEADCYCLE_HTTP_CORS_ORIGINS=ORIGIN,
            LEADCYCLE_HTTP_BATCH_MAX_EVENTS=str(flood.max_events),
            LEADCYCLE_HTTP_MAX_BODY_BYTES=str(flood.max_body),
        )
        base = f"http://127.0.0.1:{port}"
        if not await _ready(base, sup):
            result.fail(f"/readyz never answered 200:\n{sup.tail()}")
            await conclude(dsn, sup, expect([]), result)
            return result
        worker = sup.current
        before = worker.rss_mb() or 0.0
        peaks: list[float] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_rss(worker, peaks, stop))
        total = int(seconds * rate)
        names, weights = list(KINDS), [w for w, _ in KINDS.values()]
        say(f"flood: {total:,} requests at {rate:.0f}/s against {base}/v1/track")
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        ) as http:
            tasks = []
            began = time.monotonic()
            for i in range(total):
                ahead = began + i / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                kind = rng.choices(names, weights)[0]
                tasks.append(asyncio.create_task(_send(http, f"{base}/v1/track", flood, kind)))
            await asyncio.gather(*tasks)
            sent_for = time.monotonic() - began
        flood_end = time.monotonic()
        stop.set()
        await sampler
        exp = expect(("events", json.dumps(i, ensure_ascii=False).encode()) for i in flood.sent_ok)
        ok, now, _ = await wait_for(dsn, lambda c: c.events >= len(exp.ids), seconds=120, sup=sup)
        if ok:
            result.recovery["flood end->all accepted in event_log"] = time.monotonic() - flood_end
        else:
            result.fail(f"only {now.events:,} of {len(exp.ids):,} accepted events in event_log")
        after = worker.rss_mb() or 0.0
        peak = max(peaks, default=after)
        result.notes.append(
            f"{total:,} requests in {sent_for:.1f} s ({total / sent_for:.0f}/s); answers: "
            + ", ".join(f"{k} {n}" for k, n in sorted(flood.statuses.items()))
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
        await conclude(dsn, sup, exp, result)
    result.seconds = time.monotonic() - started
    return result


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
