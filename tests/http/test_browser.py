"""Real browser tests in headless Chromium: the tracker on a sample page, the call-list page."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from infra import db
from infra.kafka import produce_all
from tests.http.browser import Browser
from tests.http.conftest import HotLeads, WebStack
from tests.http.records import read_topic
from tests.integration.workerproc import ROOT, eventually
from workers.web.auth import sign_email

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).with_name("sample_page.html")
#: Screenshots survive the run here (the session's state dir does not).
ARTIFACTS = ROOT / ".leadcycle" / "test-artifacts"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    b = await Browser().start()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def sample_site(stack: WebStack) -> AsyncIterator[str]:
    """The sample page on its own origin (localhost:PAGE_PORT), the one CORS allows."""
    page = SAMPLE.read_text().format(collector=stack.base, write_key=stack.write_key)

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/pricing", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "localhost", stack.page_port).start()
    try:
        yield f"{stack.page_origin}/pricing"
    finally:
        await runner.cleanup()


async def test_tracker_events_arrive_and_identify_scores_the_lead(
    stack: WebStack, browser: Browser, sample_site: str
) -> None:
    lead = f"LT-{stack.run}"
    email = f"buyer-{stack.run}@acme-mfg.example"
    profile = {
        "event_id": f"{lead}-profile",
        "type": "profile_updated",
        "lead_id": lead,
        "occurred_at": datetime.now(UTC).isoformat(),
        "email": email,
        "company_size": 400,
        "industry": "software",
    }
    await produce_all(
        stack.services.kafka_url,
        [(stack.topics.profiles, lead.encode(), json.dumps(profile).encode())],
    )
    conn = await db.connect(stack.services.database_dsn)
    try:

        async def behaviour() -> float | None:
            value = await conn.fetchval(
                "SELECT behaviour_score FROM leads WHERE lead_id = $1", lead
            )
            return None if value is None else float(value)

        async def has_lead() -> bool:
            return await behaviour() is not None

        await eventually(has_lead, seconds=30, what="the profile's lead", workers=(stack.worker,))
        before = await behaviour()

        await browser.goto(sample_site)
        await eventually(
            lambda: browser.evaluate("!!(window.leadcycle && window.leadcycle.version)"),
            seconds=10,
            what="the tracker to load",
        )
        anon = await browser.evaluate("leadcycle.anonymousId()")
        cookie = await browser.evaluate("document.cookie")
        assert f"lc_aid={anon}" in cookie  # first-party cookie on the page's own origin
        await browser.click("#guide")
        # The site's server signs the email of the visitor it knows (docs/http.md, "Trust
        # model"); without the signature the identify could not link to the CRM lead.
        signed = json.dumps(sign_email(f"sk-{stack.run}", email))
        await browser.evaluate(
            f"leadcycle.identify({json.dumps(email)}, {{plan: 'pro'}}, {signed})"
        )
        await browser.goto("about:blank")  # pagehide: anything left goes by sendBeacon

        def arrived(rs: list[tuple[bytes | None, dict[str, object]]]) -> bool:
            kinds = {v["type"] for _, v in rs if v.get("anonymous_id") == anon}
            return {"page_view", "content_download", "identify"} <= kinds

        records = await read_topic(
            stack.services.kafka_url, stack.topics.events, until=arrived, seconds=30
        )
        mine = [(k, v) for k, v in records if v.get("anonymous_id") == anon]
        assert arrived(mine), [v["type"] for _, v in mine]
        assert all(k == anon.encode() for k, _ in mine)
        by_type = {str(v["type"]): v for _, v in mine}
        assert by_type["content_download"]["properties"]["content_id"] == "wp-buyers-guide"
        assert by_type["identify"]["email"] == email
        assert by_type["page_view"]["context"]["ip"] == "127.0.0.1"
        assert "leadcycle-test" in by_type["page_view"]["context"]["user_agent"]
        assert by_type["identify"]["collected"]["email_verified"] is True
        for _, v in mine:
            # The tracker said when it sent: the collector corrected for the device's clock.
            stamp = v["collected"]
            assert (stamp["site"], stamp["key"]) == ("sample", "browser")
            assert stamp["sent_at"]
            assert stamp["device_occurred_at"]
            at = datetime.fromisoformat(str(v["occurred_at"]))
            assert at <= datetime.fromisoformat(stamp["received_at"])

        # Only the page's own origin and the collector: no third-party requests.
        allowed = {urlsplit(sample_site).netloc, urlsplit(stack.base).netloc}
        contacted = {urlsplit(u).netloc for u in browser.requests if u.startswith("http")}
        assert contacted == allowed

        async def scored() -> bool:
            after = await behaviour()
            return after is not None and before is not None and after > before

        await eventually(scored, seconds=30, what="identify to credit the visit to the lead")
    finally:
        await conn.close()


async def test_call_list_page_shows_the_list_and_records_an_outcome(
    stack: WebStack, hot_leads: HotLeads, browser: Browser
) -> None:
    rep = stack.reps[0]
    lead = hot_leads.a[2]
    await browser.goto(f"{stack.base}/call-list?rep={rep}")
    assert "Sales token" in await browser.evaluate("document.body.innerText")  # sign-in first
    await browser.evaluate(
        f"document.querySelector('input[name=token]').value = {json.dumps(stack.rep_tokens[rep])}"
    )
    await browser.click("form button")
    await eventually(
        lambda: browser.evaluate("document.querySelectorAll('li[data-lead]').length > 0"),
        seconds=10,
        what="the call list after sign-in",
    )
    text = await browser.evaluate("document.body.innerText")
    assert f"Call list: {rep}" in text
    assert "Acme Manufacturing" in text
    assert "VP Operations" in text
    assert "grade A" in text
    assert "ask about: budget" in text
    assert "demo_request" in text
    leads_shown = await browser.evaluate(
        "[...document.querySelectorAll('li[data-lead]')].map(li => li.dataset.lead)"
    )
    assert lead in leads_shown
    assert hot_leads.b not in leads_shown
    png = await browser.screenshot(ARTIFACTS / "call-list.png")
    assert png.startswith(b"\x89PNG")
    assert len(png) > 5_000

    await browser.click(f"li[data-lead='{lead}'] button[value=appointment_set]")
    await eventually(
        lambda: browser.evaluate("document.body.innerText.includes('Recorded appointment_set')"),
        seconds=15,
        what="the page to confirm the outcome",
    )
    records = await read_topic(
        stack.services.kafka_url,
        stack.topics.outcomes,
        until=lambda rs: any(v["lead_id"] == lead for _, v in rs),
    )
    [(key, outcome)] = [(k, v) for k, v in records if v["lead_id"] == lead]
    assert key == lead.encode()
    assert outcome["outcome"] == "appointment_set"
    assert outcome["rep"] == rep
    assert str(outcome["event_id"]).startswith("page-fu-")
    conn = await db.connect(stack.services.database_dsn)
    try:

        async def applied() -> bool:
            found = await conn.fetchval(
                "SELECT subject FROM event_log WHERE event_id = $1", outcome["event_id"]
            )
            return bool(found == lead)

        # The same path as a CRM outcome: the worker logs and applies it.
        await eventually(applied, seconds=30, what="the worker to apply the page's outcome")
    finally:
        await conn.close()
