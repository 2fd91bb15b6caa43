"""Turn raw topic bytes into a validated event, or a rejection that says exactly why."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from events.common import RejectReason, WireModel
from events.outcomes import OutcomeRecorded
from events.profiles import ProfileUpdated
from events.tracking import BEHAVIOUR_TYPES, BehaviourTracked

InputEvent = BehaviourTracked | ProfileUpdated | OutcomeRecorded


#: Input topic suffix -> model and the ``type`` values it accepts.
INPUT_MODELS: dict[str, tuple[type[WireModel], tuple[str, ...]]] = {
    "events": (BehaviourTracked, BEHAVIOUR_TYPES),
    "profiles": (ProfileUpdated, ("profile_updated",)),
    "outcomes": (OutcomeRecorded, ("sales_outcome",)),
}

#: How many validation errors a rejection lists before it says "and N more".
MAX_ERRORS_LISTED = 5


@dataclass(frozen=True)
class Rejection:
    """Why a message was not accepted. ``error`` names fields as ``field.sub: message``."""

    reason: RejectReason
    error: str
    field: str | None = None


def describe(exc: ValidationError) -> tuple[str, str | None]:
    """``field: message; ...`` for a pydantic error, and the first offending field."""
    parts = []
    first: str | None = None
    errors = exc.errors(include_url=False)
    for err in errors[:MAX_ERRORS_LISTED]:
        loc = ".".join(str(p) for p in err["loc"]) or "(message)"
        first = first or loc
        parts.append(f"{loc}: {err['msg']}")
    if len(errors) > MAX_ERRORS_LISTED:
        parts.append(f"and {len(errors) - MAX_ERRORS_LISTED} more")
    return "; ".join(parts), first


def decode(topic: str, raw: bytes | None, *, max_bytes: int) -> InputEvent | Rejection:
    """Decode one message value of input topic ``topic`` (suffix: events/profiles/outcomes)."""
    model, types = INPUT_MODELS[topic]
    if not raw:
        return Rejection("empty", "message value is empty")
    if len(raw) > max_bytes:
        return Rejection("too_large", f"message is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("invalid_utf8", f"not UTF-8 at byte {exc.start}")
    if "\\u0000" in text:
        # Valid JSON, but PostgreSQL text cannot hold NUL: refuse it here, naming the cause.
        return Rejection("schema", "(message): NUL characters (\\u0000) are not allowed")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return Rejection(
            "invalid_json", f"invalid JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
        )
    except RecursionError:
        return Rejection("invalid_json", "invalid JSON: nested too deeply")
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        return Rejection("invalid_json", f"invalid JSON: {str(exc)[:200]}")
    if not isinstance(doc, dict):
        return Rejection("schema", f"(message): expected a JSON object, got {type(doc).__name__}")
    kind = doc.get("type")
    if kind not in types:
        return Rejection(
            "unknown_type",
            f"type: {str(kind)[:64]!r} is not one of {', '.join(types)}",
            "type",
        )
    try:
        event = model.model_validate(doc)
    except ValidationError as exc:
        error, field = describe(exc)
        return Rejection("schema", error, field)
    assert isinstance(event, BehaviourTracked | ProfileUpdated | OutcomeRecorded)
    return event
