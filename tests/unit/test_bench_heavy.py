"""The heavy-lead bench's generators and its report row. No timing is asserted here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bench import report
from bench.heavy import (
    BATCH_EVENTS,
    BYSTANDER_EVENTS,
    BYSTANDERS,
    MIX,
    Heavy,
    LeadCost,
    batch,
    history,
    messages,
)
from events import BehaviourTracked, decode

END = datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_history_is_valid_ordered_and_before_its_end() -> None:
    events = history("lead-7", 3000, end=END, days=120)
    assert len(events) == 3000
    assert len({e.event_id for e in events}) == 3000
    times = [e.occurred_at for e in events]
    assert times == sorted(times)
    assert END - timedelta(days=120) <= times[0]
    assert times[-1] < END
    assert {e.lead_id for e in events} == {"lead-7"}
    # Most of the mix shows up, so capped rules and several decay half-lives are exercised.
    assert {e.type for e in events} >= {"page_view", "email_click", "content_download"}
    assert len({e.properties.url for e in events if e.type == "page_view"}) >= 5


def test_history_is_the_same_for_the_same_lead() -> None:
    assert history("a", 50, end=END) == history("a", 50, end=END)
    assert history("a", 50, end=END) != history("b", 50, end=END)


def test_messages_decode_back_to_the_events() -> None:
    events = history("lead-7", 200, end=END) + batch("lead-7", 0, now=END)
    for msg, event in zip(messages(events, 100), events, strict=True):
        assert msg.topic == "events"
        assert msg.key == (event.lead_id or "").encode()
        assert decode(msg.topic, msg.value, max_bytes=65536) == event


def test_batch_is_the_lead_plus_a_few_others_with_ids_never_reused() -> None:
    one = batch("heavy-1", 3, now=END)
    assert len(one) == BATCH_EVENTS + BYSTANDERS * BYSTANDER_EVENTS
    assert sum(e.lead_id == "heavy-1" for e in one) == BATCH_EVENTS
    assert all(e.occurred_at < END for e in one)
    rounds = [batch(lead, r, now=END) for r in range(3) for lead in ("heavy-1", "light-10-0")]
    ids = [e.event_id for events in rounds for e in events]
    assert len(ids) == len(set(ids))
    assert all(isinstance(e, BehaviourTracked) for e in one)
    assert {kind for _, kind, _ in MIX} >= {e.type for e in one}


def _cost(past: int, median_ms: float, cpu_us: float) -> LeadCost:
    return LeadCost(past, 1.0, 4000, "mql", 0, median_ms, median_ms * 1.5, cpu_us)


def test_report_row_reads_the_figures_the_bench_writes() -> None:
    h = Heavy(_cost(10, 12.0, 7000), _cost(100_000, 30.0, 21000), 20, 8, 30)
    assert h.ratio == 2.5
    row = "\n".join(report._heavy({"heavy": h.as_json()}))
    assert "one lead with 100,000 past events vs 10" in row
    assert "30.0 vs 12.0 ms (2.50x)" in row
    assert "21,000 vs 7,000 µs (3.00x)" in row
    assert report._heavy({}) == []
