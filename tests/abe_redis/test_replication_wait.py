"""``REDIS_WAIT_REPLICAS`` on a Redis Cluster: the WAIT counts the replicas of the stream's own
master, for the publish's own writes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from redis.asyncio.cluster import RedisCluster

from abe_redis import RedisStreamsBackend, ReplicationTimeoutError
from abe_redis_testing.servers import RedisClusterHandle, RedisServer


@contextmanager
def stalled(node: RedisServer) -> Iterator[None]:
    assert node.pid is not None
    os.kill(node.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(node.pid, signal.SIGCONT)


async def test_a_cluster_publish_waits_for_the_replica_of_its_own_master(
    redis_cluster: RedisClusterHandle,
) -> None:
    backend = RedisStreamsBackend.from_url(redis_cluster.url, wait_replicas=1, wait_timeout_ms=300)
    try:
        await backend.publish("orders", {"n": 1})  # confirmed: the replica is healthy
        found = await backend.client.keys("orders*", target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
        (key,) = [k.decode() for k in found]  # the stream, under the name the backend stores it
        master = redis_cluster.master_for(key)
        (replica,) = redis_cluster.replicas_of(master)
        # The other shards' replicas are healthy: a WAIT sent to every master and summed (what a
        # cluster client does with a keyless WAIT) would count them and return at once.
        with stalled(replica), pytest.raises(ReplicationTimeoutError) as caught:
            await backend.publish("orders", {"n": 2})
        assert caught.value.acknowledged == 0
        await backend.publish("orders", {"n": 3})  # the replica caught up: confirmed again
        assert await backend.client.xlen(key) == 3  # the unconfirmed write is there all the same
    finally:
        await backend.aclose()
