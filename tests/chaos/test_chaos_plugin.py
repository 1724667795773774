"""The proxied_redis fixture: a real Redis behind a proxy, backends through it, faults that bite."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio

from abe_redis import RedisStreamsBackend
from abe_redis_testing._plugin_proxied_redis import ProxiedRedis


async def _next(backend: RedisStreamsBackend) -> dict[str, object]:
    consumer = backend.consume()
    try:
        async with asyncio.timeout(10.0):
            message = await anext(consumer)
        await backend.ack(message)
        return dict(message)
    finally:
        await consumer.aclose()


async def test_backend_goes_through_the_proxy_with_short_timeouts(proxied_redis: ProxiedRedis) -> None:
    assert proxied_redis.url != proxied_redis.direct_url
    assert f":{proxied_redis.proxy.listen_port}/" in proxied_redis.url
    config = proxied_redis.backend.config
    assert config.socket_timeout == 2.0 and config.block_ms == 300 and config.claim_idle_ms == 1000
    await proxied_redis.backend.publish("orders", {"id": 1})
    assert await _next(proxied_redis.new_backend()) == {"id": 1}


async def test_proxy_down_cuts_the_backend_off_and_it_recovers(proxied_redis: ProxiedRedis) -> None:
    backend = proxied_redis.new_backend(retry_attempts=0)
    await backend.publish("orders", {"id": 1})
    with proxied_redis.proxy.down():
        with pytest.raises(redis.ConnectionError):
            async with asyncio.timeout(10):
                await backend.publish("orders", {"id": 2})
        # Redis itself is fine: the fault is only between the backend and the server.
        await proxied_redis.direct_backend().publish("orders", {"id": 3})
    await backend.publish("orders", {"id": 4})
    direct = redis.asyncio.Redis.from_url(proxied_redis.direct_url)
    try:
        entries: Any = await direct.xrange("orders")
    finally:
        await direct.aclose()
    assert [e[1][b"payload"] for e in entries] == [b'{"id":1}', b'{"id":3}', b'{"id":4}']


def test_block_ms_must_stay_below_the_socket_timeout(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        async def test_uses_it(proxied_redis):
            pass
        """
    )
    result = pytester.runpytest_inprocess(
        "-p",
        "abe_redis_testing._plugin_proxied_redis",
        "-p",
        "no:valkey",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "--abe-redis-chaos-block-ms=3000",
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*chaos-block-ms (3000 ms) must be below*chaos-socket-timeout (2.0 s)*"])


async def test_the_documented_outage_example_holds(proxied_redis: ProxiedRedis) -> None:
    """docs/chaos.md's example, verbatim in substance: returned publishes arrive, failed ones raise."""
    producer = proxied_redis.new_backend(retry_attempts=0)
    consumer = proxied_redis.new_backend()
    received: list[int] = []
    published: list[int] = []
    all_in = asyncio.Event()

    def check() -> None:
        if len(published) == 10 and set(published) <= set(received):
            all_in.set()

    async def handle() -> None:
        async for message in consumer.consume():
            received.append(message["id"])
            check()

    task = asyncio.create_task(handle())
    failed = 0
    try:
        with proxied_redis.proxy.down():
            for i in range(10):
                try:
                    await producer.publish("orders", {"id": i})
                    published.append(i)
                except redis.ConnectionError:
                    failed += 1
        for i in range(10, 20):
            await producer.publish("orders", {"id": i})
            published.append(i)
        check()  # the last delivery may have come before the last publish returned
        async with asyncio.timeout(15):  # a bound, not a sleep
            await all_in.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert failed == 10  # the proxy refused every connection
    assert sorted(set(received)) == list(range(10, 20))
