"""The collector's trust model (docs/http.md, "Trust model"), end to end: the real worker's HTTP
edge, the real broker, the real database.

Browser write keys are public: a browser may describe its own visitor but not speak for a
known lead. Server keys (secret) may do what the topics take. Bots are judged on the visitor.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from infra import db
from infra.kafka import produce_all
from scoring.intake import split
from tests.http.conftest import WebStack
from tests.http.records import publish_hot_lead, read_topic
from tests.integration.workerproc import eventually
from workers.web.auth import ConfigError, WriteKeys, sign_email

pytestmark = pytest.mark.integration

BROWSER_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 trust-test"


def server_key(stack: WebStack) -> str:
    """The sample site's server key (tests/http/conftest.py)."""
    return f"sk-{stack.run}"


def signature(stack: WebStack, email: str) -> str:
    """What the sample site's server would put in its page for ``email``."""
    return sign_email(server_key(stack), email)


def item(type_: str = "page_view", **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": f"tr-{uuid.uuid4().hex}",
        "type": type_,
        "occurred_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "properties": {"url": "https://vendor.example/pricing"},
    }
    doc.update(over)
    return doc


async def post(
    http: aiohttp.ClientSession,
    stack: WebStack,
    items: list[dict[str, Any]],
    *,
    key: str | None = None,
    agent: str = BROWSER_UA,
) -> dict[str, Any]:
    async with http.post(
        f"{stack.base}/v1/track",
        data=json.dumps({"batch": items}),
        headers={"X-Leadcycle-Key": key or stack.write_key, "User-Agent": agent},
    ) as r:
        body: dict[str, Any] = await r.json()
        assert r.status in (202, 422), body
        return body


@pytest.fixture
async def conn(stack: WebStack) -> AsyncIterator[asyncpg.Connection]:
    c = await db.connect(stack.services.database_dsn)
    try:
        yield c
    finally:
        await c.close()


async def profile(stack: WebStack, lead: str, email: str) -> None:
    doc = {
        "event_id": f"{lead}-p",
        "type": "profile_updated",
        "lead_id": lead,
        "occurred_at": (datetime.now(UTC) - timedelta(minutes=20)).isoformat(),
        "email": email,
        "company_size": 800,
        "industry": "software",
    }
    await produce_all(
        stack.services.kafka_url,
        [(stack.topics.profiles, lead.encode(), json.dumps(doc).encode())],
    )


async def logged(
    stack: WebStack, conn: asyncpg.Connection, ids: list[str], what: str
) -> dict[str, str]:
    """Wait until the worker logged every id; their dispositions."""
    found: dict[str, str] = {}

    async def all_in() -> bool:
        rows = await conn.fetch(
            "SELECT payload->>'event_id' AS id, disposition FROM event_log"
            " WHERE payload->>'event_id' = ANY($1)",
            ids,
        )
        found.update({r["id"]: r["disposition"] for r in rows})
        return set(found) == set(ids)

    await eventually(all_in, seconds=30, what=what, workers=(stack.worker,))
    return found


async def lead_exists(stack: WebStack, conn: asyncpg.Connection, lead: str) -> None:
    async def exists() -> bool:
        return bool(await conn.fetchval("SELECT 1 FROM leads WHERE lead_id = $1", lead))

    await eventually(exists, seconds=30, what=f"lead {lead}", workers=(stack.worker,))


async def ledger_events(conn: asyncpg.Connection, lead: str) -> set[str]:
    """The producers' ids of the events credited to ``lead`` (the ledger holds qualified ids,
    ``<source>|<event id>``)."""
    rows = await conn.fetch("SELECT event_id FROM score_ledger WHERE lead_id = $1", lead)
    return {split(r["event_id"])[1] for r in rows}


