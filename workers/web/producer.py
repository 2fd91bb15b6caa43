"""Hands HTTP input to Kafka and says so only once the broker acknowledged every record."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from infra.broker import metadata_ok


class BrokerUnavailable(Exception):
    """The broker did not acknowledge in time: nothing may be reported as accepted."""


class EdgeProducer:
    """The web server's own producer, so an HTTP request never waits behind the worker's batches.

    ``request_timeout_ms`` equals the publish timeout: a record the broker did not take in that
    time expires in the producer instead of leaving later, after the client was told 503.
    """

    def __init__(self, bootstrap: str, *, timeout: float) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=2,
            request_timeout_ms=int(self.timeout * 1000),
            retry_backoff_ms=100,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def send_all(self, records: Sequence[tuple[str, bytes | None, bytes]]) -> None:
        """Publish ``(topic, key, value)`` records; raise BrokerUnavailable unless all acked."""
        if self._producer is None:
            raise BrokerUnavailable("the producer is not running")
        producer = self._producer

        async def send() -> None:
            futures = [await producer.send(t, v, key=k) for t, k, v in records]
            await asyncio.gather(*futures)

        try:
            await asyncio.wait_for(send(), timeout=self.timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
            raise BrokerUnavailable(f"broker did not acknowledge: {exc!r}") from exc

    async def reachable(self) -> bool:
        """True when some bootstrap server answers a Kafka metadata request."""
        for host_port in self.bootstrap.split(","):
            host, _, port = host_port.strip().removeprefix("kafka://").rpartition(":")
            if (
                host
                and port.isdigit()
                and await asyncio.to_thread(metadata_ok, host, int(port), 1.0)
            ):
                return True
        return False
