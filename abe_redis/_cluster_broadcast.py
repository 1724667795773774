"""Broadcast consumers on a Redis Cluster: one :class:`~abe_redis._broadcast.BroadcastReader` per
partition (see :mod:`abe_redis._partitions`), their messages merged.

Each partition's reader waits with one ``XREAD`` on the partition's streams and notification
stream, which share a slot; the readers share a cluster client of the consumer's own, with a
connection per partition for the blocking waits. Nothing is acknowledged in broadcast mode, so a
partition that fails over or moves only pauses its reader (it backs off and reads again).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from ._broadcast import BroadcastReader
from ._cluster_reader import CLUSTER_TRANSIENT_ERRORS
from ._connection import close_client, dedicated_cluster_client
from ._delivery import Throttle, wait_out
from ._message import ReceivedMessage
from ._partitions import Partitions
from ._registry import StreamRegistry


class _PartitionBroadcast(BroadcastReader):
    """A partition's broadcast reader, waiting on the consumer's shared cluster client."""

    def __init__(self, client: Any, reader: Any, config: Any, *, registry: StreamRegistry) -> None:
        super().__init__(client, config, registry=registry)
        self._reader = reader

    async def messages(self) -> AsyncGenerator[ReceivedMessage]:
        async for message in self._loop(self._reader):
            yield message


async def cluster_broadcast(
    client: Any, partitions: Partitions, registries: Sequence[StreamRegistry]
) -> AsyncGenerator[ReceivedMessage]:
    """Every message published to any partition after the consumer started, as it comes."""
    reader = dedicated_cluster_client(partitions.partitions[0].config, connections=partitions.count + 2)
    ready: deque[ReceivedMessage] = deque()
    arrived = asyncio.Event()
    taken = [asyncio.Event() for _ in partitions.partitions]
    errors: list[BaseException] = []

    async def pump(index: int) -> None:
        partition = partitions.partitions[index]
        throttle = Throttle()
        failures = 0
        while True:
            stream = _PartitionBroadcast(
                client, reader, partition.config, registry=registries[index]
            ).messages()
            try:
                async for message in stream:
                    failures = 0
                    # One message ahead of the caller, so a slow caller slows the reads.
                    taken[index].clear()
                    ready.append(message)
                    arrived.set()
                    await taken[index].wait()
            except CLUSTER_TRANSIENT_ERRORS as exc:
                # The reader starts again from the server's clock: what was published during the
                # pause is missed, as for any broadcast consumer that was not reading.
                failures += 1
                await wait_out(exc, failures, throttle, what="redis cluster")
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    errors.append(exc)
                    arrived.set()
                raise
            finally:
                await stream.aclose()

    loop = asyncio.get_running_loop()
    pumps = [loop.create_task(pump(i)) for i in range(partitions.count)]
    try:
        while True:
            while not ready:
                if errors:
                    raise errors[0]
                arrived.clear()
                await arrived.wait()
            message = ready.popleft()
            taken[partitions.partition(message.stream).index].set()
            yield message
    finally:
        for task in pumps:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pumps, return_exceptions=True)
        await close_client(reader)