async def test_a_forged_identify_neither_merges_nor_hides_the_victims_demo_request(
    stack: WebStack, http: aiohttp.ClientSession, conn: asyncpg.Connection
) -> None:
    victim = f"VIC-{stack.run}"
    email = f"victim-{stack.run}@acme-mfg.example"
    await profile(stack, victim, email)
    await lead_exists(stack, conn, victim)

    # The attacker: the public write key, a visitor of their own, ten unsubscribes, then an
    # identify with the victim's email and no signature.
    attacker = f"att-{stack.run}"
    attack = [item(anonymous_id=attacker)]
    attack += [item("unsubscribe", anonymous_id=attacker) for _ in range(10)]
    attack.append(item("identify", anonymous_id=attacker, email=email))
    attack += [item("unsubscribe", anonymous_id=attacker) for _ in range(5)]
    body = await post(http, stack, attack)
    assert body["accepted"] == len(attack), body  # recorded: nothing is refused
    ids = [str(a["event_id"]) for a in attack]
    assert set((await logged(stack, conn, ids, "the attack in the event log")).values()) == {
        "accepted"
    }

    # The victim's real demo request (the CRM's own lead id, from Kafka).
    await publish_hot_lead(
        stack.services.kafka_url, stack.topics, victim, owner=stack.reps[0], email=email
    )

    async def on_the_list() -> bool:
        return bool(
            await conn.fetchval(
                "SELECT 1 FROM followups WHERE lead_id = $1 AND status = 'open'", victim
            )
        )

    await eventually(
        on_the_list, seconds=30, what="the victim's follow-up", workers=(stack.worker,)
    )
    assert not set(ids) & await ledger_events(conn, victim)
    assert (
        await conn.fetchval("SELECT count(*) FROM identity_links WHERE anonymous_id = $1", attacker)
        == 0
    )
    anon = await conn.fetchrow(
        "SELECT merged_into, state FROM leads WHERE lead_id = $1", f"anon:{attacker}"
    )
    assert anon is not None
    assert anon["merged_into"] is None
    # The unsubscribes credited nothing, not even to the attacker's own visitor.
    unsubscribes = await conn.fetchval(
        "SELECT count(*) FROM score_ledger"
        " WHERE split_part(event_id, '|', 2) = ANY($1) AND rule_id = 'unsubscribe'",
        ids,
    )
    assert unsubscribes == 0
    victim_row = await conn.fetchrow(
        "SELECT stage, excluded, behaviour_score FROM leads WHERE lead_id = $1", victim
    )
    assert victim_row is not None
    assert not victim_row["excluded"]
    assert victim_row["behaviour_score"] > 0


async def test_a_signed_identify_merges_the_visitor_into_the_known_lead(
    stack: WebStack, http: aiohttp.ClientSession, conn: asyncpg.Connection
) -> None:
    lead = f"SIG-{stack.run}"
    email = f"Signed-{stack.run}@Acme-Mfg.example"  # the signature is of the lower-cased email
    await profile(stack, lead, email.lower())
    await lead_exists(stack, conn, lead)
    visitor = f"sig-{stack.run}"
    browsing = [item(anonymous_id=visitor), item("content_download", anonymous_id=visitor)]
    identify = item(
        "identify", anonymous_id=visitor, email=email, email_signature=signature(stack, email)
    )
    body = await post(http, stack, [*browsing, identify])
    assert body["accepted"] == 3, body
    await logged(stack, conn, [str(e["event_id"]) for e in browsing], "the browsing")
    await logged(stack, conn, [str(identify["event_id"])], "the identify")

    async def linked() -> bool:
        return (
            await conn.fetchval(
                "SELECT lead_id FROM identity_links WHERE anonymous_id = $1", visitor
            )
            == lead
        )

    await eventually(linked, seconds=30, what="the link", workers=(stack.worker,))
    assert {str(e["event_id"]) for e in browsing} <= await ledger_events(conn, lead)
    assert (
        await conn.fetchval("SELECT merged_into FROM leads WHERE lead_id = $1", f"anon:{visitor}")
        == lead
    )
    # On the topic: verified by the collector, and the signature itself never published.
    records = await read_topic(
        stack.services.kafka_url,
        stack.topics.events,
        until=lambda rs: any(v["event_id"] == identify["event_id"] for _, v in rs),
    )
    [sent] = [v for _, v in records if v["event_id"] == identify["event_id"]]
    assert sent["collected"]["email_verified"] is True
    assert "email_signature" not in sent


