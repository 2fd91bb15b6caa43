"""One lead per person, on the real broker, database and worker processes.

- A visitor who identifies on the website by email only, and the CRM's profile for that email,
  end as one lead whichever arrives first (the CRM's id survives), with the same scores either
  way, the merge recorded, published and explained.
- Two CRM leads with one email are duplicates: both stay, and ``leadcycle duplicates`` lists them.
- Two workers: visitors whose page views and whose identify arrive on partitions owned by
  different workers end as one lead each, every event counted once.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka.partitioner import DefaultPartitioner

from bench.oracle import expected_states, score_mismatches, stored_states
from infra.postgres import drop_database
from scoring.rules import load_rules
from scoring.scores import behaviour_score
from tests.conftest import TEST_MARKER, RunningServices
from tests.integration.conftest import Scenario, make_scenario
from tests.integration.kafkatools import consume_all, produce_all
from tests.integration.workerproc import (
    ROOT,
    WorkerProcess,
    all_applied,
    eventually,
    leadcycle_cli,
)

pytestmark = pytest.mark.integration
RULES = load_rules(ROOT / "rules" / "default.toml")
EMAIL = "hanako@acme.example.co.jp"
PROFILE = {
    "company_name": "Acme KK",
    "company_size": 1500,
    "industry": "製造業",
    "job_title": "情報システム部長",
    "country": "JP",
    "source": "webinar",
}

Message = tuple[str, str, dict[str, Any]]  # topic suffix, key, document


def visitor(anon: str, email: str | None, at: datetime, n: int = 4) -> list[Message]:
    """``n`` page views of a visitor, then an identify by email only (a Kafka producer: the
    site's own service, so it is vouched for)."""
    out: list[Message] = [
        (
            "events",
            anon,
            {
                "event_id": f"{anon}-v{i}",
                "type": "page_view",
                "occurred_at": (at + timedelta(minutes=i)).isoformat(),
                "anonymous_id": anon,
                "properties": {"url": f"https://acme.example/{'pricing' if i % 2 else 'p'}{i}"},
            },
        )
        for i in range(n)
    ]
    if email is not None:
        out.append(
            (
                "events",
                anon,
                {
                    "event_id": f"{anon}-id",
                    "type": "identify",
                    "occurred_at": (at + timedelta(minutes=n)).isoformat(),
                    "anonymous_id": anon,
                    "email": email,
                },
            )
        )
    return out


def crm_profile(lead: str, email: str, at: datetime) -> Message:
    doc = {
        "event_id": f"{lead}-p",
        "type": "profile_updated",
        "lead_id": lead,
        "occurred_at": at.isoformat(),
        "email": email,
        **PROFILE,
    }
    return "profiles", lead, doc


async def send(sc: Scenario, worker: WorkerProcess, messages: list[Message], *, rows: int) -> None:
    await produce_all(
        sc.services.kafka_url,
        [(sc.topics.name(t), k.encode(), json.dumps(d).encode()) for t, k, d in messages],
    )
    await all_applied(sc.dsn, rows, workers=(worker,))


async def live_leads(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(
            await conn.fetch(
                """SELECT lead_id, email, stage, fit_score, behaviour_score FROM leads
                    WHERE NOT anonymous AND merged_into IS NULL ORDER BY lead_id"""
            )
        )
    finally:
        await conn.close()


async def test_identify_and_crm_profile_make_one_lead_in_either_order(
    services: RunningServices,
) -> None:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    web, crm = (
        visitor("v-hana", EMAIL, at),
        [crm_profile("CRM-9", EMAIL, at + timedelta(minutes=30))],
    )
    results = {}
    for order, batches in (("identify first", (web, crm)), ("CRM first", (crm, web))):
        sc = await make_scenario(services, "idn")
        worker = WorkerProcess(sc.services, app_id=f"{sc.name}-w", prefix=sc.topics.prefix)
        try:
            worker.start()
            await send(sc, worker, batches[0], rows=len(batches[0]))
            await send(sc, worker, batches[1], rows=len(web) + len(crm))
            merges = await consume_all(
                sc.services.kafka_url,
                sc.topics.lead_merges,
                expect=1,
                seconds=10 if order == "identify first" else 3,
            )
            results[order] = {
                "leads": [dict(r) for r in await live_leads(sc.dsn)],
                "state": (await stored_states(sc.dsn))["CRM-9"],
                "merges": merges,
                "view": json.loads(leadcycle_cli(sc, "lead", EMAIL, "--format", "json")),
                "anon": json.loads(leadcycle_cli(sc, "lead", "v-hana", "--format", "json")),
                # The replay's fold merges as the worker did: it finds every score as it is.
                "replay": json.loads(leadcycle_cli(sc, "replay", "--format", "json")),
            }
        finally:
            worker.stop()
            await drop_database(services.server_dsn, sc.name, marker=TEST_MARKER)

    first, crm_first = results["identify first"], results["CRM first"]
    for result in (first, crm_first):
        (lead,) = result["leads"]  # one lead per person
        assert (lead["lead_id"], lead["email"]) == ("CRM-9", EMAIL)  # the CRM id survives
        assert lead["fit_score"] > 0  # the CRM's profile ...
        assert lead["behaviour_score"] > 0  # ... and the website's behaviour, on one lead
        view = result["view"]
        assert view["lead_id"] == "CRM-9"
        assert view["reproduced_from_ledger"]["matches"] is True
        assert result["anon"]["lead_id"] == "CRM-9"
        assert result["replay"]["skipped"] == []
        assert (result["replay"]["rewritten"], result["replay"]["unchanged"]) == (0, 1)
    # The same scores either way (read at one time: the stored columns are each run's own).
    a, b = first["state"], crm_first["state"]
    assert a.fit_score == b.fit_score
    read_at = datetime.now(UTC) + timedelta(days=1)
    assert behaviour_score(a, read_at, RULES) == pytest.approx(
        behaviour_score(b, read_at, RULES), rel=1e-9
    )
    assert a.events == b.events == len(web) + len(crm)
    assert a.caps == b.caps
    (merge,) = first["merges"]
    assert (merge["absorbed"], merge["survivor"], merge["email"]) == (
        f"email:{EMAIL}",
        "CRM-9",
        EMAIL,
    )
    assert [m["absorbed"] for m in first["view"]["merges"]] == [f"email:{EMAIL}"]
    assert crm_first["merges"] == []
    assert crm_first["view"]["merges"] == []


async def test_two_crm_leads_with_one_email_are_reported_not_merged(scenario: Scenario) -> None:
    sc = scenario
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    worker = WorkerProcess(sc.services, app_id=f"{sc.name}-w", prefix=sc.topics.prefix).start()
    try:
        await send(
            sc,
            worker,
            [
                crm_profile("CRM-1", EMAIL, at),
                crm_profile("CRM-2", EMAIL, at + timedelta(minutes=1)),
            ],
            rows=2,
        )
    finally:
        worker.stop()
    assert [r["lead_id"] for r in await live_leads(sc.dsn)] == ["CRM-1", "CRM-2"]
    report = json.loads(leadcycle_cli(sc, "duplicates", "--format", "json"))
    assert report == [{"email": EMAIL, "lead_ids": ["CRM-1", "CRM-2"]}]


def _partition(key: str) -> int:
    partitioner = DefaultPartitioner()
    return int(partitioner(key.encode(), [0, 1, 2, 3], [0, 1, 2, 3]))


async def test_two_workers_one_lead_per_visitor_and_no_double_counting(
    scenario: Scenario,
) -> None:
    """Page views keyed by the visitor id, the identify (naming the lead) keyed by the lead
    id, on partitions a range assignment gives to different workers (0-1 vs 2-3)."""
    sc = scenario
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    people = []
    n = 0
    while len(people) < 24:
        n += 1
        anon, lead = f"v{n}", f"L{n}"
        if (_partition(anon) < 2) != (_partition(lead) < 2):
            people.append((anon, lead))
    messages: list[Message] = []
    for i, (anon, lead) in enumerate(people):
        messages += visitor(anon, None, at + timedelta(minutes=i), n=6)
        messages.append(
            (
                "events",
                lead,
                {
                    "event_id": f"{lead}-id",
                    "type": "identify",
                    "occurred_at": (at + timedelta(minutes=i, seconds=30)).isoformat(),
                    "lead_id": lead,
                    "anonymous_id": anon,
                    "email": f"{lead.lower()}@corp.example",
                },
            )
        )
    workers = [
        WorkerProcess(sc.services, app_id=f"{sc.name}-w", prefix=sc.topics.prefix).start()
        for _ in range(2)
    ]
    try:
        await both_own_partitions(workers)
        await produce_all(
            sc.services.kafka_url,
            [(sc.topics.name(t), k.encode(), json.dumps(d).encode()) for t, k, d in messages],
        )

        await all_applied(sc.dsn, len(messages), workers=tuple(workers), seconds=90)
        logs = [w.log() for w in workers]
    finally:
        for w in workers:
            w.stop()
    # The visitors' page views and their identifies met through forwarding, not locks.
    assert all(" forwarded to other shards" in text for text in logs)
    forwarded = sum(
        int(m) for text in logs for m in re.findall(r"dead-lettered, (\d+) forwarded", text)
    )
    assert forwarded >= len(people)
    stored = await stored_states(sc.dsn)
    assert sorted(stored) == sorted(lead for _, lead in people)
    expected = expected_states(
        [(t, json.dumps(d).encode()) for t, _, d in messages], RULES, now=datetime.now(UTC)
    )
    assert score_mismatches(expected, stored, RULES, at=datetime.now(UTC)) == []
    for anon, lead in people:
        assert stored[lead].events == 7  # six page views and the identify, each once
        assert stored[lead].linked_anonymous_ids == [anon]
    conn = await asyncpg.connect(sc.dsn)
    try:
        unmerged = await conn.fetchval(
            "SELECT count(*) FROM leads WHERE anonymous AND merged_into IS NULL"
        )
    finally:
        await conn.close()
    assert unmerged == 0


async def both_own_partitions(workers: list[WorkerProcess]) -> None:
    await eventually(
        lambda: _assigned(workers), seconds=60, what="both workers own partitions",
        workers=tuple(workers),
    )  # fmt: skip


async def _assigned(workers: list[WorkerProcess]) -> bool:
    """Whether each worker's latest assignment holds partitions."""
    for w in workers:
        text = w.log()
        if "partitions assigned: " not in text:
            return False
        latest = text.rsplit("partitions assigned: ", 1)[1].splitlines()[0]
        if latest.strip() == "none":
            return False
    return True


async def test_two_workers_merge_email_leads_into_crm_leads_across_shards(
    scenario: Scenario,
) -> None:
    """Visitors identify by email only (email leads) while the CRM's profiles for the same
    emails arrive under CRM ids, on whichever partitions their keys give, read by two
    workers: every person ends as one CRM lead, the merge done by the two leads' owners."""
    sc = scenario
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    people = [(f"w{n}", f"CRM-{n}", f"p{n}@corp.example") for n in range(16)]
    web: list[Message] = []
    crm: list[Message] = []
    for i, (anon, lead, email) in enumerate(people):
        web += visitor(anon, email, at + timedelta(minutes=i), n=3)
        crm.append(crm_profile(lead, email, at + timedelta(minutes=i, seconds=40)))
    # Half the people identify first, the other half reach the CRM first.
    first = [m for m in web if int(m[1][1:]) % 2 == 0] + [m for m in crm if int(m[1][4:]) % 2]
    second = [m for m in web if int(m[1][1:]) % 2] + [m for m in crm if int(m[1][4:]) % 2 == 0]
    workers = [
        WorkerProcess(sc.services, app_id=f"{sc.name}-w", prefix=sc.topics.prefix).start()
        for _ in range(2)
    ]
    try:
        await both_own_partitions(workers)
        for part, total in ((first, len(first)), (second, len(first) + len(second))):
            await produce_all(
                sc.services.kafka_url,
                [(sc.topics.name(t), k.encode(), json.dumps(d).encode()) for t, k, d in part],
            )
            await all_applied(sc.dsn, total, workers=tuple(workers), seconds=90)
    finally:
        for w in workers:
            w.stop()
    stored = await stored_states(sc.dsn)
    assert sorted(stored) == sorted(lead for _, lead, _ in people)  # one lead per person
    for anon, lead, email in people:
        state = stored[lead]
        assert state.profile.email == email
        assert state.events == 5  # three page views, the identify and the profile, once each
        assert state.linked_anonymous_ids == [anon]
        assert state.fit_score > 0
    conn = await asyncpg.connect(sc.dsn)
    try:
        merged = await conn.fetch("SELECT absorbed, survivor FROM lead_merges ORDER BY absorbed")
    finally:
        await conn.close()
    # The people who identified first had an email lead, merged when the CRM profile came.
    assert {(r["absorbed"], r["survivor"]) for r in merged} == {
        (f"email:{email}", lead) for n, (_, lead, email) in enumerate(people) if n % 2 == 0
    }
