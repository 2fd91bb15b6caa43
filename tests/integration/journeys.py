"""Scripted journeys that read like The Model's playbook, as raw topic messages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

DAY = 24 * 60  # minutes
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15"


@dataclass
class Journey:
    """Builds messages for one lead; ``phases`` separate what happens on different days."""

    lead_id: str
    start: datetime
    anonymous_id: str | None = None
    phases: list[list[tuple[str, bytes, bytes]]] = field(default_factory=lambda: [[]])
    n: int = 0

    def _id(self) -> str:
        self.n += 1
        return f"{self.lead_id}-{self.n}"

    def at(self, minutes: float) -> str:
        return (self.start + timedelta(minutes=minutes)).isoformat()

    def _send(self, topic: str, key: str, doc: dict[str, Any]) -> None:
        self.phases[-1].append((topic, key.encode(), json.dumps(doc).encode()))

    def then(self) -> Journey:
        self.phases.append([])
        return self

    def behaviour(
        self, minutes: float, kind: str, *, anonymous: bool = False, **props: Any
    ) -> Journey:
        doc: dict[str, Any] = {
            "event_id": self._id(),
            "type": kind,
            "occurred_at": self.at(minutes),
            "properties": props,
            "context": {"user_agent": UA, "ip": "203.0.113.10"},
        }
        if anonymous:
            assert self.anonymous_id
            doc["anonymous_id"] = self.anonymous_id
        else:
            doc["lead_id"] = self.lead_id
        key = self.anonymous_id if anonymous and self.anonymous_id else self.lead_id
        self._send("events", key, doc)
        return self

    def identify(self, minutes: float, email: str) -> Journey:
        assert self.anonymous_id
        self._send(
            "events",
            self.lead_id,
            {
                "event_id": self._id(),
                "type": "identify",
                "occurred_at": self.at(minutes),
                "anonymous_id": self.anonymous_id,
                "lead_id": self.lead_id,
                "email": email,
            },
        )
        return self

    def profile(self, minutes: float, **fields: Any) -> Journey:
        self._send(
            "profiles",
            self.lead_id,
            {
                "event_id": self._id(),
                "type": "profile_updated",
                "lead_id": self.lead_id,
                "occurred_at": self.at(minutes),
                **fields,
            },
        )
        return self

    def outcome(
        self,
        minutes: float,
        outcome: str,
        *,
        reason: str | None = None,
        revisit_on: date | None = None,
        **bant: bool,
    ) -> Journey:
        doc: dict[str, Any] = {
            "event_id": self._id(),
            "type": "sales_outcome",
            "lead_id": self.lead_id,
            "occurred_at": self.at(minutes),
            "outcome": outcome,
            "reason": reason,
            "rep": "rep-1",
            "bant": bant,
        }
        if revisit_on is not None:
            doc["revisit_on"] = revisit_on.isoformat()
        self._send("outcomes", self.lead_id, doc)
        return self


VP_PROFILE = {
    "email": "k.tanaka@fuji-seiki.example.co.jp",
    "company_name": "Fuji Seiki KK",
    "company_size": 1500,
    "industry": "manufacturing",
    "job_title": "VP of Sales",
    "country": "JP",
    "source": "webinar",
}


def no_budget_journey(lead_id: str, start: datetime) -> Journey:
    """Anonymous visits -> identify -> downloads -> MQL -> lost (no budget) the next day ->
    pricing page on three different days (daily caps would absorb three visits in one day)."""
    j = Journey(lead_id, start, anonymous_id=f"a-{lead_id}")
    j.behaviour(0, "page_view", anonymous=True, url="https://example.com/")
    j.behaviour(3, "page_view", anonymous=True, url="https://example.com/product")
    j.behaviour(6, "page_view", anonymous=True, url="https://example.com/pricing")
    j.identify(10, VP_PROFILE["email"])
    j.profile(11, **VP_PROFILE)
    j.behaviour(15, "content_download", content_id="wp-2026-cdp", title="CDP whitepaper")
    j.behaviour(20, "content_download", content_id="wp-2026-abm", title="ABM playbook")
    j.then().outcome(DAY, "lost", reason="no_budget", budget=False, need=True)
    j.then()
    for minutes in (2 * DAY, 3 * DAY + 30, 4 * DAY + 60):
        j.behaviour(minutes, "page_view", url="https://example.com/pricing")
    return j


def timing_journey(lead_id: str, start: datetime, revisit_on: date) -> Journey:
    j = Journey(lead_id, start)
    j.profile(
        0,
        **{
            **VP_PROFILE,
            "email": f"{lead_id.lower()}@kanto-soft.example.co.jp",
            "company_name": "Kanto Soft",
            "industry": "software",
        },
    )
    j.behaviour(5, "demo_request", url="https://example.com/contact/demo")
    j.then().outcome(60, "lost", reason="timing", revisit_on=revisit_on)
    return j


def student_journey(lead_id: str, start: datetime) -> Journey:
    j = Journey(lead_id, start)
    j.profile(
        0,
        email="hanako@econ.tokyo-u.ac.jp",
        company_name="University of Tokyo",
        job_title="Student",
        company_size=5000,
        country="JP",
        source="content",
    )
    for i in range(10):
        j.behaviour(5 + i * 30, "content_download", content_id=f"wp-{i}", title=f"Whitepaper {i}")
    j.behaviour(400, "demo_request", url="https://example.com/contact/demo")
    return j
