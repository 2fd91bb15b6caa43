"""Whose word a tracked event is (scoring/trust.py) and what the fold makes of it."""

from __future__ import annotations

from typing import Any

from events import BehaviourTracked
from scoring.engine import apply
from scoring.fold import Fold
from scoring.state import LeadState
from scoring.trust import counts, vouched
from tests.unit.scoring.factory import RULES, T0, behaviour, hours


def collected(key: str = "browser", *, verified: bool = False) -> dict[str, Any]:
    return {"site": "www", "key": key, "received_at": T0, "email_verified": verified}


def stamped(event: BehaviourTracked, **stamp: Any) -> BehaviourTracked:
    doc = event.model_dump()
    doc["collected"] = collected(**stamp)
    return BehaviourTracked.model_validate(doc)


def test_kafka_and_server_keys_are_vouched_browsers_only_when_signed() -> None:
    unsubscribe = behaviour("unsubscribe", lead=None, anonymous_id="a1")
    assert vouched(unsubscribe)  # no stamp: a Kafka producer
    assert vouched(stamped(unsubscribe, key="server"))
    assert vouched(stamped(unsubscribe, verified=True))
    assert not vouched(stamped(unsubscribe))
    assert not counts(stamped(unsubscribe))
    assert counts(stamped(behaviour("page_view", lead=None, anonymous_id="a1")))


def test_an_unvouched_unsubscribe_is_applied_but_credits_nothing() -> None:
    lead = LeadState.new("L1", now=T0)
    unsigned = stamped(behaviour("unsubscribe", lead=None, anonymous_id="a1"))
    decision = apply(lead, unsigned, RULES, now=T0 + hours(1))
    assert decision.ledger == []
    assert decision.state.events == 1  # applied (and logged): a redelivery changes nothing
    signed = stamped(behaviour("unsubscribe", lead=None, anonymous_id="a1"), verified=True)
    decision = apply(lead, signed, RULES, now=T0 + hours(1))
    assert [e.rule_id for e in decision.ledger] == ["unsubscribe"]
    assert decision.ledger[0].points < 0


def test_the_fold_keeps_an_unsigned_unassigned_identify_on_the_visitor() -> None:
    visit = behaviour("page_view", lead=None, anonymous_id="a1")
    forged = stamped(
        behaviour("identify", T0 + hours(1), lead=None, anonymous_id="a1", email="v@x.example")
    )
    fold = Fold(RULES, now=T0 + hours(2))
    fold.add(visit)
    fold.add(forged)
    assert fold.merged == {}
    assert "email:v@x.example" not in fold.states
    assert fold.states["anon:a1"].events == 2  # the visit and the identify

    # The worker assigned it (it made the lead of a new email): linked and stitched.
    fold = Fold(RULES, now=T0 + hours(2), assigned={forged.event_id: "email:v@x.example"})
    fold.add(visit)
    fold.add(forged)
    assert fold.merged == {"anon:a1": "email:v@x.example"}


def test_the_fold_sends_a_signed_unsubscribe_where_the_worker_did() -> None:
    signed = stamped(
        behaviour("unsubscribe", lead=None, anonymous_id="a2", email="u@x.example"),
        verified=True,
    )
    fold = Fold(RULES, now=T0 + hours(1), assigned={signed.event_id: "L7"})
    [decision] = fold.add(signed)
    assert decision.state.lead_id == "L7"
    assert [e.rule_id for e in decision.ledger] == ["unsubscribe"]
