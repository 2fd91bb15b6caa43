"""``leadcycle replay`` on a real worker's database: rescored under new rules, lifecycle kept.

A worker processes a generated stream (anonymous visitors, identifies, profiles, outcomes,
recycling, follow-ups) and stops; the replay then rescores everything under a copy of the
sample rules with a new version and 1.5x points. The oracle is the pure fold of the same stream
under the new rules (bench/oracle.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench.oracle import expected_states, score_mismatches, stored_states
from infra import db
from scoring.rules import RuleSet, load_rules
from scoring.state import LeadState, decode_state, encode_state
from tests.integration.conftest import Scenario
from tests.integration.kafkatools import produce_all
from tests.integration.workerproc import WorkerProcess, eventually, leadcycle_cli
from workers.explain import explain_lead
from workers.replay import ReplayConflict, replay
from workers.traffic import Message, TrafficSpec, generate

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RULES_V1 = load_rules(ROOT / "rules" / "default.toml")
AT = datetime(2030, 1, 1, tzinfo=UTC)
#: Lifecycle facts the replay must leave exactly as the worker decided them.
LIFECYCLE = (
    "stage", "stage_since", "stage_touched", "sla_escalated", "profile", "events", "bant",
    "last_touch_at", "last_requeue_at", "excluded", "exclusion_reason", "linked_anonymous_ids",
    "created_at",
)  # fmt: skip


def new_rules(tmp_path: Path) -> tuple[Path, RuleSet]:
    """The sample rules under a new version, every point value times 1.5."""
    text = (ROOT / "rules" / "default.toml").read_text()
    text = re.sub(r'(?m)^version = ".*"$', 'version = "2027.1-replayed"', text)
    text = re.sub(r"(?m)^points = (-?[0-9.]+)$", lambda m: f"points = {float(m[1]) * 1.5}", text)
    path = tmp_path / "rules-v2.toml"
    path.write_text(text)
    return path, load_rules(path)


def stream() -> list[Message]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=60)
    spec = TrafficSpec(leads=250, seed=31, start=start, days=60, duplicate_rate=0.02)
    return list(generate(spec))


def cli(sc: Scenario, *args: str, rules_file: Path | None = None) -> str:
    extra = {"LEADCYCLE_RULES_FILE": str(rules_file)} if rules_file is not None else {}
    return leadcycle_cli(sc, *args, timeout=300, **extra)

async def snapshot(dsn: str) -> dict[str, Any]:
    """Everything a replay must not touch, plus the ledger."""
    conn = await asyncpg.connect(dsn)
    try:
        return {
            name: [tuple(r) for r in await conn.fetch(sql)]
            for name, sql in {
                "transitions": "SELECT * FROM stage_transitions ORDER BY transition_id",
                "followups": "SELECT * FROM followups ORDER BY followup_id",
                "pool": "SELECT * FROM recycle_pool ORDER BY lead_id",
                "links": "SELECT * FROM identity_links ORDER BY anonymous_id",
                "events": "SELECT event_id FROM event_log ORDER BY event_id",
                "outbox": "SELECT id FROM outbox",
                "accepted": "SELECT count(*) FROM event_log WHERE disposition = 'accepted'",
                "leads": """SELECT lead_id, stage, stage_since, owner, email, merged_into,
                                   excluded, fit_score, rules_version, state::text
                              FROM leads ORDER BY lead_id""",
                "ledger": """SELECT s.entry_id, s.rules_version, s.points, s.decayed_points,
                                    l.merged_into IS NULL AS live, s.anchor, s.score_before,
                                    s.score_after
                               FROM score_ledger s LEFT JOIN leads l USING (lead_id)
                              ORDER BY s.entry_id""",
                "history": "SELECT count(*) FROM score_ledger_history",
            }.items()
        }
    finally:
        await conn.close()


async def run_worker(sc: Scenario, messages: list[Message]) -> None:
    await produce_all(
        sc.services.kafka_url, [(sc.topics.name(m.topic), m.key, m.value) for m in messages]
    )
    ids = sorted({json.loads(m.value)["event_id"] for m in messages})
    worker = WorkerProcess(
        sc.services, app_id=f"{sc.name}-w", prefix=sc.topics.prefix, LEADCYCLE_BATCH_SIZE="500"
    ).start()

    async def done() -> bool:
        conn = await asyncpg.connect(sc.dsn)
        try:
            row = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM event_log WHERE event_id = ANY($1::text[])) e,
                          (SELECT count(*) FROM outbox) o""",
                ids,
            )
        finally:
            await conn.close()
        return bool(row["e"] == len(ids) and row["o"] == 0)

    try:
        await eventually(done, seconds=120, what=f"{len(ids)} events", workers=(worker,))
    finally:
        worker.stop()