async def test_a_wrong_signature_is_refused_naming_the_field(
    stack: WebStack, http: aiohttp.ClientSession
) -> None:
    email = f"who-{stack.run}@acme-mfg.example"
    forged = item(
        "identify", anonymous_id="v", email=email, email_signature=sign_email("guess", email)
    )
    body = await post(http, stack, [forged])
    [result] = body["results"]
    assert (result["status"], result["field"]) == ("rejected", "email_signature")


async def test_a_browser_cannot_name_a_lead_a_server_key_can(
    stack: WebStack, http: aiohttp.ClientSession
) -> None:
    lead = f"LID-{stack.run}"
    body = await post(http, stack, [item("demo_request", lead_id=lead), item(anonymous_id="x")])
    first, second = body["results"]
    assert first["status"] == "rejected"
    assert first["field"] == "lead_id"
    assert "browser" in first["error"]
    assert second["status"] == "accepted"

    body = await post(http, stack, [item("demo_request", lead_id=lead)], key=server_key(stack))
    assert body["results"][0]["status"] == "accepted", body


async def test_unsubscribes_from_a_browser_need_a_signed_link(
    stack: WebStack, http: aiohttp.ClientSession, conn: asyncpg.Connection
) -> None:
    lead, by_server = f"UNS-{stack.run}", f"UNS2-{stack.run}"
    email = f"uns-{stack.run}@acme-mfg.example"
    await profile(stack, lead, email)
    await profile(stack, by_server, f"uns2-{stack.run}@acme-mfg.example")
    await lead_exists(stack, conn, lead)
    await lead_exists(stack, conn, by_server)
    # The lead's own visitor, linked by a signed identify: its events reach the lead.
    visitor = f"uns-{stack.run}"
    identify = item(
        "identify", anonymous_id=visitor, email=email, email_signature=signature(stack, email)
    )
    await post(http, stack, [identify])
    await logged(stack, conn, [str(identify["event_id"])], "the identify")

    unsigned = [item("unsubscribe", anonymous_id=visitor) for _ in range(10)]
    unsigned.append(item("unsubscribe", anonymous_id="someone-else", email=email))
    body = await post(http, stack, unsigned)
    assert body["accepted"] == len(unsigned)
    unsigned_ids = [str(u["event_id"]) for u in unsigned]
    await logged(stack, conn, unsigned_ids, "the unsigned unsubscribes")
    before = await ledger_events(conn, lead)
    assert not set(unsigned_ids) & before

    # The signed link: another device, the email and the site server's signature.
    signed = item(
        "unsubscribe",
        anonymous_id=f"mail-{stack.run}",
        email=email,
        email_signature=signature(stack, email),
    )
    await post(http, stack, [signed])
    # The site's server, with its key, about a lead it names.
    server = item("unsubscribe", lead_id=by_server)
    body = await post(http, stack, [server], key=server_key(stack), agent="python-requests/2.32")
    assert body["results"][0]["status"] == "accepted", body
    await logged(stack, conn, [str(signed["event_id"]), str(server["event_id"])], "the rest")

    async def credited(lead_id: str, event_id: str) -> bool:
        return bool(
            await conn.fetchval(
                "SELECT 1 FROM score_ledger"
                " WHERE lead_id = $1 AND split_part(event_id, '|', 2) = $2"
                " AND rule_id = 'unsubscribe' AND points < 0",
                lead_id,
                event_id,
            )
        )

    assert await credited(lead, str(signed["event_id"]))
    assert await credited(by_server, str(server["event_id"]))
    assert not set(unsigned_ids) & await ledger_events(conn, lead)


