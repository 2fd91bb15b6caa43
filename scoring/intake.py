"""How an input event is known inside leadcycle: by a source-qualified id, at a trusted time.

Producers choose their own ``event_id``s, and two producers may choose the same one (a page
view sent through the collector as ``crm-5042``, then the CRM's outcome ``crm-5042``). So an
id is only unique within its *source*: the topic it came from (``events``, ``profiles``,
``outcomes``) or, for an event the HTTP collector stamped, the collector site
(``http:<site>``). Inside, every event is known by ``<source>|<event_id>`` (``|`` is not allowed
in an ``event_id``, so a qualified id never equals a producer's id): the applied-set digests,
ledger entry ids and stage history all use it. It is built once, at ingest, and the event log
keeps it, so replays and identity stitching use the very id the worker used.

Event times come from the producer's clock. An ``occurred_at`` more than ``max_skew`` ahead of
the time the event was received is a wrong clock, not an event from the future: it is scored
at the receive time instead (the event log keeps the stated time). And no event is scored
after the processing time ``now``: decay is never read ahead of it.

Pure: no I/O; ``now`` is an argument.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypeVar

from events.outcomes import OutcomeRecorded
from events.profiles import ProfileUpdated
from events.tracking import BehaviourTracked

Event = BehaviourTracked | ProfileUpdated | OutcomeRecorded
E = TypeVar("E", bound=Event)

#: Separates the source from the producer's id in a qualified id (never in an ``event_id``).
SEPARATOR = "|"
#: The source of events the HTTP collector stamped: ``http:<site>``.
HTTP_SOURCE_PREFIX = "http:"


def source_of(topic: str, event: Event) -> str:
    """Where ``event``'s id is unique: its collector site, else the topic it was read from.

    Args:
        topic: the input topic's suffix (``events``, ``profiles`` or ``outcomes``).
        event: the decoded event.
    """
    if isinstance(event, BehaviourTracked) and event.collected is not None:
        return f"{HTTP_SOURCE_PREFIX}{event.collected.site}"
    return topic


def qualify(source: str, event_id: str) -> str:
    """The id an event is known by inside leadcycle: ``<source>|<event_id>``."""
    return f"{source}{SEPARATOR}{event_id}"


def split(qualified: str) -> tuple[str | None, str]:
    """``(source, producer's event id)`` of a qualified id; ``(None, id)`` for an id logged
    before ids were qualified (it is the producer's id itself)."""
    source, sep, event_id = qualified.partition(SEPARATOR)
    return (source, event_id) if sep else (None, qualified)


def scored_time(
    stated: datetime, *, received: datetime, now: datetime, max_skew: timedelta
) -> datetime:
    """The time an event is scored at, given the time its producer stated.

    A stated time more than ``max_skew`` after ``received`` is a skewed clock: the event is
    scored at ``received``. Within the tolerance it is kept, but never later than ``now``,
    the processing time (so no decay accumulator is anchored after the time it is read at).

    Args:
        stated: ``occurred_at`` as the producer sent it.
        received: when leadcycle received it (the collector's stamp, else the batch time).
        now: the processing time.
        max_skew: how far ahead of ``received`` a stated time is still believed.
    """
    used = received if stated - received > max_skew else stated
    return min(used, now)


def admitted(event: E, qualified_id: str, occurred_at: datetime) -> E:
    """``event`` as the scoring core sees it: known by ``qualified_id``, at ``occurred_at``.

    The copy is not validated again (a qualified id is longer than the wire allows); the rest
    of the event (its payload as received) is unchanged. Made like ``model_copy(update=...)``
    without its generic handling of extras and private attributes, which input models do not
    have (one copy per new event on the hot path: ~3 µs instead of ~8).
    """
    cls = type(event)
    copied = cls.__new__(cls)
    fields = {**event.__dict__, "event_id": qualified_id, "occurred_at": occurred_at}
    object.__setattr__(copied, "__dict__", fields)
    object.__setattr__(copied, "__pydantic_fields_set__", event.__pydantic_fields_set__)
    object.__setattr__(copied, "__pydantic_extra__", event.__pydantic_extra__)
    object.__setattr__(copied, "__pydantic_private__", None)
    return copied
