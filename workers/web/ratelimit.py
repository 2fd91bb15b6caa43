"""Per-client token buckets (collector, sales endpoints, bad credentials): pure, the time passed
in (monotonic seconds).

A client may send ``burst`` requests at once and ``rate`` a second sustained. Each bucket holds
``tokens`` as of ``stamp``; a request refills it by the time passed (up to ``burst``) and then
spends one token, or is refused with the seconds until one will be there.

Memory is bounded twice over:

- a bucket left alone for ``burst / rate`` seconds has refilled completely, and a full bucket
  is what a client never seen gets, so it carries no information and is dropped (buckets are
  kept in the order they were last used, so the idle ones are at the front: O(1) a request);
- at most ``max_clients`` buckets are kept. A new client past the cap drops the least recently
  seen one, which starts again from a full bucket if it comes back: its first request back is
  admitted, whatever its old bucket held. From there its bucket runs on its own, so for a while
  it can be refused up to one token's time before the old bucket would have been (and admitted
  where that would not): the price of bounded memory, paid only by clients dropped at the cap
  (tests/unit/test_ratelimit.py has the case hypothesis found).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable

#: Buckets kept at most (one costs ~320 bytes with a (site, IPv4) key: ~16 MB at the cap).
MAX_CLIENTS = 50_000
#: Float sums of refills are not exact: a token that is 1e-9 short counts as there.
_EPSILON = 1e-9


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """Token buckets keyed by client: ``rate`` tokens a second, ``burst`` at most."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_clients: int = MAX_CLIENTS,
        group: Callable[[Hashable], Hashable] | None = None,
    ) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("a rate limit needs rate > 0, burst >= 1 and max_clients >= 1")
        #: Maps a client to the key its bucket is kept under (e.g. an IPv6 address to its /64).
        self.group = group
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        #: Seconds an empty bucket takes to fill: idle this long, a bucket is forgotten.
        self.refill_seconds = burst / rate
        self.evicted = 0  # clients dropped because the cap was reached
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, client: Hashable) -> bool:
        """Whether ``client`` has a bucket (one never seen, forgotten or evicted has none)."""
        return (self.group(client) if self.group is not None else client) in self._buckets

    def take(self, client: Hashable, now: float) -> float:
        """Spend one of ``client``'s tokens at ``now``.

        Returns 0.0 when the request may go ahead, else the seconds until a token is available
        (nothing is spent then: a refused request does not push the client further back).
        """
        bucket = self._bucket(client, now)
        if bucket.tokens >= 1 - _EPSILON:
            bucket.tokens = max(bucket.tokens - 1, 0.0)
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def wait(self, client: Hashable, now: float) -> float:
        """The seconds until ``client`` has a token at ``now`` (0.0: it has one); spends none.

        For limits that charge only some outcomes (a bad token): ask first, ``take`` after.
        """
        if self.group is not None:
            client = self.group(client)
        bucket = self._buckets.get(client)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket.tokens + max(0.0, now - bucket.stamp) * self.rate)
        return 0.0 if tokens >= 1 - _EPSILON else (1 - tokens) / self.rate

    def _bucket(self, client: Hashable, now: float) -> _Bucket:
        if self.group is not None:
            client = self.group(client)
        self._forget_idle(now)
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._buckets.popitem(last=False)  # the least recently seen client
                self.evicted += 1
            bucket = self._buckets[client] = _Bucket(float(self.burst), now)
        else:
            if now > bucket.stamp:
                bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
                bucket.stamp = now
            self._buckets.move_to_end(client)
        return bucket

    def _forget_idle(self, now: float) -> None:
        # Stamps grow from the front to the back (every use moves a bucket to the back).
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if now - oldest.stamp < self.refill_seconds:
                return
            self._buckets.popitem(last=False)


def retry_after(wait: float) -> int:
    """Whole seconds for a ``Retry-After`` header: ``wait`` rounded up, at least 1."""
    return max(1, math.ceil(wait))
