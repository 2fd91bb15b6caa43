"""The follow-up desk: how a lead's decisions of one batch open, update and close its entry."""

from __future__ import annotations

from datetime import datetime

from scoring.decision import Decision, FollowupContext, FollowupDecision
from scoring.desk import needs_desk, settle
from scoring.state import LeadState
from tests.unit.scoring.factory import T0, hours

STATE = LeadState.new("L1", now=T0)


def wanted(priority: float, due: datetime, why: str = "new_mql") -> Decision:
    context = FollowupContext(lead_id="L1", grade="B", fit_score=30.0, behaviour_score=20.0)
    followup = FollowupDecision(
        lead_id="L1", why_now=why, reason="r", priority=priority, created_at=T0,  # type: ignore[arg-type]
        due_at=due, context=context,
    )  # fmt: skip
    return Decision(state=STATE, followup=followup, changed=True, stage="mql")


def test_a_follow_up_opens_once_and_keeps_its_earliest_due_time() -> None:
    done = settle(None, [wanted(50.0, T0 + hours(5)), wanted(60.0, T0 + hours(9))], T0)
    (row,) = done.opened
    assert list(done.changed.values()) == [row]
    assert (row.status, row.priority, row.due_at, row.version) == ("open", 60.0, T0 + hours(5), 2)


def test_an_outcome_closes_it_and_a_merge_says_so() -> None:
    row = settle(None, [wanted(50.0, T0 + hours(5))], T0).opened[0]
    touch = Decision(state=STATE, close_followup=True, changed=True, stage="mql")
    done = settle(row, [touch], T0 + hours(1))
    assert (row.status, row.closed_reason, row.version) == ("done", "sales outcome recorded", 2)
    assert done.opened == []
    merged = settle(
        settle(None, [wanted(40.0, T0)], T0).opened[0],
        [Decision(state=STATE, close_followup=True, changed=True, closed_reason="merged into C")],
        T0,
    )
    assert [r.closed_reason for r in merged.changed.values()] == ["merged into C"]


def test_a_recycle_closes_with_its_reason_and_nothing_opens_for_an_excluded_lead() -> None:
    row = settle(None, [wanted(50.0, T0)], T0).opened[0]
    recycled = Decision(state=STATE, close_followup=True, changed=True, stage="recycled")
    settle(row, [recycled], T0)
    assert row.closed_reason == "lead recycled"
    excluded = wanted(70.0, T0)
    excluded.excluded = True
    assert settle(None, [excluded], T0).opened == []
    assert needs_desk([excluded])
    assert not needs_desk([Decision(state=STATE, changed=True)])
