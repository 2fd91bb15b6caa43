"""Whom an input event is about: its *subject*, given what the batch knows.

A subject is a lead id (the CRM's, or ``email:<address>`` for a lead an identify made from an
email alone) or an anonymous visitor ``anon:<id>``. The worker resolves it with the identity
links and the leads by email it read for the batch; :class:`scoring.fold.Fold` resolves it the
same way from what it has folded (docs/architecture.md, "Identity").
"""

from __future__ import annotations

from events import BehaviourTracked
from events.decode import InputEvent
from scoring.merge import EMAIL_PREFIX
from scoring.state import ANON_PREFIX
from scoring.trust import vouched


def route(
    event: InputEvent,
    links: dict[str, str],
    by_email: dict[str, str],
    claimed: set[str],
) -> tuple[str, bool]:
    """The event's subject, and whether it is an identify that links its visitor to the
    lead of its email (docs/http.md, "Trust model").

    Only a vouched identify (Kafka, server key, or an email signed by the site's server)
    may link a visitor to a lead that already exists. An unsigned browser identify of a
    known email is recorded as the visitor's own event: no link, no merge of history. One
    of an email nobody has yet makes the lead, as a sign-up form would. A signed browser
    unsubscribe (a signed link) is about the lead of its email.

    Args:
        event: the event.
        links: anonymous id -> the lead it was linked to.
        by_email: email -> the live lead with it (a CRM lead before an email lead).
        claimed: emails an identify of this batch gave a lead already.
    """
    if not isinstance(event, BehaviourTracked):
        return subject_of(event, links, by_email), False
    identify = event.type == "identify" and event.anonymous_id is not None
    if event.lead_id or event.email is None:
        # Naming the lead is vouching for it: browser keys cannot (the collector refuses).
        return subject_of(event, links, by_email), identify
    if event.type == "unsubscribe" and by_email_lookup(event):
        return by_email.get(event.email) or subject_of(event, links, by_email), False
    if event.type != "identify":
        return subject_of(event, links, by_email), False
    known = event.email in by_email or event.email in claimed
    if known and not vouched(event) and event.anonymous_id:
        return links.get(event.anonymous_id) or f"{ANON_PREFIX}{event.anonymous_id}", False
    return subject_of(event, links, by_email), identify


def subject_of(event: InputEvent, links: dict[str, str], by_email: dict[str, str]) -> str:
    """The subject an event names: its lead id; for an identify without one, the lead of
    its email (else ``email:<address>``); else its visitor, or the lead it was linked to."""
    if not isinstance(event, BehaviourTracked):
        return event.lead_id
    if event.lead_id:
        return event.lead_id
    if event.type == "identify" and event.email:
        return by_email.get(event.email) or f"{EMAIL_PREFIX}{event.email}"
    assert event.anonymous_id is not None
    return links.get(event.anonymous_id) or f"{ANON_PREFIX}{event.anonymous_id}"


def by_email_lookup(event: BehaviourTracked) -> bool:
    """Whether the event's subject is looked up by its email: an identify without a lead id,
    or a browser unsubscribe whose email the site's server signed (a signed link)."""
    if event.lead_id or event.email is None:
        return False
    if event.type == "identify":
        return True
    return (
        event.type == "unsubscribe"
        and event.collected is not None
        and event.collected.email_verified
    )
