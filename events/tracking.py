"""``leadcycle.events``: behaviour that web trackers publish."""

from __future__ import annotations

import functools
import ipaddress
from typing import Annotated, Any, Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from events.common import (
    AnonymousId,
    Email,
    EventId,
    EventTime,
    InputModel,
    LeadId,
    Url,
)

BehaviourType = Literal[
    "page_view",
    "content_download",
    "webinar_attended",
    "email_click",
    "form_submit",
    "trial_signup",
    "quote_request",
    "demo_request",
    "identify",
    "unsubscribe",
]
BEHAVIOUR_TYPES: tuple[str, ...] = BehaviourType.__args__  # type: ignore[attr-defined]

#: Limits on free-form properties beyond the named ones.
MAX_EXTRA_PROPERTIES = 32
MAX_EXTRA_VALUE_LENGTH = 1024


class Properties(InputModel):
    """What the event was about. Named keys are typed; up to 32 extra scalar keys are kept."""

    model_config = ConfigDict(frozen=True, extra="allow", str_max_length=4096)

    url: Url | None = None
    referrer: Url | None = None
    content_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    title: Annotated[str, StringConstraints(max_length=512)] | None = None
    form_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    campaign: Annotated[str, StringConstraints(max_length=128)] | None = None

    @model_validator(mode="after")
    def _bounded_extras(self) -> Self:
        extra: dict[str, Any] = self.model_extra or {}
        if len(extra) > MAX_EXTRA_PROPERTIES:
            raise ValueError(f"at most {MAX_EXTRA_PROPERTIES} extra properties are allowed")
        for key, value in extra.items():
            if len(key) > 64:
                raise ValueError(f"property name {key[:64]!r}... is longer than 64 characters")
            if value is not None and not isinstance(value, str | int | float | bool):
                raise ValueError(f"property {key!r} must be a string, number, boolean or null")
            if isinstance(value, str) and len(value) > MAX_EXTRA_VALUE_LENGTH:
                raise ValueError(
                    f"property {key!r} is longer than {MAX_EXTRA_VALUE_LENGTH} characters"
                )
        return self


class Context(InputModel):
    """Where the event came from; the HTTP collector fills these in from the request."""

    user_agent: Annotated[str, StringConstraints(max_length=1024)] | None = None
    ip: Annotated[str, StringConstraints(max_length=64)] | None = None
    locale: Annotated[str, StringConstraints(max_length=35)] | None = None

    @field_validator("ip")
    @classmethod
    def _ip_address(cls, value: str | None) -> str | None:
        if value is not None:
            _check_ip(value)
        return value


@functools.lru_cache(maxsize=4096)
def _check_ip(value: str) -> None:
    """Raises ValueError with a clear message; cached, as a visitor's address repeats (only
    valid addresses are cached: an exception is not)."""
    ipaddress.ip_address(value)


#: A collector site name (the ``site`` of ``site=key`` in ``LEADCYCLE_HTTP_WRITE_KEYS``).
SiteName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
]
#: Who holds a collector write key: ``browser`` keys ship inside pages and are public;
#: ``server`` keys are secret and held by the site's own servers.
KeyKind = Literal["browser", "server"]


class Collected(InputModel):
    """How the HTTP collector received an event (set by the collector, never by a client).

    An item that carries ``collected`` itself is rejected there, so on the topic it is the
    collector's word.
    Events produced straight to Kafka have none (Kafka producers are trusted services).
    """

    #: The site of the write key the request carried.
    site: SiteName
    #: The kind of that key (docs/http.md, "Trust model").
    key: KeyKind
    #: When the collector received the request (its own clock).
    received_at: EventTime
    #: The device's clock when it sent the request (the tracker's ``sent_at``), if it said.
    sent_at: EventTime | None = None
    #: ``occurred_at`` as the device stated it, when the collector corrected it for the
    #: device's clock skew (``occurred_at = received_at - (sent_at - device_occurred_at)``).
    device_occurred_at: EventTime | None = None
    #: ``email`` carried a valid signature of the site's server (HMAC, docs/http.md).
    email_verified: bool = False


class BehaviourTracked(InputModel):
    """A visitor or lead did something a web tracker saw.

    Producers key the message by ``lead_id`` when they know it, else by ``anonymous_id``.
    """

    event_id: EventId
    type: BehaviourType
    occurred_at: EventTime
    anonymous_id: AnonymousId | None = None
    lead_id: LeadId | None = None
    email: Email | None = None
    properties: Properties = Field(default_factory=Properties)
    context: Context | None = None
    collected: Collected | None = None

    @model_validator(mode="after")
    def _who(self) -> Self:
        if self.anonymous_id is None and self.lead_id is None:
            raise ValueError("anonymous_id or lead_id is required")
        if self.type == "identify" and self.email is None:
            raise ValueError("email is required for an identify event")
        return self

    @property
    def subject(self) -> str:
        """The partition key: the lead when known, else the anonymous visitor."""
        return self.lead_id if self.lead_id is not None else f"anon:{self.anonymous_id}"


__all__ = [
    "BEHAVIOUR_TYPES",
    "BehaviourTracked",
    "BehaviourType",
    "Collected",
    "Context",
    "KeyKind",
    "Properties",
    "SiteName",
]
