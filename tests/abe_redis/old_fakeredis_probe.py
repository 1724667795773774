"""Run by test_old_fakeredis.py in a subprocess whose sys.path puts an old fakeredis first."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import fakeredis
from redis.asyncio import BlockingConnectionPool

from abe_redis import RedisConfig, RedisStreamsBackend


async def main() -> None:
    server = fakeredis.FakeServer()

    def backend() -> RedisStreamsBackend:
        client = fakeredis.FakeAsyncRedis(server=server, connection_pool_class=BlockingConnectionPool)
        config = RedisConfig(
            block_ms=200, discovery_interval_ms=100, claim_idle_ms=500, claim_interval_ms=100
        )
        return RedisStreamsBackend(config, client=client)

    publisher = backend()
    for i in range(200):  # a backlog, present before the blocking reads start
        await publisher.publish(f"k{i % 3}", {"i": i})
    seen: dict[int, int] = {}
    done = asyncio.Event()

    async def consume() -> None:
        async for message in backend().consume(group="g"):
            seen[message["i"]] = seen.get(message["i"], 0) + 1
            if len(seen) == 300:
                done.set()

    tasks = [asyncio.create_task(consume()) for _ in range(2)]
    for i in range(200, 300):  # and messages arriving while consumers wait
        await publisher.publish(f"k{i % 3}", {"i": i})
        await asyncio.sleep(0.005)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 20)
    cpu_before_idle = time.process_time()
    await asyncio.sleep(2)  # idle: a spinning consumer would burn CPU here
    idle_cpu = time.process_time() - cpu_before_idle
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"version": fakeredis.__version__, "delivered": sorted(seen), "idle_cpu": idle_cpu}))


asyncio.run(main())
