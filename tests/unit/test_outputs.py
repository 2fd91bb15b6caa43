"""The output messages built without their wire models are exactly what the models produce."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from events import ScoreChanged, TopicNames
from scoring.ledger import LedgerEntry
from scoring.state import LeadState
from workers.outputs import Outputs

AT = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def test_score_changed_is_what_the_wire_model_serialises() -> None:
    state = LeadState.new("L-ü", now=AT)
    state.fit_score, state.fit_grade, state.stage = 31.5, "B", "mql"
    tokyo = timezone(timedelta(hours=9))
    entries = [
        LedgerEntry("L-ü:events|e1:page-view", "L-ü", "events|e1", "page-view", "2026.1",
                    "behaviour", AT.astimezone(tokyo), 2.0, 1.5, 1.2, 0.0, 1.2, AT, 30.0),
        LedgerEntry("L-ü:profiles|p1:title-director", "L-ü", "profiles|p1", "title-director",
                    "2026.1", "fit", AT, 24.0, 24.0, 24.0, 7.5, 31.5),
    ]  # fmt: skip
    record = Outputs(TopicNames("t.")).score_changed(
        state, entries, behaviour=1.2, priority=19.38, rules_version="2026.1", scored_at=AT
    )
    model = ScoreChanged.model_validate_json(record.value)
    assert record.value == model.model_dump_json().encode()
    assert [e.entry_id for e in model.entries] == [e.entry_id for e in entries]
    assert (record.topic, record.key) == ("t.score-changes", "L-ü".encode())