async def test_bots_are_judged_on_the_visitor_not_the_sender(
    stack: WebStack, http: aiohttp.ClientSession, conn: asyncpg.Connection
) -> None:
    lead = f"SDK-{stack.run}"
    sdks = ("curl/8.5.0", "python-requests/2.32.3", "Java/17.0.9", "okhttp/4.12.0")
    served: list[dict[str, Any]] = []
    for n, agent in enumerate(sdks):
        # The site's server forwards its visitor's user agent and IP (or none at all).
        ctx = {"user_agent": BROWSER_UA, "ip": "198.51.100.7"} if n % 2 == 0 else None
        ev = item(lead_id=lead, context=ctx) if ctx else item(lead_id=lead)
        body = await post(http, stack, [ev], key=server_key(stack), agent=agent)
        assert body["results"][0]["status"] == "accepted", (agent, body)
        assert body["bots"] == 0
        served.append(ev)
    crawler = item(lead_id=lead, context={"user_agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"})
    body = await post(http, stack, [crawler], key=server_key(stack), agent="curl/8.5.0")
    assert body["results"][0]["status"] == "bot"  # the visitor it forwarded was a crawler

    from_browser_key = [item(anonymous_id=f"b-{stack.run}-{n}") for n in range(len(sdks))]
    for ev, agent in zip(from_browser_key, sdks, strict=True):
        body = await post(http, stack, [ev], agent=agent)
        assert body["results"][0]["status"] == "bot", (agent, body)
        assert (body["accepted"], body["bots"], body["rejected"]) == (0, 1, 0)

    ids = [str(e["event_id"]) for e in served]
    bots = [str(e["event_id"]) for e in [crawler, *from_browser_key]]
    dispositions = await logged(stack, conn, ids + bots, "the SDK events")
    assert {dispositions[i] for i in ids} == {"accepted"}
    assert {dispositions[i] for i in bots} == {"bot"}
    assert set(ids) <= await ledger_events(conn, lead)

    records = await read_topic(
        stack.services.kafka_url,
        stack.topics.events,
        until=lambda rs: set(ids) <= {v["event_id"] for _, v in rs},
    )
    sent = {v["event_id"]: v for _, v in records if v["event_id"] in ids}
    # The sender's user agent is never put where the visitor's belongs.
    assert sent[ids[0]]["context"] == {"user_agent": BROWSER_UA, "ip": "198.51.100.7"}
    assert sent[ids[1]].get("context") is None


async def test_every_event_records_its_site_and_key(
    stack: WebStack, http: aiohttp.ClientSession
) -> None:
    before = datetime.now(UTC)
    by_browser = item(anonymous_id=f"site-{stack.run}")
    by_server = item(lead_id=f"SITE-{stack.run}")
    await post(http, stack, [by_browser])
    await post(http, stack, [by_server], key=server_key(stack))
    wanted = {by_browser["event_id"], by_server["event_id"]}
    records = await read_topic(
        stack.services.kafka_url,
        stack.topics.events,
        until=lambda rs: wanted <= {v["event_id"] for _, v in rs},
    )
    got = {v["event_id"]: v["collected"] for _, v in records if v["event_id"] in wanted}
    assert got[by_browser["event_id"]]["key"] == "browser"
    assert got[by_server["event_id"]]["key"] == "server"
    for stamp in got.values():
        assert stamp["site"] == "sample"
        received = datetime.fromisoformat(stamp["received_at"])
        assert before - timedelta(seconds=1) <= received <= datetime.now(UTC)
        assert stamp.get("email_verified") in (None, False)


def test_a_key_cannot_be_both_public_and_secret() -> None:
    with pytest.raises(ConfigError, match="LEADCYCLE_HTTP_SERVER_KEYS"):
        WriteKeys({"www": "same"}, {"shop": "same"})
    keys = WriteKeys({"www": "public"}, {"www": "secret"})
    assert keys.email_signed("www", "A@B.example ", sign_email("secret", "a@b.example"))
    assert not keys.email_signed("shop", "a@b.example", sign_email("secret", "a@b.example"))
