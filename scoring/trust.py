"""Whose word a tracked event is: what a browser may claim about a known lead.

The HTTP collector stamps every event it accepts with ``collected`` (site, key kind, whether
its email carried the site server's signature); events produced straight to Kafka have none.
Browser write keys are public, so a browser event may describe the visitor that sent it but
not speak for a known lead (docs/http.md, "Trust model").
"""

from __future__ import annotations

from events.tracking import BehaviourTracked


def vouched(event: BehaviourTracked) -> bool:
    """Whether a trusted party stands behind the event's claim of who it is about.

    Kafka producers (no ``collected``) and the collector's server keys are the site's own
    services; a browser event is vouched for only when its email carried the signature of
    the site's server (``collected.email_verified``).

    Args:
        event: a tracked event, as it arrived on the topic.
    """
    c = event.collected
    return c is None or c.key == "server" or c.email_verified


def counts(event: BehaviourTracked) -> bool:
    """Whether the event may change the scores of the lead it reaches.

    An ``unsubscribe`` must be vouched for (a signed link, a server key or a Kafka producer):
    anyone holding the public write key could otherwise send ten of them and sink a lead.
    An unvouched one is still recorded in the event log; it changes no lead.

    Args:
        event: a tracked event, as it arrived on the topic.
    """
    return event.type != "unsubscribe" or vouched(event)
