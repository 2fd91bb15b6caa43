"""Call lists and outcomes over HTTP: same list as ``leadcycle calllist``, tokens scope it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from infra import db
from scoring.rules import load_rules
from tests.http.conftest import HotLeads, WebStack
from tests.integration.workerproc import ROOT, eventually

pytestmark = pytest.mark.integration


def cli_calllist(stack: WebStack, *args: str) -> str:
    env = {**os.environ, "LEADCYCLE_DATABASE_URL": stack.services.database_dsn}
    done = subprocess.run(
        [sys.executable, "-m", "workers.cli", "calllist", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get(
    http: aiohttp.ClientSession, stack: WebStack, query: str, token: str, **headers: str
) -> tuple[int, str]:
    async with http.get(
        f"{stack.base}/v1/call-lists?{query}", headers={**bearer(token), **headers}
    ) as r:
        return r.status, await r.text()


async def test_call_list_is_the_cli_list(
    stack: WebStack, hot_leads: HotLeads, http: aiohttp.ClientSession
) -> None:
    rep_a = stack.reps[0]
    token = stack.rep_tokens[rep_a]
    today = datetime.now(ZoneInfo(load_rules(ROOT / "rules/default.toml").calendar.timezone))
    day = today.date().isoformat()

    status, text = await get(http, stack, f"rep={rep_a}", token)
    assert status == 200
    assert text.strip() == cli_calllist(stack, "--rep", rep_a, "--format", "json").strip()
    assert hot_leads.a[0] in [row["lead_id"] for row in json.loads(text)]

    status, text = await get(http, stack, f"rep={rep_a}&date={day}&limit=5", token)
    assert status == 200
    expected = cli_calllist(
        stack, "--rep", rep_a, "--date", day, "--limit", "5", "--format", "json"
    )
    assert text.strip() == expected.strip()

    csv_cli = cli_calllist(stack, "--rep", rep_a, "--format", "csv").strip()
    status, text = await get(http, stack, "", token, Accept="text/csv")  # own list by default
    assert status == 200
    assert text.replace("\r\n", "\n").strip() == csv_cli
    assert "followup_id,lead_id" in text
    assert "unknown_bant" in text
    status, text = await get(http, stack, f"rep={rep_a}&format=csv", token)
    assert status == 200
    assert text.replace("\r\n", "\n").strip() == csv_cli


async def test_tokens_scope_the_call_list(
    stack: WebStack, hot_leads: HotLeads, http: aiohttp.ClientSession
) -> None:
    rep_a, rep_b = stack.reps
    status, text = await get(http, stack, f"rep={rep_b}", stack.rep_tokens[rep_a])
    assert status == 403
    assert rep_a in text
    status, text = await get(http, stack, f"rep={rep_b}", stack.admin_token)
    assert status == 200
    assert hot_leads.b in text
    assert hot_leads.a[0] not in text
    status, text = await get(http, stack, "", stack.admin_token)
    assert status == 200
    assert hot_leads.b in text
    assert hot_leads.a[0] in text
    status, _ = await get(http, stack, "", stack.write_key)  # a write key is not a sales token
    assert status == 401
    async with http.get(f"{stack.base}/v1/call-lists") as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
    for bad in ("date=2026-13-01", "date=20261102", "limit=0", "format=xml"):
        status, _ = await get(http, stack, bad, stack.admin_token)
        assert status == 400, bad


async def test_outcomes_are_published_and_applied(
    stack: WebStack, hot_leads: HotLeads, http: aiohttp.ClientSession
) -> None:
    rep_a = stack.reps[0]
    url = f"{stack.base}/v1/outcomes"
    lead = hot_leads.a[1]
    outcome = {
        "type": "sales_outcome",
        "lead_id": lead,
        "outcome": "contacted",
        "bant": {"budget": True, "need": True},
    }
    async with http.post(
        url, json={**outcome, "lead_id": hot_leads.b}, headers=bearer(stack.rep_tokens[rep_a])
    ) as r:
        assert r.status == 403  # not on this rep's list
    async with http.post(
        url, json={**outcome, "reason": "timing"}, headers=bearer(stack.admin_token)
    ) as r:
        assert r.status == 422
        assert "reason" in (await r.json())["error"]
    async with http.post(url, json=outcome) as r:
        assert r.status == 401
    async with http.post(url, json=outcome, headers=bearer(stack.rep_tokens[rep_a])) as r:
        assert r.status == 202
        event_id = (await r.json())["event_id"]

    conn = await db.connect(stack.services.database_dsn)
    try:

        async def applied() -> bool:
            row = await conn.fetchrow(
                "SELECT disposition, subject FROM event_log WHERE event_id = $1", event_id
            )
            return row is not None and row["subject"] == lead

        await eventually(
            applied, seconds=30, what="the outcome in the event log", workers=(stack.worker,)
        )
    finally:
        await conn.close()
