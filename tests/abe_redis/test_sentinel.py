"""The backend on a Sentinel-watched master: it follows a failover, and WAIT on request."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.exceptions import RedisError, ResponseError

from abe_redis import ConfigurationError, RedisConfig, RedisStreamsBackend, ReplicationTimeoutError
from abe_redis_testing._sentinel import RedisSentinelHandle

from .helpers import take

FAST = {"block_ms": 100, "discovery_interval_ms": 100, "claim_interval_ms": 100, "claim_idle_ms": 1000}


async def test_publish_and_consume_continue_after_a_failover(redis_sentinel: RedisSentinelHandle) -> None:
    backend = RedisStreamsBackend.from_url(redis_sentinel.url, wait_replicas=1, wait_timeout_ms=2000, **FAST)
    consumer = RedisStreamsBackend.from_url(redis_sentinel.url, **FAST)
    stream = consumer.consume(group="g")
    try:
        for n in range(5):
            await backend.publish("ha", {"n": n})  # each confirmed by the replica (WAIT 1)
        assert [m["n"] for m in await take(stream, 5)] == list(range(5))
        old_master = redis_sentinel.master.port
        await asyncio.to_thread(redis_sentinel.failover)
        assert redis_sentinel.master.port != old_master
        published = 0
        for n in range(5, 10):
            for _ in range(100):  # the new master may take a moment to accept writes
                try:
                    await backend.publish("ha", {"n": n})
                    published += 1
                    break
                except (RedisError, ReplicationTimeoutError) as exc:
                    # Until the sentinels agree, writes may reach the demoted master (READONLY),
                    # a closed connection, or a new master whose replica is not attached yet.
                    if isinstance(exc, ResponseError) and "READONLY" not in str(exc):
                        raise
                    await asyncio.sleep(0.1)
        assert published == 5
        got = {m["n"] for m in await take(stream, 5, wait_s=30)}
        # Everything the replica had confirmed (WAIT 1) before the failover survived it.
        survived = [json.loads(fields[b"payload"])["n"] for _, fields in await backend.client.xrange("ha")]
    finally:
        await stream.aclose()
        await consumer.aclose()
        await backend.aclose()
    assert got == set(range(5, 10))
    assert survived == list(range(10))


async def test_wait_replicas_reports_a_write_no_replica_confirmed(
    redis_sentinel: RedisSentinelHandle,
) -> None:
    wanted = len(redis_sentinel.replicas) + 1  # more replicas than there are
    backend = RedisStreamsBackend.from_url(redis_sentinel.url, wait_replicas=wanted, wait_timeout_ms=200)
    try:
        with pytest.raises(ReplicationTimeoutError) as caught:
            await backend.publish("lonely", {"n": 1})
        assert caught.value.acknowledged < wanted
        assert await backend.client.xlen("lonely") == 1  # written on the master all the same
    finally:
        await backend.aclose()


def test_sentinel_and_cluster_urls_are_validated() -> None:
    assert RedisConfig(url="redis+sentinel://h1:26379,h2:26379/mymaster/2").topology == "sentinel"
    assert RedisConfig(url="redis+cluster://h1:7000,h2:7001").topology == "cluster"
    assert RedisConfig(url="redis://h:7000", cluster=True).topology == "cluster"
    with pytest.raises(ConfigurationError, match="names no master"):
        RedisConfig(url="redis+sentinel://h1:26379")
    with pytest.raises(ConfigurationError, match="REDIS_CLUSTER=true needs"):
        RedisConfig(url="unix:///tmp/r.sock", cluster=True)
    config = RedisConfig.from_env({"REDIS_SENTINEL_PASSWORD": "s3cret", "REDIS_URL": "redis+sentinel://h/m"})
    assert "s3cret" not in repr(config)


async def test_a_cluster_consumer_with_less_prefetch_than_partitions_is_refused() -> None:
    # Consumers read a cluster (tests/abe_redis/test_cluster.py), each partition with room for one.
    backend = RedisStreamsBackend.from_url("redis+cluster://127.0.0.1:1", prefetch=4)
    try:
        with pytest.raises(ConfigurationError, match=r"REDIS_PREFETCH.*at least the number of partitions"):
            backend.consume()
    finally:
        await backend.aclose()


async def test_callers_beyond_max_connections_wait_for_a_connection(
    redis_sentinel: RedisSentinelHandle,
) -> None:
    # redis-py's Sentinel pool raises MaxConnectionsError instead: a burst of publishes then lost
    # their registry updates ("could not add it to the stream registry (Too many connections)").
    backend = RedisStreamsBackend.from_url(redis_sentinel.url, max_connections=2, pool_timeout=10)
    try:
        await asyncio.gather(*(backend.client.xlen("burst") for _ in range(50)))
        await asyncio.gather(*(backend.publish(f"burst-{n % 10}", {"n": n}) for n in range(200)))
        registered = await backend.client.smembers(backend.config.registry_key)
        assert {name.decode() for name in registered} == {f"burst-{n}" for n in range(10)}
        pool = backend.client.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 2
    finally:
        await backend.aclose()
