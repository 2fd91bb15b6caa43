"""Constrained types shared by every wire schema.

Every input model is strict: unknown top-level keys are rejected, strings are bounded, and
timestamps must carry a UTC offset and fall in a sane range. Error messages from pydantic name
the offending field (``loc``), which the dead-letter topic and the HTTP collector pass on.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

#: Earliest and latest accepted event times. Anything outside is a clock bug or an attack.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError("is not an email address")
    return value.lower()


#: Idempotency key chosen by the producer (UUID, ULID, or any stable opaque id).
EventId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/+-]+$")
]
#: A known lead's id as the CRM knows it.
LeadId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/+-]+$")
]
#: The tracker's first-party cookie id for a not-yet-identified visitor.
AnonymousId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
]
#: A sales rep's id.
RepId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@-]+$")
]
Email = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=254), AfterValidator(_email)
]
#: An event time: RFC 3339 with an offset (naive times are rejected), 2000-01-01..2100-01-01.
#: The bounds are checked in pydantic-core (a Python validator cost ~3 us per event time).
EventTime = Annotated[AwareDatetime, Field(ge=EARLIEST, lt=LATEST)]

#: Why an input message was dead-lettered.
RejectReason = Literal[
    "invalid_json",
    "invalid_utf8",
    "schema",
    "unknown_type",
    "too_large",
    "empty",
    "processing_error",
    "undecodable_batch",
]

ShortText = Annotated[str, StringConstraints(max_length=256)]
Url = Annotated[str, StringConstraints(max_length=2048)]


class WireModel(BaseModel):
    """Base of every message on a leadcycle topic: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class InputModel(WireModel):
    """Base of input messages: no string anywhere longer than 4,096 characters."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_max_length=4096)
