"""Idle cost does not grow with the number of streams: 10,000 quiet streams, default settings.

Measured on a server of the test's own, so every command counted is the consumer's. These are
cost bounds with wide margins (commands are counted, CPU is process time, not wall time), not
speed benchmarks.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

from abe_redis import RedisStreamsBackend
from abe_redis_testing.servers import RedisServer

from .helpers import take

STREAMS = 10_000


async def _commands_processed(client: Any) -> int:
    return int((await client.info("stats"))["total_commands_processed"])


async def test_ten_thousand_idle_streams_cost_little_and_deliver_promptly(
    redis_server_handle: RedisServer,
) -> None:
    url = redis_server_handle.url
    setup = RedisStreamsBackend.from_url(url)
    client: Any = setup.client
    names = [f"quiet-{i}" for i in range(STREAMS)]
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.xadd(name, {"payload": b'{"warm": true}'})
        pipe.sadd(setup.config.registry_key, *names)
        await pipe.execute()
    consumer_backend = RedisStreamsBackend.from_url(url)  # defaults: block 1 s, claim idle 30 s
    stream = consumer_backend.consume(group="g")
    pulled: list[Any] = []
    try:
        pulled += await take(stream, STREAMS, wait_s=60)  # the backlog, then idle

        pulling = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(2.0)  # settle: discovery, first sweeps, the blocking wait
        window = 5.0
        commands_before = await _commands_processed(client)
        cpu_before = time.process_time()
        await asyncio.sleep(window)
        cpu = time.process_time() - cpu_before
        commands = await _commands_processed(client) - commands_before - 1  # minus our INFO
        assert not pulling.done()

        latencies = []
        rng = random.Random(7)
        for n in range(9):
            started = time.monotonic()
            await setup.publish(rng.choice(names), {"n": n})
            message = await asyncio.wait_for(pulling, 5) if n == 0 else await take(stream, 1)
            message = message[0] if isinstance(message, list) else message
            latencies.append(time.monotonic() - started)
            assert message["n"] == n
            await asyncio.sleep(0.2)  # back to waiting
    finally:
        await stream.aclose()
        await consumer_backend.aclose()
        await setup.aclose()
    print(
        f"idle over {STREAMS} streams: {commands / window:.1f} commands/s, {cpu / window:.1%} CPU; "
        f"new message p50 {statistics.median(latencies) * 1000:.0f} ms"
    )
    assert commands / window <= 200
    assert cpu / window <= 0.10
    assert statistics.median(latencies) <= 0.25
