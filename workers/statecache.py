"""The per-worker cache of decoded lead states (docs/architecture.md, "The state cache")."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from scoring.state import LeadState


class StateCache:
    """Decoded working states of the leads this worker wrote last, valid by row version.

    A lead touched in consecutive batches is not decoded again: its row's version (``xmin``)
    still being the one this worker wrote proves nobody else changed it. Bounded (least
    recently used first out). A batch *takes* its states out (it changes them in place) and
    puts them back only once its transaction has committed, so a failed batch leaves nothing
    half-applied behind.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[str, LeadState]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def versions(self, lead_ids: Iterable[str]) -> dict[str, str]:
        items = self._items
        return {k: items[k][0] for k in lead_ids if k in items}

    def take(self, lead_id: str, version: str) -> LeadState | None:
        found = self._items.pop(lead_id, None)
        if found is None or found[0] != version:
            self.misses += 1
            return None
        self.hits += 1
        return found[1]

    def put(self, states: Mapping[str, tuple[str, LeadState]]) -> None:
        if self.size <= 0:
            return
        items = self._items
        for lead_id, entry in states.items():
            items[lead_id] = entry
            items.move_to_end(lead_id)
        while len(items) > self.size:
            items.popitem(last=False)
