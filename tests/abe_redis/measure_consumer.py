"""Figures quoted in docs/production.md, on a redis-server and a valkey-server of their own:

    .venv/bin/python -m tests.abe_redis.measure_consumer

* eight 100 ms handlers with concurrency 8 and 1 (first start to last end);
* acknowledged-aware trimming of 200,000 entries of which one group acknowledged 150,000;
* 1,000 publishes with REDIS_STREAM_MAXLEN=100 and a group that reads nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from abe_redis import InMemoryMetrics, ReceivedMessage, RedisConsumer, RedisStreamsBackend
from abe_redis._retention import Retention
from abe_redis_testing._timings import FAST_SETTINGS
from abe_redis_testing.servers import RedisServer, find_binary


async def eight_handlers(backend: RedisStreamsBackend, concurrency: int) -> float:
    for n in range(8):
        await backend.publish("c8", {"n": n})
    done = asyncio.Event()
    starts: list[float] = []
    ends: list[float] = []

    async def handler(message: ReceivedMessage) -> None:
        starts.append(time.monotonic())
        await asyncio.sleep(0.1)
        ends.append(time.monotonic())
        if len(ends) == 8:
            done.set()

    consumer = RedisConsumer(backend, group="g", concurrency=concurrency, handle_signals=False)
    task = asyncio.create_task(consumer.run(handler))
    await done.wait()
    await consumer.shutdown()
    await task
    return max(ends) - min(starts)


async def concurrency(url: str) -> None:
    async with RedisStreamsBackend.from_url(url, **FAST_SETTINGS) as backend:
        for concurrent in (8, 1):
            took = await eight_handlers(backend, concurrent)
            print(f"  concurrency={concurrent}: eight 100 ms handlers in {took:.3f} s")


async def retention(url: str) -> None:
    async with RedisStreamsBackend.from_url(url, **FAST_SETTINGS) as backend:
        client: Any = backend.client
        await client.xgroup_create("big", "g", id="0", mkstream=True)
        payload = '{"id": 12345, "kind": "order", "ok": true}'
        for _ in range(20):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(10_000):
                    pipe.xadd("big", {"payload": payload})
                await pipe.execute()
        before = await client.memory_usage("big", samples=0)
        acked = 0
        while acked < 150_000:
            reply = await client.xreadgroup("g", "reader", {"big": ">"}, count=10_000)
            ids = [entry_id for entry_id, _ in reply[0][1]]
            await client.xack("big", "g", *ids)
            acked += len(ids)
        trimmer = Retention(client, backend.config)
        started = time.perf_counter()
        result = await trimmer.trim("big")
        took = time.perf_counter() - started
        after = await client.memory_usage("big", samples=0)
        started = time.perf_counter()
        await trimmer.trim("big")
        idle = time.perf_counter() - started
        print(
            f"  200,000 entries ({before / 1e6:.1f} MB), 150,000 acknowledged: removed {result.trimmed} "
            f"in {took * 1000:.1f} ms, {after / 1e6:.1f} MB left; a pass with nothing to trim "
            f"{idle * 1000:.2f} ms; XTRIM ACKED on this server: {trimmer.server_acked_trim}"
        )
    async with RedisStreamsBackend.from_url(url, stream_maxlen=100) as capped:
        metrics = InMemoryMetrics()
        capped.metrics = metrics
        await capped.client.xgroup_create("cap", "g", id="0", mkstream=True)
        for n in range(1000):
            await capped.publish("cap", {"n": n})
        print(
            f"  1,000 publishes, REDIS_STREAM_MAXLEN=100, a group reading nothing: "
            f"{await capped.client.xlen('cap')} left, {metrics.total('trimmed_unread'):.0f} counted "
            "and logged as dropped unread"
        )


def main() -> None:
    logging.disable(logging.WARNING)  # the cap's warnings are the point, but not on screen here
    for kind in ("redis-server", "valkey"):
        with RedisServer(find_binary(kind), kind=kind) as server:
            print(kind)
            asyncio.run(concurrency(server.url))
            asyncio.run(retention(server.url))


if __name__ == "__main__":
    main()
