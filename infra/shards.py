"""Which worker owns a lead: shards, their owners, and the locks that fence a hand-over.

A subject (lead, ``email:<address>`` lead or ``anon:<visitor>``) belongs to one *shard*: the
input partition its producers' key maps to under Kafka's default partitioner (murmur2 of the
lead id, or of the visitor id for ``anon:`` subjects). The worker that owns partition ``i`` of
the input topics (a range assignment gives one member partition ``i`` of every input topic)
owns shard ``i``: it alone reads and writes the state of that shard's subjects, so batches of
different workers never wait for each other and never score a subject twice. Work for a
subject of another shard is forwarded through the ``inbox`` table (infra/inbox.py).

Each batch transaction takes a transaction-scoped advisory lock per shard it owns: in steady
state nobody else holds them (no wait); during a hand-over (a rebalance, a worker evicted while
its batch still runs) they make the new owner wait for the old owner's last transaction, and
an operator's sweep or replay takes them too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import asyncpg
from aiokafka.partitioner import murmur2

ANON_PREFIX = "anon:"
#: Advisory-lock keys of shards: this base + the shard number.
SHARD_LOCK_BASE = 0x1EAD_0000_0000
#: Every batch holds this key shared; a writer of any shard's leads (the sweep, the retention
#: purge) takes it exclusively, and waits for the batches in flight instead of racing them.
WORLD_LOCK = SHARD_LOCK_BASE - 1


@lru_cache(maxsize=1 << 16)  # a batch asks about the same subjects several times
def shard_of(subject: str, partitions: int) -> int:
    """The shard of ``subject``: the partition Kafka's default partitioner gives its key."""
    key = subject.removeprefix(ANON_PREFIX)
    return int(murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


@dataclass
class Shards:
    """The shards this process owns now (``owned`` None: all of them, for a process that works
    alone: tests, the operator's commands)."""

    partitions: int
    owned: frozenset[int] | None = None

    def mine(self) -> frozenset[int]:
        return frozenset(range(self.partitions)) if self.owned is None else self.owned

    def owns(self, subject: str) -> bool:
        return self.owned is None or shard_of(subject, self.partitions) in self.owned

    def shard(self, subject: str) -> int:
        return shard_of(subject, self.partitions)

    def assign(self, owned: Iterable[int], partitions: int | None = None) -> None:
        if partitions is not None:
            self.partitions = partitions
        self.owned = frozenset(owned)


async def lock_shards(conn: asyncpg.Connection, shards: Iterable[int]) -> None:
    """Take the shards' advisory locks for this transaction, in ascending order (after the
    world lock, shared)."""
    keys = sorted({SHARD_LOCK_BASE + s for s in shards})
    await conn.execute(
        """SELECT pg_advisory_xact_lock_shared($1::bigint),
                  (SELECT count(pg_advisory_xact_lock(k)) FROM unnest($2::bigint[]) AS k)""",
        WORLD_LOCK,
        keys,
    )


async def lock_world(conn: asyncpg.Connection) -> None:
    """Every shard for this transaction: waits for the batches in flight, holds off the next."""
    await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", WORLD_LOCK)
