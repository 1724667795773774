"""Consuming from a Redis Cluster: 3 masters + 3 replicas of redis-server, started on loopback.

Streams and the backend's own keys are spread over partitions pinned to hash slots (see
``abe_redis._partitions``); each partition runs the single-server engine. These tests check that
the spread is real, that no command is refused as cross-slot, that delivery stays at-least-once
with the prefetch bound, across a failed-over master, and that the idle cost does not grow with
the number of streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from redis.crc import key_slot

from abe_redis import RedisStreamsBackend
from abe_redis._partitions import Partitions, partition_of, partition_tags
from abe_redis._topology import CLUSTER_SLOTS
from abe_redis_testing.servers import RedisClusterHandle

from .helpers import take

FAST = {
    "block_ms": 200,
    "discovery_interval_ms": 100,
    "claim_idle_ms": 1000,
    "claim_interval_ms": 200,
}


@contextlib.asynccontextmanager
async def _backend(url: str, **overrides: Any) -> AsyncIterator[RedisStreamsBackend]:
    backend = RedisStreamsBackend.from_url(url, **{**FAST, **overrides})
    try:
        yield backend
    finally:
        await backend.aclose()


async def _drain(stream: AsyncGenerator[Any], into: list[Any], stop: asyncio.Event) -> None:
    while not stop.is_set():
        into.append(await anext(stream))


# -- key placement, no server ------------------------------------------------------------------


def test_partition_tags_spread_evenly_over_the_slots() -> None:
    for count in (1, 3, 16, 64):
        tags = partition_tags(count)
        slots = [key_slot(tag.encode()) for tag in tags]
        for index, slot in enumerate(slots):
            assert index * CLUSTER_SLOTS // count <= slot < (index + 1) * CLUSTER_SLOTS // count
        assert len(set(tags)) == count


def test_a_stream_and_its_partition_keys_share_one_slot() -> None:
    from abe_redis import RedisConfig

    config = RedisConfig(url="redis+cluster://127.0.0.1:7000", key_prefix="app:abe:")
    layout = Partitions(config)
    for key in ("orders", "app:payments", "k-17", "ünïcode"):
        stream = layout.stream(key)
        assert stream.startswith(key), "the user's name stays in front, for ACL key patterns"
        partition = layout.partition(stream)
        assert partition.index == partition_of(key, 16)
        keys = partition.config.keys
        own = [
            keys.registry,
            keys.registry_version,
            keys.retired,
            keys.notifications,
            keys.consumers("g"),
            keys.consumer_lock("g", "c"),
            keys.holdings("g", "c"),
            partition.config.dead_letter_stream(stream),
        ]
        assert {key_slot(k.encode()) for k in [stream, *own]} == {key_slot(stream.encode())}
        assert all(k.startswith("app:abe:") for k in own[:-1]), "every own key under the prefix"
        assert layout.stream(stream) == stream and layout.key(stream) == key


def test_keys_with_braces_are_refused_in_a_cluster() -> None:
    from abe_redis import InvalidKeyError, RedisConfig

    layout = Partitions(RedisConfig(url="redis+cluster://127.0.0.1:7000"))
    with pytest.raises(InvalidKeyError, match="hash tag"):
        layout.stream("orders{eu}")


# -- on a real cluster ---------------------------------------------------------------------------


async def test_streams_spread_over_every_master_and_two_consumers_share_them(
    redis_cluster: RedisClusterHandle,
) -> None:
    keys = [f"orders:{i}" for i in range(40)]
    async with _backend(redis_cluster.url) as publisher:
        for round_ in range(5):
            for key in keys:
                await publisher.publish(key, {"key": key, "n": round_})
        streams = [publisher.stream_name(k) for k in keys]
        owners = Counter(redis_cluster.master_for(s).port for s in streams)
        print(f"streams per master: {dict(owners)}")
        assert len(owners) == 3, "the streams must land on every master"
        assert min(owners.values()) >= 5

        async with _backend(redis_cluster.url) as a, _backend(redis_cluster.url) as b:
            got_a: list[Any] = []
            got_b: list[Any] = []
            stop = asyncio.Event()
            ca, cb = a.consume(group="g"), b.consume(group="g")
            tasks = [
                asyncio.create_task(_drain(ca, got_a, stop)),
                asyncio.create_task(_drain(cb, got_b, stop)),
            ]
            try:
                for _ in range(200):
                    if len(got_a) + len(got_b) >= 200:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # anything extra would be a duplicate
            finally:
                stop.set()
                for task in tasks:
                    task.cancel()
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
                failures = [o for o in outcomes if not isinstance(o, asyncio.CancelledError | None)]
                assert not failures, f"a consumer failed: {failures!r}"
                await ca.aclose()
                await cb.aclose()
    seen = Counter((m["key"], m["n"]) for m in got_a + got_b)
    assert len(seen) == 200, f"lost {200 - len(seen)}"
    assert max(seen.values()) == 1, "no duplicates"
    assert got_a and got_b, "both consumers got a share"
    assert {m.stream for m in got_a + got_b} == set(streams)
