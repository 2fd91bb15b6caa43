"""Who calls the lead: its owner, else the next rep with capacity left today (round robin)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def assign(
    owner: str | None,
    reps: Sequence[str],
    load_today: Mapping[str, int],
    capacity: int,
    *,
    cursor: int,
) -> tuple[str | None, int]:
    """Pick the assignee of a new follow-up.

    Args:
        owner: the lead's owner in the CRM; always wins (owners are not capacity-limited: the
            relationship matters more than the queue).
        reps: the reps taking new leads, in round-robin order.
        load_today: follow-ups already assigned to each rep today.
        capacity: the most follow-ups a rep takes per day.
        cursor: where the round robin stands (any int; taken modulo ``len(reps)``).

    Returns:
        ``(assignee, next_cursor)``: the assignee is None when every rep is at capacity (the
        follow-up stays unassigned, in overflow) or there are no reps; ``next_cursor`` points
        just past the rep chosen (unchanged when nobody was).
    """
    if owner is not None:
        return owner, cursor
    count = len(reps)
    for step in range(count):
        i = (cursor + step) % count
        rep = reps[i]
        if load_today.get(rep, 0) < capacity:
            return rep, (i + 1) % count
    return None, cursor
