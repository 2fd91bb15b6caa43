"""Turn raw topic bytes into a validated event, or a rejection that says exactly why.

Whatever :func:`decode` accepts, PostgreSQL stores: the event log keeps the message as
``jsonb``, which refuses ``NaN``/``Infinity``, lone UTF-16 surrogates (``"\\ud800"``), NUL
characters and numbers beyond its ``numeric`` range. A message that passed here and failed in
the database would cost its whole batch a bisection (workers/ingest.py), so those are refused
here, naming the field:

- numbers must be finite 64-bit floats (``1e400`` overflows to infinity; a nonzero literal that
  rounds to zero, such as ``1e-400``, is refused too), written in at most 64 characters with an
  exponent within +/-400 (jsonb's ``numeric`` refuses ``0e-99999``);
- integers must fit in 64 bits (PostgreSQL ``bigint``); fields stored in narrower columns
  (``company_size``, an ``integer``) carry their own tighter bound in the model;
- strings and keys must be Unicode: no lone surrogate, however it is spelled (a JSON escape, or
  its UTF-8-like bytes as a collector that re-encodes with ``surrogatepass`` sends them).

The checks cost almost nothing on good input: numbers are checked by the JSON parser's own
number hooks (only float literals and integer literals call Python, and the common case returns
at once), and the document is walked only when a hook flagged something or the text holds a
surrogate escape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

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

#: The widest integer stored anywhere (PostgreSQL ``bigint``, a signed 64-bit integer).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: Longest number literal accepted: a 64-bit float needs at most 17 significant digits.
MAX_NUMBER_CHARS = 64
#: Largest decimal exponent accepted in a literal (a 64-bit float spans about 1e-324..1e308).
MAX_EXPONENT = 400
#: A JSON escape of a UTF-16 surrogate (U+D800..U+DFFF); only then can a string hold a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_FLOAT_RANGE = "numbers must fit a 64-bit float (|x| <= 1.8e308, and 0 or |x| >= 5e-324)"
_SURROGATE = re.compile("[\ud800-\udfff]")


class Unstorable:
    """A JSON number the parser met that no column can hold; stands in for it in the document
    until :func:`_find_unstorable` names its field."""

    __slots__ = ("literal", "problem")

    def __init__(self, literal: str, problem: str) -> None:
        self.literal = literal
        self.problem = problem

    def describe(self) -> str:
        shown = (
            self.literal
            if len(self.literal) <= 24
            else f"{self.literal[:20]}...({len(self.literal)} characters)"
        )
        return f"{shown} {self.problem}"


#: How many :class:`Unstorable` the hooks have made; ``decode`` compares it around a parse, so
#: a clean document is never walked. (Only ever increases: another thread's parse can at worst
#: cause a walk that finds nothing.)
_flagged = 0


def _unstorable(literal: str, problem: str) -> Unstorable:
    global _flagged
    _flagged += 1
    return Unstorable(literal, problem)


def _parse_int(literal: str) -> int | Unstorable:
    if len(literal) < 19:  # at most 18 digits (and a sign): always within 64 bits
        return int(literal)
    if len(literal) <= 20:
        value = int(literal)
        if INT_MIN <= value <= INT_MAX:
            return value
    return _unstorable(
        literal, f"is out of range: integers must fit in 64 bits ({INT_MIN}..{INT_MAX})"
    )


def _parse_float(literal: str) -> float | Unstorable:
    value = float(literal)
    if value and value - value == 0.0 and len(literal) <= 24:
        return value  # nonzero, finite and short: its exponent is within range
    return _odd_float(literal, value)


def _odd_float(literal: str, value: float) -> float | Unstorable:
    if value - value != 0.0:
        return _unstorable(literal, f"is not a finite number: {_FLOAT_RANGE}")
    if len(literal) > MAX_NUMBER_CHARS:
        return _unstorable(
            literal,
            f"has more than {MAX_NUMBER_CHARS} characters (a 64-bit float holds 17 digits)",
        )
    mantissa, _, exponent = literal.lower().partition("e")
    if exponent and abs(int(exponent)) > MAX_EXPONENT:
        return _unstorable(
            literal, f"has an exponent beyond +/-{MAX_EXPONENT}: numbers must fit a 64-bit float"
        )
    if not value and mantissa.strip("-+0.") != "":
        return _unstorable(literal, f"is too small: {_FLOAT_RANGE}")
    return value


def _parse_constant(literal: str) -> Unstorable:
    # NaN and Infinity are not JSON; Python's parser takes them, PostgreSQL's does not.
    return _unstorable(literal, f"is not a finite number: {_FLOAT_RANGE}")


def storable_float(literal: str) -> float:
    """A float literal as a JSON parser hook: its value, or infinity when it is not storable.

    For a parser whose document is re-encoded before :func:`decode` sees it (the HTTP
    collector): infinity re-encodes as ``Infinity``, which :func:`decode` refuses naming the
    field, where a silently rounded ``1e-400`` would have been accepted as ``0.0``.
    """
    value = _parse_float(literal)
    return value if isinstance(value, float) else float("inf")


_DECODER = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant
)


def _safe(text: str) -> str:
    """``text`` fit to print and store: surrogates spelled as ``\\udXXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _find_unstorable(doc: Any) -> tuple[str, str] | None:
    """``(field path, problem)`` of the first value or key PostgreSQL cannot store, if any.

    Iterative (a document may nest as deep as the parser allows), in document order.
    """
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            children = []
            for key, item in value.items():
                where = f"{path}.{_shorten(_safe(key))}" if path else _shorten(_safe(key))
                if _SURROGATE.search(key):
                    return where, "the key holds a lone UTF-16 surrogate (not a Unicode character)"
                children.append((where, item))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(
                (f"{path}.{i}" if path else str(i), item)
                for i, item in reversed(list(enumerate(value)))
            )
        elif isinstance(value, Unstorable):
            return path or "(message)", value.describe()
        elif isinstance(value, str) and (lone := _SURROGATE.search(value)) is not None:
            return path or "(message)", (
                f"holds a lone UTF-16 surrogate {_safe(lone.group())} (not a Unicode character)"
            )
    return None