def email_identify(lead_id: str, email: str, start: datetime) -> list[Message]:
    """An anonymous visitor who identifies with ``email`` only (no lead id): the worker sends
    it to the existing lead with that email."""
    docs: list[tuple[str, dict[str, Any]]] = [
        (
            "events",
            {
                "event_id": f"byemail-{i}",
                "type": "page_view",
                "occurred_at": (start + timedelta(hours=i)).isoformat(),
                "anonymous_id": "visitor-by-email",
                "properties": {"url": "https://example.com/pricing"},
            },
        )
        for i in range(3)
    ]
    docs.append(
        (
            "events",
            {
                "event_id": "byemail-identify",
                "type": "identify",
                "occurred_at": (start + timedelta(hours=4)).isoformat(),
                "anonymous_id": "visitor-by-email",
                "email": email,
            },
        )
    )
    return [
        Message(topic, b"visitor-by-email", json.dumps(doc).encode(), True, start)
        for topic, doc in docs
    ]


async def ledger_checks(dsn: str, rules: RuleSet, ids: list[str]) -> list[str]:
    conn = await db.connect(dsn)
    try:
        failing = []
        for lead_id in ids:
            doc = await explain_lead(conn, lead_id, rules, at=AT)
            assert doc is not None
            if not doc["reproduced_from_ledger"]["matches"]:
                failing.append(lead_id)
        return failing
    finally:
        await conn.close()


async def test_replay_rescores_keeps_lifecycle_and_is_idempotent(
    scenario: Scenario, tmp_path: Path
) -> None:
    messages = stream()
    await run_worker(scenario, messages)
    # A visitor identified by email alone, processed once the lead's email is known.
    before_extra = await stored_states(scenario.dsn)
    target = next(s for s in sorted(before_extra.values(), key=lambda s: s.lead_id)
                  if s.profile.email and not s.excluded)  # fmt: skip
    assert target.profile.email is not None
    extra = email_identify(target.lead_id, target.profile.email, target.created_at)
    await run_worker(scenario, extra)
    messages += extra
    assigned = {"events|byemail-identify": target.lead_id}  # by its id inside: source|id
    assert "byemail-identify" not in {s.lead_id for s in before_extra.values()}

    rules_path, rules_v2 = new_rules(tmp_path)
    before = await snapshot(scenario.dsn)
    old_states = await stored_states(scenario.dsn)
    assert len(old_states) > 100
    assert {s.rules_version for s in old_states.values()} == {RULES_V1.version}

    # --dry-run: the full report, nothing written.
    dry = json.loads(cli(scenario, "replay", "--rules", str(rules_path), "--dry-run",
                         "--format", "json"))  # fmt: skip
    assert dry["dry_run"] is True
    assert [(dry["events"],)] == before["accepted"]
    assert dry["events"] > 1000
    assert list(dry["rules_from"]) == [RULES_V1.version]
    assert dry["rules_to"] == "2027.1-replayed"
    assert dry["skipped"] == []
    assert dry["fit_changed"] > 100
    assert dry["behaviour_changed"] > 100
    assert dry["mql_now_above"] > 0  # 1.5x points: more leads reach the threshold
    assert dry["rewritten"] >= len(old_states)
    assert await snapshot(scenario.dsn) == before

    # The real thing.
    report = json.loads(cli(scenario, "replay", "--rules", str(rules_path), "--format", "json"))
    assert report["dry_run"] is False
    print(
        f"\nreplay: {report['events']} events, {report['rate']:,.0f} events/s fold, "
        f"{report['total_seconds']:.2f} s with the write-back"
    )
    assert report["attempts"] == 1
    assert report["skipped"] == []
    assert report["rewritten"] == dry["rewritten"]
    # Every entry of a rescored lead is kept in the history; retired (merged) anonymous
    # visitors keep theirs in place.
    live = [r for r in before["ledger"] if r[4]]
    assert report["ledger_archived"] == len(live) > 1000
    after = await snapshot(scenario.dsn)
    for untouched in ("transitions", "followups", "pool", "links", "events", "outbox"):
        assert after[untouched] == before[untouched], untouched
    assert after["history"] == [(len(live),)]
    assert {r[1] for r in after["ledger"] if r[4]} == {"2027.1-replayed"}
    assert [r for r in after["ledger"] if not r[4]] == [r for r in before["ledger"] if not r[4]]
    new_states = await stored_states(scenario.dsn)

    # Scores: exactly what the pure fold gives under the new rules.
    want = expected_states(
        [(m.topic, m.value) for m in messages], rules_v2, now=AT, assigned=assigned
    )
    assert score_mismatches(want, new_states, rules_v2, at=AT) == []
    assert want[target.lead_id].events == new_states[target.lead_id].events
    # ... and not what they were (1.5x points moved nearly everyone).
    moved = [k for k, s in new_states.items() if s.fit_score != old_states[k].fit_score]
    assert len(moved) > 100

    # Lifecycle: as the worker left it; version stamped; score columns follow the state.
    for lead_id, old in old_states.items():
        new = new_states[lead_id]
        for name in LIFECYCLE:
            assert getattr(new, name) == getattr(old, name), (lead_id, name)
        assert (new.recycle is None) == (old.recycle is None)
        if new.recycle and old.recycle:
            assert (new.recycle.reason, new.recycle.since, new.recycle.revisit_on) == (
                old.recycle.reason, old.recycle.since, old.recycle.revisit_on
            )  # fmt: skip
            assert new.recycle.track == old.recycle.track
        assert new.rules_version == "2027.1-replayed"
    conn = await asyncpg.connect(scenario.dsn)
    try:
        rows = await conn.fetch(
            """SELECT lead_id, fit_score, grade, rules_version FROM leads
                WHERE NOT anonymous AND merged_into IS NULL"""
        )
    finally:
        await conn.close()
    for r in rows:
        state = new_states[r["lead_id"]]
        assert (r["fit_score"], r["grade"], r["rules_version"]) == (
            state.fit_score, state.fit_grade, "2027.1-replayed"
        )  # fmt: skip

    # `leadcycle lead`: the ledger reproduces every lead's scores under the new version.
    assert await ledger_checks(scenario.dsn, rules_v2, sorted(new_states)) == []
    shown = cli(scenario, "lead", target.lead_id, "--format", "json", rules_file=rules_path)
    assert json.loads(shown)["reproduced_from_ledger"]["matches"] is True

    # A second replay under the same rules changes nothing at all.
    done = await snapshot(scenario.dsn)
    again = json.loads(cli(scenario, "replay", "--rules", str(rules_path), "--format", "json"))
    assert again["rewritten"] == 0
    assert again["unchanged"] == report["rewritten"]
    assert again["fit_changed"] == again["behaviour_changed"] == 0
    assert again["ledger_archived"] == again["ledger_written"] == 0
    assert await snapshot(scenario.dsn) == done

    # The table format prints the summary for people.
    table = cli(scenario, "replay", "--rules", str(rules_path), "--dry-run")
    assert "2027.1-replayed (" in table
    assert "-> 2027.1-replayed" in table
    assert "events/s" in table


