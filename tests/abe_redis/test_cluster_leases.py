"""Lease commands of a Redis Cluster consumer: never resent, and waiting for a connection.

On one server a consumer sends its lease renewals and releases over connections that never
resend (``_connection.unresent_client``): redis-py resends a command whose reply was lost once it
has reconnected, and a renewal (``XCLAIM`` with min-idle 0) sent late steals back an entry a peer
rightly claimed meanwhile. A cluster consumer shares one such client between its partitions'
readers (``_cluster_reader._UnresentLeases``); these tests run it on a real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ConnectionError as RedisConnectionError

from abe_redis import RedisStreamsBackend
from abe_redis._cluster_reader import ClusterReader
from abe_redis_testing.servers import RedisClusterHandle


@contextlib.asynccontextmanager
async def _backend(url: str, **overrides: Any) -> AsyncIterator[RedisStreamsBackend]:
    settings = {"block_ms": 200, "discovery_interval_ms": 100, **overrides}
    backend = RedisStreamsBackend.from_url(url, **settings)
    try:
        yield backend
    finally:
        await backend.aclose()


def _renews(commands: Any, stream: str) -> bool:
    """Whether a pipeline renews a lease of ``stream``: ``XCLAIM <stream> <group> <consumer> 0
    <ids…> JUSTID``, without the ``IDLE`` of a release."""
    return any(
        cmd.args[0] == "XCLAIM" and cmd.args[1] == stream and cmd.args[4] == "0" and "IDLE" not in cmd.args
        for cmd in commands
    )


@pytest.mark.parametrize("loss", ["raised", "returned"])
async def test_a_cluster_lease_renewal_whose_reply_was_lost_is_verified_not_resent(
    redis_cluster: RedisClusterHandle, monkeypatch: pytest.MonkeyPatch, loss: str
) -> None:
    """The renewal runs on its master and its reply is lost: the connection fails as the request
    is written (redis-py's cluster pipeline raises, and a retrying client sends it all again), or
    while the reply is read (it returns the error as the command's result). Either way the lease
    must be sent once, marked unsure, and verified before anything else is sent for it, so that a
    peer's rightful claim meanwhile stands."""
    # claim_idle_ms 30 s: the background renewal runs every 10 s, after the test; it renews by hand.
    async with _backend(redis_cluster.url, claim_idle_ms=30_000) as backend:
        await backend.publish("jobs", {"job": 1})
        reader = backend.group_reader("g")
        assert isinstance(reader, ClusterReader)
        try:
            message = await asyncio.wait_for(reader.receive(), 10)
            stream, entry_id = message.stream, message.message_id
            leases = reader._reader(message)._leases
            assert leases is not None and leases.holds(stream, entry_id)

            sent: list[bool] = []
            original = ClusterNode.execute_pipeline

            async def reply_lost(self: ClusterNode, commands: Any) -> bool:
                failed = await original(self, commands)
                if not _renews(commands, stream):
                    return failed
                sent.append(True)
                if len(sent) > 1:
                    return failed
                lost = RedisConnectionError("simulated: reply lost after the command ran")
                if loss == "raised":
                    raise lost
                for cmd in commands:
                    cmd.result = lost
                return True

            monkeypatch.setattr(ClusterNode, "execute_pipeline", reply_lost)
            with pytest.raises(RedisConnectionError):
                await leases.refresh()
            assert sent == [True], "the renewal was sent again after its reply was lost"
            assert leases.stale(stream), "a renewal of unknown outcome must be verified next"

            client: Any = backend.client
            # The peer claims it, rightly had it looked idle: the next refresh must not take it back.
            assert await client.xclaim(stream, "g", "peer", 0, [entry_id], justid=True) == [entry_id.encode()]
            assert await leases.refresh() == [(stream, entry_id)]
            assert not leases.holds(stream, entry_id)
            [pending] = await client.xpending_range(stream, "g", min="-", max="+", count=10)
            assert pending["consumer"] == b"peer"
            assert sent == [True], "the verification renewed nothing: the entry is the peer's"
        finally:
            await reader.aclose()


async def test_lease_commands_wait_for_a_connection_instead_of_failing(
    redis_cluster: RedisClusterHandle,
) -> None:
    """redis-py's cluster client fails a command past a node's connection limit at once
    (``MaxConnectionsError``) rather than wait, as a single server's blocking pool does: the
    lease client lets callers wait their turn instead."""
    from abe_redis._cluster_reader import _UnresentLeases
    from abe_redis._connection import dedicated_cluster_client

    async with _backend(redis_cluster.url) as backend:
        stream = backend.stream_name("jobs")
        await backend.publish("jobs", {"job": 1})
        client: Any = backend.client
        await client.xgroup_create(stream, "g", id="0")
        [[_, [(entry_id, _)]]] = await client.xreadgroup("g", "mine", {stream: ">"}, count=1)
        one = dedicated_cluster_client(backend.config, connections=1)
        try:
            leases = _UnresentLeases(one, connections=1)

            async def renew() -> list[Any]:
                async with leases.pipeline(transaction=False) as pipe:
                    pipe.xclaim(stream, "g", "mine", 0, [entry_id], justid=True)
                    return await pipe.execute(raise_on_error=False)

            replies = await asyncio.gather(
                *(renew() for _ in range(8)),
                *(leases.xclaim(stream, "g", "mine", 0, [entry_id], justid=True) for _ in range(8)),
            )
        finally:
            await one.aclose()
    assert replies == [[[entry_id]]] * 8 + [[entry_id]] * 8
