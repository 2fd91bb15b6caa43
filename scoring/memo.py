"""Memo tables for pure functions of the (immutable) rule set.

Most of what the engine derives from the rules per event is the same for every event: which
fit rule a job title matches, which behaviour rules an event type can match, how far back a
cap window is kept. :func:`memo_for` gives each rule object its own table, so a derived value is
computed once per distinct input instead of once per event.

Tables are keyed by the rule object's identity, not its value: rule models hold lists, so they
are not hashable, and hashing a whole rule set per event would cost what the memo saves. A
table holds a strong reference to its owner, so an id is never reused while its table lives.
Rule sets are treated as values: a changed rule set is a new object (``model_copy``), which
gets new tables. Tables are bounded: a full one is cleared and refilled.
"""

from __future__ import annotations

from typing import Any

#: How many rule objects keep tables at once (a process uses one rule set, a test a few).
MAX_OWNERS = 256
#: How many entries one table keeps before it is cleared (profiles are the largest keys:
#: ~1 KB each, so a table stays within ~10 MB).
MAX_ENTRIES = 10_000

_TABLES: dict[tuple[int, str], tuple[object, dict[Any, Any]]] = {}


def memo_for(owner: object, name: str) -> dict[Any, Any]:
    """The memo table ``name`` of ``owner`` (a rule object), created empty on first use.

    The caller looks values up and stores them itself; a table that reached
    :data:`MAX_ENTRIES` is cleared here first.
    """
    key = (id(owner), name)
    entry = _TABLES.get(key)
    if entry is None:
        if len(_TABLES) >= MAX_OWNERS:
            _TABLES.clear()
        entry = _TABLES[key] = (owner, {})
    table = entry[1]
    if len(table) >= MAX_ENTRIES:
        table.clear()
    return table