async def _waiting_on_lock(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(
            await conn.fetchval(
                """SELECT count(*) > 0 FROM pg_stat_activity
                    WHERE datname = current_database() AND wait_event_type = 'Lock'"""
            )
        )
    finally:
        await conn.close()


async def test_replay_retries_then_reports_a_conflicting_worker_write(
    scenario: Scenario, tmp_path: Path
) -> None:
    """A worker commits to a lead after the replay's snapshot: the replay's write fails with a
    serialization error instead of overwriting it, and the replay starts again."""
    messages = stream()[:1500]
    await run_worker(scenario, messages)
    _, rules_v2 = new_rules(tmp_path)
    now = datetime.now(UTC)

    async def race(attempts: int) -> Any:
        worker = await asyncpg.connect(scenario.dsn)
        try:
            tx = worker.transaction()
            await tx.start()
            lead_id = await worker.fetchval(
                """SELECT lead_id FROM leads WHERE NOT anonymous ORDER BY lead_id LIMIT 1
                   FOR UPDATE"""
            )
            task = asyncio.create_task(
                replay(scenario.dsn, rules_v2, current=RULES_V1, now=now, dry_run=False,
                       attempts=attempts, progress=False)
            )  # fmt: skip
            await eventually(lambda: _waiting_on_lock(scenario.dsn), seconds=60,
                             what="the replay to wait for the worker's row lock")  # fmt: skip
            # What a worker's batch does: a new state for the lead, committed.
            await worker.execute("UPDATE leads SET updated_at = now() WHERE lead_id = $1", lead_id)
            await tx.commit()
            return await asyncio.wait_for(task, 120)
        finally:
            await worker.close()

    with pytest.raises(ReplayConflict, match="conflicted with concurrent writes 1 times"):
        await race(attempts=1)
    untouched = await stored_states(scenario.dsn)
    assert {s.rules_version for s in untouched.values()} == {RULES_V1.version}

    report = await race(attempts=3)
    assert report.attempts == 2
    assert report.rewritten > 0
    states = await stored_states(scenario.dsn)
    assert {s.rules_version for s in states.values()} == {"2027.1-replayed"}
    assert await ledger_checks(scenario.dsn, rules_v2, sorted(states)) == []


def test_lead_states_compare_by_value() -> None:
    """The idempotency check relies on equal states comparing equal after a round trip
    through the stored form."""
    state = LeadState.new("L1", now=AT)
    assert decode_state(encode_state(state)) == state