@dataclass(frozen=True)
class Rejection:
    """Why a message was not accepted. ``error`` names fields as ``field.sub: message``."""

    reason: RejectReason
    error: str
    field: str | None = None


#: Longest key a rejection quotes whole: an unknown key can be as long as the message.
MAX_KEY_SHOWN = 64


def _shorten(part: str) -> str:
    if len(part) <= MAX_KEY_SHOWN:
        return part
    return f"{part[:MAX_KEY_SHOWN]}...({len(part)} characters)"


def describe(exc: ValidationError) -> tuple[str, str | None]:
    """``field: message; ...`` for a pydantic error, and the first offending field."""
    parts = []
    first: str | None = None
    errors = exc.errors(include_url=False)
    for err in errors[:MAX_ERRORS_LISTED]:
        loc = ".".join(_shorten(str(p)) for p in err["loc"]) or "(message)"
        first = first or loc
        parts.append(f"{loc}: {err['msg']}")
    if len(errors) > MAX_ERRORS_LISTED:
        parts.append(f"and {len(errors) - MAX_ERRORS_LISTED} more")
    return "; ".join(parts), first


def _parse(text: str) -> Any:
    """The JSON document, or the rejection saying why ``text`` is not JSON."""
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        return Rejection(
            "invalid_json", f"invalid JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
        )
    except RecursionError:
        return Rejection("invalid_json", "invalid JSON: nested too deeply")
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        return Rejection("invalid_json", f"invalid JSON: {str(exc)[:200]}")


def decode(topic: str, raw: bytes | None, *, max_bytes: int) -> InputEvent | Rejection:
    """Decode one message value of input topic ``topic`` (suffix: events/profiles/outcomes)."""
    model, types = INPUT_MODELS[topic]
    if not raw:
        return Rejection("empty", "message value is empty")
    if len(raw) > max_bytes:
        return Rejection("too_large", f"message is {len(raw)} bytes; the limit is {max_bytes}")
    not_utf8: Rejection | None = None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        not_utf8 = Rejection("invalid_utf8", f"not UTF-8 at byte {exc.start}")
        try:
            # Surrogates encoded as if they were characters (CESU-8, or the collector's
            # ``surrogatepass``): read on, so the rejection can name the field that holds one.
            text = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return not_utf8
    if "\\u0000" in text:
        # Valid JSON, but PostgreSQL text cannot hold NUL: refuse it here, naming the cause.
        return Rejection("schema", "(message): NUL characters (\\u0000) are not allowed")
    flagged = _flagged
    doc = _parse(text)
    if isinstance(doc, Rejection):
        return not_utf8 or doc
    if flagged != _flagged or not_utf8 or _SURROGATE_ESCAPE.search(text):
        found = _find_unstorable(doc)
        if found is not None:
            where, problem = found
            return Rejection("schema", f"{where}: {problem}", where)
        if not_utf8:
            return not_utf8  # the surrogates were not in a string: plainly not UTF-8
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
