"""How long the broker holds a fetch when a message arrives at a quiet moment.

faust's aiokafka driver fixes ``fetch_max_wait_ms=1500`` for its consumer
(faust/transport/drivers/aiokafka.py). On Kafka a fetch returns as soon as data arrives; this
probe shows what tansu does, which bounds the worker's latency at low load.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from infra.kafka import ensure_topics

TOPIC = "bench.fetch-probe"


async def _probe(kafka_url: str, wait_ms: int, rounds: int) -> float:
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=kafka_url,
        group_id=None,
        auto_offset_reset="latest",
        fetch_max_wait_ms=wait_ms,
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_url)
    await consumer.start()
    await producer.start()
    try:
        await consumer.getmany(timeout_ms=1000)
        delays = []
        for _ in range(rounds):
            await asyncio.sleep(0.37)  # off any multiple of the fetch wait
            sent = time.monotonic()
            await producer.send_and_wait(TOPIC, b"x")
            while not await consumer.getmany(timeout_ms=5000):
                pass
            delays.append((time.monotonic() - sent) * 1000)
        return statistics.median(delays)
    finally:
        await consumer.stop()
        await producer.stop()


async def _measure(kafka_url: str, rounds: int) -> dict[str, float]:
    await ensure_topics(kafka_url, [TOPIC], partitions=1)
    return {str(ms): await _probe(kafka_url, ms, rounds) for ms in (1500, 500)}


def run_fetch_probe(kafka_url: str, rounds: int = 8) -> dict[str, float]:
    """Median produce -> consume delay (ms) of a lone message, by ``fetch_max_wait_ms``."""
    return asyncio.run(_measure(kafka_url, rounds))
