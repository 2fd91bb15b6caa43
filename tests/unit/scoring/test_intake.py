"""Event time and idempotency keys: clocks ahead are not believed, ids are unique per source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events import BehaviourTracked
from scoring.decay import newest, read
from scoring.engine import apply
from scoring.fold import Fold
from scoring.intake import admitted, qualify, scored_time, source_of, split
from scoring.state import LeadState
from tests.unit.scoring.factory import RULES, T0, behaviour, days, outcome, profile

SKEW = timedelta(minutes=5)


def test_a_clock_far_ahead_is_scored_at_the_receive_time() -> None:
    received = T0
    stated = T0 + days(730)
    assert scored_time(stated, received=received, now=T0 + timedelta(seconds=2), max_skew=SKEW) == (
        received
    )


def test_a_time_within_the_tolerance_is_kept_but_never_after_now() -> None:
    now = T0 + timedelta(seconds=1)
    ahead = T0 + timedelta(minutes=4)  # within 5 min of the receive time: believed...
    assert scored_time(ahead, received=T0, now=now, max_skew=SKEW) == now  # ...up to now
    behind = T0 - days(3)
    assert scored_time(behind, received=T0, now=now, max_skew=SKEW) is behind
    exactly = T0 + SKEW
    assert scored_time(exactly, received=T0, now=exactly, max_skew=SKEW) is exactly


def test_a_receive_stamp_ahead_of_the_worker_is_not_believed_either() -> None:
    # The collector's clock ahead of the worker's: still nothing after the processing time.
    now = T0
    assert scored_time(T0 + days(1), received=T0 + days(1), now=now, max_skew=SKEW) == now


def test_the_source_is_the_collector_site_else_the_topic() -> None:
    tracked = behaviour("page_view", event_id="crm-5042")
    assert source_of("events", tracked) == "events"
    stamped = BehaviourTracked.model_validate(
        {
            **tracked.model_dump(),
            "collected": {"site": "acme", "key": "browser", "received_at": T0},
        }
    )
    assert source_of("events", stamped) == "http:acme"
    assert source_of("outcomes", outcome("no_answer")) == "outcomes"


def test_qualified_ids_split_back_and_never_equal_a_producer_id() -> None:
    q = qualify("http:acme", "crm-5042")
    assert q == "http:acme|crm-5042"
    assert split(q) == ("http:acme", "crm-5042")
    assert split("crm-5042") == (None, "crm-5042")  # logged before ids were qualified
    # '|' is not allowed in an event_id, so no producer can choose a qualified id.
    with pytest.raises(ValueError, match="event_id"):
        behaviour("page_view", event_id="outcomes|crm-5042")


def test_the_same_id_from_two_sources_is_two_events_and_each_applies_once() -> None:
    lead = LeadState.new("L1", now=T0 - days(1))
    view = behaviour("demo_request", T0, event_id="crm-5042")
    update = profile(T0, event_id="crm-5042", job_title="CTO")
    first = apply(lead, admitted(view, qualify("events", "crm-5042"), T0), RULES, now=T0)
    second = apply(
        first.state, admitted(update, qualify("profiles", "crm-5042"), T0), RULES, now=T0
    )
    assert not first.duplicate
    assert not second.duplicate
    assert second.state.profile.job_title == "CTO"
    # Which events were applied is the event log's business (its key is the qualified id):
    # the fold, which stands in for it, applies the same qualified id once.
    fold = Fold(RULES, now=T0)
    for source, event in (("events", view), ("profiles", update), ("events", view)):
        decisions = fold.add(admitted(event, qualify(source, "crm-5042"), T0))
    assert decisions[-1].duplicate
    assert fold.states["L1"].events == 2
    ids = {e.event_id for e in first.ledger + second.ledger}
    assert ids <= {"events|crm-5042", "profiles|crm-5042"}
    assert {e.entry_id.split(":")[1] for e in first.ledger} == {"events|crm-5042"}


def test_no_decay_is_anchored_after_now() -> None:
    """An event a little ahead (within the tolerance, or from any caller that did not clamp)
    is anchored at ``now``: the group is never read ahead of the processing time."""
    now = T0
    ahead = behaviour("demo_request", now + timedelta(minutes=3))
    d = apply(LeadState.new("L1", now=now - days(1)), ahead, RULES, now=now)
    assert d.ledger
    for entry in d.ledger:
        if entry.kind == "behaviour":
            assert entry.anchor is not None
            assert entry.anchor <= now
    reference = newest(d.state.decay)
    assert reference is not None
    assert reference <= now


def test_an_event_two_years_ahead_does_not_freeze_its_decay_group() -> None:
    """The finding: one event dated two years ahead made a real demo request count ~0."""
    now = T0 + days(10)
    real = [behaviour("content_download", T0, event_id="r1"), behaviour("demo_request", now)]
    future = behaviour("content_download", T0 + days(730), event_id="f1")
    control = LeadState.new("L1", now=T0 - days(1))
    skewed = apply(control.copy(), future, RULES, now=now).state
    for event in real:
        control = apply(control, event, RULES, now=now).state
        skewed = apply(skewed, event, RULES, now=now).state
    # The demo request counts the same on both leads.
    assert read(skewed.decay, now) - read(control.decay, now) == pytest.approx(
        read(apply(LeadState.new("L2", now=T0), future, RULES, now=now).state.decay, now)
    )
    later = now + days(30)  # and everything decays on, the skewed event included
    assert read(skewed.decay, later) < read(skewed.decay, now)


def test_admitted_copies_keep_the_payload_and_change_id_and_time() -> None:
    event = behaviour("page_view", T0 + days(2), event_id="x-1", url="/pricing")
    inside = admitted(event, "events|x-1", T0)
    assert (inside.event_id, inside.occurred_at) == ("events|x-1", T0)
    assert inside.properties == event.properties
    assert event.event_id == "x-1"  # the original is untouched
    assert datetime(2026, 3, 4, 1, tzinfo=UTC) == event.occurred_at
