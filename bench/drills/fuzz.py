"""10k seeded hostile inputs interleaved with a realistic stream: all dead-lettered, no crash.

Bad messages are made by mutating real messages of the stream (so they look like what a broken
producer sends) or from scratch: random bytes, invalid UTF-8, truncated JSON, wrong types,
missing fields, huge strings, NUL, deeply nested JSON, 5,000-digit numbers, SQL-looking
values, a message on the wrong topic, not an object, unknown types, bad times, extra fields,
empty values, and exact re-sends of earlier bad ones. Each is kept only if the worker's own
decoder says it is invalid (or raises — a crash the drill must expose), so the expectation is
the contract itself. Some valid events carrying SQL-looking and non-ASCII text are mixed in
too: they must be stored as data and scored.

Then what the decoder *passes* today but breaks later (issue 10): a property of ``1e400`` or
``-1e400`` (non-finite once parsed; PostgreSQL refuses it), a 400-digit integer, a lone UTF-16
surrogate (``"\\ud800"``: valid JSON, not encodable as UTF-8). The expectation is the contract,
not today's decoder: each must be dead-lettered with an error naming ``properties``. After the
stream: one corrupt record batch (gzip codec bits, noise inside, a correct CRC) on
``events[0]``, then valid events of new leads in batches compressed with each codec (gzip,
snappy, lz4, zstd; the last three need the ``cramjam`` package), on ``events[0]`` behind the
corrupt batch and on ``events[1]``. The corrupt batch must leave one dead letter with reason
``undecodable_batch`` and be skipped; every compressed event must be scored.

Verdict: every bad message is a dead letter with the decoder's reason, the worker PID never
changed, nothing stalled, and the valid part (compressed included) scored exactly as the pure
core says.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

from bench.load import make_traffic
from events import Rejection, decode
from workers.traffic import Message

from .harness import DrillConfig, Feed, Rig
from .rawbatch import CODECS, corrupt_batch, publish_compressed, publish_raw
from .report import DrillResult, say
from .verify import MAX_MESSAGE_BYTES, Expected, conclude, expect, wait_all_in

SQL = (
    "'; DROP TABLE leads; --",
    "1' OR '1'='1",
    "Robert'); DELETE FROM event_log;--",
    "$1; COPY event_log TO PROGRAM 'sh'",
    "\\x00'||pg_sleep(10)--",
)
TEXT = ("日本語のタイトル", "مرحبا", "emoji 🎉🚀", "Zalgo z̷̢a̴l̸g̵o", "tab\tand\nnewline")
Doc = dict[str, Any]
Mutation = Callable[[random.Random, Doc], bytes]


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def _random_bytes(rng: random.Random, doc: Doc) -> bytes:
    return rng.randbytes(rng.randint(1, 400))


def _invalid_utf8(rng: random.Random, doc: Doc) -> bytes:
    raw = _dumps(doc)
    cut = rng.randrange(1, len(raw))
    return raw[:cut] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88"]) + raw[cut:]


def _truncated(rng: random.Random, doc: Doc) -> bytes:
    raw = _dumps(doc)
    return raw[: rng.randrange(1, len(raw) - 1)]


def _wrong_type(rng: random.Random, doc: Doc) -> bytes:
    field = rng.choice(sorted(doc))
    doc[field] = rng.choice([12345, 1.5, True, None, [doc[field]], {"v": doc[field]}, ""])
    return _dumps(doc)


def _missing_field(rng: random.Random, doc: Doc) -> bytes:
    for field in rng.sample(["event_id", "type", "occurred_at", "lead_id", "anonymous_id"], 2):
        doc.pop(field, None)
    return _dumps(doc)


def _huge(rng: random.Random, doc: Doc) -> bytes:
    doc["blob"] = "A" * rng.randint(MAX_MESSAGE_BYTES + 1, 4 * MAX_MESSAGE_BYTES)
    return _dumps(doc)


def _nul(rng: random.Random, doc: Doc) -> bytes:
    field = rng.choice([k for k, v in doc.items() if isinstance(v, str)] or ["event_id"])
    doc[field] = f"{doc.get(field, '')}\u0000x"
    raw = _dumps(doc)
    # Escaped (\\u0000, valid JSON) or a raw NUL byte inside a string (invalid JSON).
    return raw.replace(b"\\u0000", b"\x00") if rng.random() < 0.5 else raw


def _deep(rng: random.Random, doc: Doc) -> bytes:
    depth = rng.choice([40, 400, 4000, 20000])
    return _dumps(doc)[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"


def _big_number(rng: random.Random, doc: Doc) -> bytes:
    digits = rng.choice([400, 5000])
    return _dumps(doc)[:-1] + b', "n": ' + b"9" * digits + b"}"


def _sql(rng: random.Random, doc: Doc) -> bytes:
    doc[rng.choice(["type", "occurred_at", "event_id"])] = rng.choice(SQL) * rng.choice([1, 20])
    return _dumps(doc)


def _not_object(rng: random.Random, doc: Doc) -> bytes:
    return _dumps(rng.choice([[doc], "page_view", 42, None, True, []]))


def _unknown_type(rng: random.Random, doc: Doc) -> bytes:
    doc["type"] = rng.choice(["purchase", "PAGE_VIEW", "", "page view", "identify "])
    return _dumps(doc)


def _bad_time(rng: random.Random, doc: Doc) -> bytes:
    doc["occurred_at"] = rng.choice(
        [
            "2026-02-30T00:00:00Z",
            "2026-01-01T00:00:00",  # naive
            "1999-12-31T23:59:59Z",
            "2200-01-01T00:00:00Z",
            "0001-01-01T00:00:00+14:00",
            "yesterday",
            1767225600,
            float("nan"),
        ]
    )
    return _dumps(doc)


def _extra_field(rng: random.Random, doc: Doc) -> bytes:
    doc[rng.choice(["__proto__", "admin", "extra", "eventId"])] = {"x": rng.random()}
    return _dumps(doc)


def _empty(rng: random.Random, doc: Doc) -> bytes:
    return rng.choice([b"", b" ", b"\n", b"{}", b"{"])


MUTATIONS: dict[str, Mutation] = {
    "random_bytes": _random_bytes,
    "invalid_utf8": _invalid_utf8,
    "truncated": _truncated,
    "wrong_type": _wrong_type,
    "missing_field": _missing_field,
    "huge": _huge,
    "nul": _nul,
    "deep": _deep,
    "big_number": _big_number,
    "sql": _sql,
    "not_object": _not_object,
    "unknown_type": _unknown_type,
    "bad_time": _bad_time,
    "extra_field": _extra_field,
    "empty": _empty,
}
#: Rare kinds: big payloads would dominate the run's bytes otherwise.
WEIGHTS = {"huge": 0.2}
OTHER_TOPIC = {"events": "profiles", "profiles": "outcomes", "outcomes": "events"}


def _rejected(topic: str, raw: bytes) -> tuple[bool, str]:
    """Whether the decoder refuses ``raw`` (or raises), and how."""
    try:
        found = decode(topic, raw, max_bytes=MAX_MESSAGE_BYTES)
    except Exception as exc:
        return True, f"raises {type(exc).__name__}"
    return isinstance(found, Rejection), getattr(found, "reason", "valid")


def hostile(
    valid: list[Message], count: int, rng: random.Random, *, kinds: list[str] | None = None
) -> tuple[list[Message], dict[str, int]]:
    """``count`` invalid messages and how many of each kind (by the decoder's verdict)."""
    kinds = kinds or sorted(MUTATIONS)
    weights = [WEIGHTS.get(k, 1.0) for k in kinds]
    made: list[Message] = []
    tally: dict[str, int] = {}
    while len(made) < count:
        base = rng.choice(valid)
        if made and rng.random() < 0.02:  # the same bad bytes again: a second dead letter
            again = rng.choice(made)
            made.append(again)
            tally["resent"] = tally.get("resent", 0) + 1
            continue
        if rng.random() < 0.05:
            kind, topic, raw = "wrong_topic", OTHER_TOPIC[base.topic], base.value
        else:
            kind = rng.choices(kinds, weights)[0]
            topic, raw = base.topic, MUTATIONS[kind](rng, json.loads(base.value))
        bad, how = _rejected(topic, raw)
        if not bad:
            continue  # the mutation happened to stay valid: make another
        label = f"{kind} ({how})" if how.startswith("raises") else kind
        tally[label] = tally.get(label, 0) + 1
        key = rng.choice([base.key, b"", rng.randbytes(8)])
        made.append(Message(topic, key, raw, False, base.timestamp))
    return made, tally


def odd_but_valid(valid: list[Message], count: int, rng: random.Random) -> list[Message]:
    """Valid events whose text looks like SQL or is far from ASCII: stored as data, scored."""
    out = []
    events = [m for m in valid if m.topic == "events"]
    for n in range(count):
        base = rng.choice(events)
        doc = json.loads(base.value)
        doc["event_id"] = f"fuzz-valid-{n}"
        props = doc.setdefault("properties", {})
        props["title"] = rng.choice(SQL + TEXT)
        props["campaign"] = rng.choice(SQL)[:128]
        out.append(Message("events", base.key, _dumps(doc), True, base.timestamp))
    return out


#: JSON values the decoder parses today that PostgreSQL (or UTF-8) cannot take.
PASSES_TODAY = {
    "non_finite": (b"1e400", b"-1e400"),
    "huge_integer": (b"9" * 400, b"-" + b"8" * 400),
    "lone_surrogate": (b'"\\ud800"', b'"tail \\udfff"'),
}


def passes_the_decoder(
    valid: list[Message], per_kind: int, rng: random.Random
) -> tuple[list[Message], dict[str, int]]:
    """``per_kind`` events of each kind of :data:`PASSES_TODAY`, in a property."""
    events = [m for m in valid if m.topic == "events"]
    out: list[Message] = []
    tally: dict[str, int] = {}
    for kind, values in PASSES_TODAY.items():
        for n in range(per_kind):
            base = rng.choice(events)
            doc = json.loads(base.value)
            doc["event_id"] = f"fuzz-{kind}-{n}"
            doc.setdefault("properties", {})[rng.choice(["amount", "title", "plan"])] = "@@"
            raw = _dumps(doc).replace(b'"@@"', values[n % len(values)])
            out.append(Message("events", base.key, raw, False, base.timestamp))
            tally[kind] = tally.get(kind, 0) + 1
    return out, tally


def compressed_events(valid: list[Message], codec: str, count: int) -> list[Message]:
    """``count`` valid behaviour events of two new leads, ids naming the codec."""
    kinds = {"page_view", "content_download", "webinar_attended", "email_click"}
    bases = [m for m in valid if m.topic == "events" and json.loads(m.value)["type"] in kinds]
    out = []
    for n in range(count):
        doc = json.loads(bases[n % len(bases)].value)
        lead = f"fuzz-{codec}-lead-{n % 2}"
        doc.pop("anonymous_id", None)
        doc.update(event_id=f"fuzz-{codec}-{n}", lead_id=lead)
        out.append(Message("events", lead.encode(), _dumps(doc), True, bases[0].timestamp))
    return out


async def publish_odd_batches(
    kafka_url: str,
    rig: Rig,
    valid: list[Message],
    exp: Expected,
    per_codec: int,
    rng: random.Random,
) -> list[str]:
    """The corrupt batch, then the compressed ones; what could not be published."""
    failed = []
    code = await publish_raw(kafka_url, rig.topics.events, 0, corrupt_batch(rng))
    if code == 0:
        exp.batch_letters[("events", 0)] += 1
    else:
        failed.append(f"the broker refused the corrupt batch (error code {code})")
    for i, codec in enumerate(CODECS):
        messages = compressed_events(valid, codec, per_codec)
        for m in messages:
            exp.add_valid(m.topic, m.value)
        try:
            await publish_compressed(kafka_url, rig.topics, codec, messages, partition=i % 2)
        except Exception as exc:  # no codec package: the worker could not read it either
            failed.append(f"could not publish {codec}: {exc!r}")
    return failed


def interleave(stream: list[Message], extra: list[Message], rng: random.Random) -> list[Message]:
    """``extra`` at random places of ``stream``, whose own order is kept."""
    slots = sorted(rng.randrange(len(stream) + 1) for _ in extra)
    out: list[Message] = []
    j = 0
    for i, message in enumerate(stream):
        while j < len(slots) and slots[j] == i:
            out.append(extra[j])
            j += 1
        out.append(message)
    out.extend(extra[j:])
    return out


async def run(cfg: DrillConfig, *, kinds: list[str] | None = None) -> DrillResult:
    result = DrillResult("fuzz")
    started = time.monotonic()
    leads, bad_count, odd, late_each, per_codec = (
        (100, 1_000, 50, 2, 20) if cfg.quick else (800, 10_000, 300, 10, 200)
    )
    rng = random.Random(cfg.seed)
    traffic = make_traffic(leads=leads, seed=cfg.seed, events=None)
    valid = [m for m in traffic.messages if m.valid]
    bad, tally = hostile(valid, bad_count, rng, kinds=kinds)
    late, late_tally = passes_the_decoder(valid, late_each, rng)
    extra = bad + odd_but_valid(valid, odd, rng) + late
    rng.shuffle(extra)
    messages = interleave(traffic.messages, extra, rng)
    refused = {id(m) for m in late}
    exp = expect((m.topic, m.value) for m in messages if id(m) not in refused)
    for m in late:
        exp.refuse(m.topic, m.value, naming="properties")
    result.notes.append(
        f"{len(bad):,} hostile + {odd} odd-but-valid among {len(traffic.messages):,}: "
        + ", ".join(f"{k} {n}" for k, n in sorted(tally.items()))
    )
    result.notes.append(
        "passing today's decoder, to be refused naming the field: "
        + ", ".join(f"{k} {n}" for k, n in late_tally.items())
        + f"; then 1 corrupt record batch and {per_codec} events compressed with each of "
        + ", ".join(CODECS)
    )
    async with Rig("fuzz", cfg) as rig:
        broker = rig.broker()
        dsn = await rig.database(await rig.server())
        tap = await rig.topics_on(broker.url)
        sup = await rig.supervisor(broker.url, dsn, LEADCYCLE_BATCH_SIZE="500")
        pid = sup.current.pid
        say(f"fuzz: publishing {len(messages):,} messages ({exp.invalid:,} invalid)")
        await Feed(broker.url, rig.topics, messages).run()
        for problem in await publish_odd_batches(broker.url, rig, valid, exp, per_codec, rng):
            result.fail(problem)
        # A wedged consumer makes no progress at all: say so after 45 s, not at the timeout.
        waited = await wait_all_in(dsn, exp, sup, result, seconds=240, stall=45)
        if waited is not None:
            result.recovery["all in after publish"] = waited
        if sup.current.pid != pid:
            result.fail(f"the worker crashed: pid {pid} -> {sup.current.pid}")
        await conclude(dsn, sup, exp, result, tap)
    result.seconds = time.monotonic() - started
    return result
