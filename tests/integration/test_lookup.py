"""``leadcycle lead`` finds a lead by lead id, by email and by anonymous id (real PostgreSQL).

The resolver (``workers/lookup.py``) is checked on rows written with SQL, which lets a test lay
out what the worker rarely makes (chains, cycles, links without a visitor row). The command is
checked end to end on leads the worker's own batch step made from real messages: a visitor
who identified (merged into its lead) and two CRM leads sharing an email.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from infra import db
from infra.store import OutboxRecord
from scoring.rules import load_rules
from tests.integration.conftest import Scenario
from tests.integration.journeys import Journey
from tests.integration.workerproc import ROOT
from workers.ingest import Incoming, Ingestor
from workers.leads import Assignment, LeadProcessor
from workers.lookup import MAX_HOPS, Hop, Resolution, resolve

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def conn(scenario: Scenario) -> AsyncIterator[asyncpg.Connection]:
    connection = await db.connect(scenario.dsn)
    yield connection
    await connection.close()


async def add_lead(
    conn: asyncpg.Connection,
    lead_id: str,
    *,
    email: str | None = None,
    merged_into: str | None = None,
    minutes: int = 0,
) -> None:
    """A leads row with what the resolver reads; the rest is the minimum NOT NULL needs."""
    await conn.execute(
        """INSERT INTO leads (lead_id, anonymous, merged_into, email, stage, stage_since,
                              scored_at, rules_version, state, created_at)
           VALUES ($1, $2, $3, $4, 'lead', $5, $5, 'test', '{}', $5)""",
        lead_id,
        lead_id.startswith("anon:"),
        merged_into,
        email,
        T0 + timedelta(minutes=minutes),
    )


async def test_a_lead_id_is_taken_as_is_before_any_email(conn: asyncpg.Connection) -> None:
    await add_lead(conn, "L1", email="ana@example.com")
    # A CRM may use an email as a lead id: the exact id wins over another lead's email.
    await add_lead(conn, "ana@example.com", minutes=1)
    assert await resolve(conn, "L1") == Resolution("L1", "lead_id", "L1", "L1")
    assert await resolve(conn, "ana@example.com") == Resolution(
        "ana@example.com", "lead_id", "ana@example.com", "ana@example.com"
    )
    # Not the same id: it is read as an email, normalised, and finds the other lead.
    assert await resolve(conn, "Ana@Example.com") == Resolution(
        "Ana@Example.com", "email", "ana@example.com", "L1"
    )


async def test_an_email_is_normalised_and_only_known_unmerged_leads_count(
    conn: asyncpg.Connection,
) -> None:
    await add_lead(conn, "L2", email="ben@example.com")
    # A visitor that typed the email into a form, and a visitor merged away: not candidates.
    await add_lead(conn, "anon:v-claim", email="ben@example.com")
    await add_lead(conn, "anon:v-merged", email="ben@example.com", merged_into="L2")
    for typed in ("ben@example.com", "  BEN@Example.COM\t", "\nBen@example.com "):
        found = await resolve(conn, typed)
        assert found == Resolution(typed, "email", "ben@example.com", "L2"), typed
        assert found.found
        assert not found.ambiguous


async def test_an_anonymous_id_with_or_without_its_prefix(conn: asyncpg.Connection) -> None:
    await add_lead(conn, "anon:v-1")
    for typed in ("v-1", "anon:v-1", " v-1 "):
        found = await resolve(conn, typed)
        assert found == Resolution(typed, "anonymous_id", "v-1", "anon:v-1"), typed


async def test_a_merged_visitor_leads_to_its_lead(conn: asyncpg.Connection) -> None:
    await add_lead(conn, "L3")
    await add_lead(conn, "anon:v-3", merged_into="L3")
    hop = Hop("anon:v-3", "L3", "merged_into")
    for typed in ("v-3", "anon:v-3"):
        assert await resolve(conn, typed) == Resolution(
            typed, "anonymous_id", "v-3", "L3", hops=(hop,)
        ), typed


async def test_an_identity_link_without_a_visitor_row_is_followed(
    conn: asyncpg.Connection,
) -> None:
    await add_lead(conn, "L4")
    await conn.execute("INSERT INTO identity_links VALUES ('v-4', 'L4', 'events|id-4', $1)", T0)
    found = await resolve(conn, "anon:v-4")
    assert found == Resolution(
        "anon:v-4", "anonymous_id", "v-4", "L4", hops=(Hop("anon:v-4", "L4", "identity_link"),)
    )


async def test_merge_chains_are_followed_a_bounded_number_of_steps(
    conn: asyncpg.Connection,
) -> None:
    chain = [f"C{i}" for i in range(MAX_HOPS + 3)]
    for here, there in zip(chain, [*chain[1:], None], strict=True):
        await add_lead(conn, here, merged_into=there)
    found = await resolve(conn, "C0")
    assert found.lead_id == chain[MAX_HOPS]
    assert found.hops == tuple(Hop(chain[i], chain[i + 1], "merged_into") for i in range(MAX_HOPS))
    # A cycle stops where it would come back; a merge into a lead without a row is not taken.
    await add_lead(conn, "X", merged_into="Y")
    await add_lead(conn, "Y", merged_into="X")
    assert (await resolve(conn, "X")).hops == (Hop("X", "Y", "merged_into"),)
    assert (await resolve(conn, "X")).lead_id == "Y"
    await add_lead(conn, "Z", merged_into="gone")
    assert await resolve(conn, "Z") == Resolution("Z", "lead_id", "Z", "Z")


async def test_an_email_two_leads_share_is_ambiguous(conn: asyncpg.Connection) -> None:
    await add_lead(conn, "L5-new", email="dup@example.com", minutes=5)
    await add_lead(conn, "L5-old", email="dup@example.com")
    found = await resolve(conn, "DUP@example.com")
    assert found == Resolution(
        "DUP@example.com", "email", "dup@example.com", candidates=("L5-old", "L5-new")
    )
    assert found.ambiguous
    assert not found.found


async def test_nothing_found(conn: asyncpg.Connection) -> None:
    await add_lead(conn, "L6", email="cy@example.com")
    await add_lead(conn, "anon:v-6")
    for typed in ("L7", "cy@example.org", "v-7", "anon:v-7", "", "   ", "L6\x00"):
        found = await resolve(conn, typed)
        assert found == Resolution(typed), typed
        assert not found.found
        assert not found.ambiguous


# -- the command, on leads the worker's batch step made ---------------------------------------


class Discard:
    async def publish(self, records: Sequence[OutboxRecord]) -> None:
        pass


def journeys() -> list[Journey]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    ana = Journey("L-ANA", start, anonymous_id="v-ana")
    ana.behaviour(0, "page_view", anonymous=True, url="https://example.com/")
    ana.behaviour(3, "page_view", anonymous=True, url="https://example.com/pricing")
    ana.identify(10, "ana@fuji.example")
    ana.profile(11, email="ana@fuji.example", company_name="Fuji Seiki KK", country="JP")
    ana.behaviour(15, "content_download", content_id="wp-cdp", title="CDP whitepaper")
    # Two CRM records of one person: the duplicates an email lookup shows.
    twins = [Journey(lead_id, start) for lead_id in ("L-BEN", "L-BEN-2")]
    for n, twin in enumerate(twins):
        twin.profile(20 + n, email="ben@dup.example", company_name="Kanto Soft", country="JP")
    return [ana, *twins]


async def apply_through_the_batch_step(sc: Scenario, messages: list[Journey]) -> None:
    """The worker's batch step (decode, log, score, write: one transaction) on the messages,
    in-process: what `leadcycle worker` does with a batch it read."""
    rules = load_rules(ROOT / "rules" / "default.toml")
    processor = LeadProcessor(rules, sc.topics, Assignment(("rep-1",), 25))
    batch = [
        Incoming(topic, 0, offset, key, value)
        for offset, (topic, key, value) in enumerate(
            m for j in messages for phase in j.phases for m in phase
        )
    ]
    pool = await db.create_pool(sc.dsn)
    try:
        ingestor = Ingestor(
            pool, sc.topics, Discard(), max_message_bytes=65536, apply=processor.apply_events
        )
        report = await ingestor.handle(batch)
        await ingestor.drain()
    finally:
        await pool.close()
    assert (report.new_events, report.dead_letters, report.bots) == (len(batch), 0, 0), report


def run_lead(sc: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    """``leadcycle lead ARGS`` on the scenario's database, whatever its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", "lead", *args],
        cwd=ROOT,
        env={**os.environ, "LEADCYCLE_DATABASE_URL": sc.dsn},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def shown(sc: Scenario, *args: str) -> str:
    done = run_lead(sc, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_leadcycle_lead_by_id_email_and_anonymous_id(scenario: Scenario) -> None:
    sc = scenario
    await apply_through_the_batch_step(sc, journeys())
    conn = await db.connect(sc.dsn)
    try:
        merged = await conn.fetchval("SELECT merged_into FROM leads WHERE lead_id = 'anon:v-ana'")
    finally:
        await conn.close()
    assert merged == "L-ANA"  # the worker merged the visitor into its lead

    # By lead id: the explanation as before, nothing to say about how it was found.
    by_id = shown(sc, "L-ANA")
    assert by_id.startswith("lead L-ANA  stage ")
    assert "resolved" not in by_id
    doc = json.loads(shown(sc, "L-ANA", "--format", "json"))
    assert doc["resolved"] == {
        "query": "L-ANA",
        "matched_by": "lead_id",
        "key": "L-ANA",
        "lead_id": "L-ANA",
        "candidates": [],
        "hops": [],
    }
    assert doc["lead_id"] == "L-ANA"
    assert doc["reproduced_from_ledger"]["matches"] is True
    assert {e["producer_event_id"] for e in doc["ledger"]} >= {"L-ANA-1", "L-ANA-5"}

    # By email, typed in another case with spaces around it.
    lines = shown(sc, " Ana@FUJI.example ").splitlines()
    assert lines[0] == "resolved  Ana@FUJI.example  (email) -> L-ANA"
    assert lines[1].startswith("lead L-ANA  stage ")
    assert "-> matches" in "\n".join(lines)

    # By anonymous id, bare and prefixed: through the merge, to the lead and its whole ledger.
    lines = shown(sc, "v-ana").splitlines()
    assert lines[:2] == ["resolved v-ana (anonymous id) -> L-ANA", "  anon:v-ana merged into L-ANA"]
    assert lines[2].startswith("lead L-ANA  stage ")
    prefixed = json.loads(shown(sc, "anon:v-ana", "--format", "json"))
    assert prefixed["resolved"]["matched_by"] == "anonymous_id"
    assert prefixed["resolved"]["key"] == "v-ana"
    assert prefixed["resolved"]["hops"] == [
        {"from": "anon:v-ana", "to": "L-ANA", "via": "merged_into"}
    ]
    # The same lead as by its id (scores decayed to another instant aside).
    same = ("lead_id", "stage", "fit_score", "profile", "ledger", "stage_history", "followups")
    assert {k: prefixed[k] for k in same} == {k: doc[k] for k in same}


async def test_leadcycle_lead_lists_an_ambiguous_email_and_refuses_the_unknown(
    scenario: Scenario,
) -> None:
    sc = scenario
    await apply_through_the_batch_step(sc, journeys())

    twins = run_lead(sc, "BEN@dup.example")
    assert twins.returncode == 1
    assert twins.stdout.splitlines() == [
        "email ben@dup.example matches 2 leads:",
        "  L-BEN",
        "  L-BEN-2",
    ]
    assert twins.stderr.splitlines() == [
        "Error: 'ben@dup.example' matches 2 leads: pass one of their lead ids"
    ]
    as_json = run_lead(sc, "ben@dup.example", "--format", "json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["resolved"]["candidates"] == ["L-BEN", "L-BEN-2"]
    # Each of them by its id.
    assert shown(sc, "L-BEN-2").startswith("lead L-BEN-2  stage ")

    for typed in ("L-NOBODY", "nobody@dup.example", "anon:v-nobody"):
        missing = run_lead(sc, typed)
        assert missing.returncode == 1, typed
        assert missing.stdout == ""
        assert missing.stderr.splitlines() == [
            f"Error: no lead id, email or anonymous id matches {typed!r}"
        ]

    usage = shown(sc, "--help")
    assert "email" in usage
    assert "anonymous" in usage
