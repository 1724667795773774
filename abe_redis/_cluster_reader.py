"""A group consumer on a Redis Cluster: one :class:`~abe_redis._delivery.GroupReader` per
partition (see :mod:`abe_redis._partitions`), merged behind the same interface.

Each partition's reader is the single-server engine, unchanged, on keys that share one slot: its
blocking ``XREADGROUP`` covers the partition's streams and notification stream, its pipelines
and transactions stay in that slot, and redis-py's cluster client routes every command to the
master serving it (following ``MOVED``/``ASK`` and reloading the slot map after a failover).

The readers run side by side, each in a task, and share the consumer's prefetch bound as they
need it (:mod:`abe_redis._budget`), so that the consumer as a whole holds at most ``prefetch``
entries while a busy partition may use most of them. Messages reach the
caller in the order the partitions produced them; which reader a message belongs to is read from
its stream name.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from redis.exceptions import AskError, ClusterError, RedisClusterException, TryAgainError

from ._budget import PrefetchBudget
from ._connection import TRANSIENT_ERRORS, close_client, dedicated_cluster_client
from ._delivery import GroupReader, Throttle, wait_out
from ._errors import BackendClosedError
from ._liveness import caller_gone
from ._message import ReceivedMessage
from ._partitions import Partitions
from ._registry import StreamRegistry
from .metrics import NULL_METRICS, MetricsHook

log = logging.getLogger("abe_redis")

CLUSTER_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ClusterError,  # CLUSTERDOWN, MASTERDOWN: a failover in progress
    TryAgainError,  # a multi-key command during a slot migration
    AskError,  # MOVED/ASK left after redis-py's redirections ran out
    RedisClusterException,  # a slot not covered yet, while the slot map is reloaded
)
"""Errors of a cluster in transition: a partition's reader backs off and reads again."""


class _SharedTaker:
    """The consumer's non-retrying cluster client, lent to each partition's reader: every reader
    takes entries with it, none closes it (the consumer does, once all readers are closed)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        return await self._client.xreadgroup(*args, **kwargs)

    async def xclaim(self, *args: Any, **kwargs: Any) -> Any:
        return await self._client.xclaim(*args, **kwargs)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        # Recovery takes back a lost read's entries with pipelined XCLAIMs on the taker.
        return self._client.pipeline(*args, **kwargs)

    async def aclose(self) -> None:
        pass


class ClusterReader:
    """One consumer in one group, reading every partition; the interface of ``GroupReader``."""

    def __init__(
        self,
        client: Any,
        partitions: Partitions,
        registries: Sequence[StreamRegistry],
        *,
        group: str,
    ) -> None:
        self.group = group
        self._partitions = partitions
        config = partitions.partitions[0].config
        # One blocking read per partition may be in flight at once, all on one node at worst.
        self._taker_client = dedicated_cluster_client(config, connections=partitions.count + 2)
        taker = _SharedTaker(self._taker_client)
        self._caller: asyncio.Task[Any] | None = None
        self.budget = PrefetchBudget(partitions.prefetch, partitions.count)
        self._readers = [
            GroupReader(
                client,
                p.config,
                group=group,
                registry=registries[p.index],
                taker=taker,
                in_use=self._caller_alive,
                prefetch=functools.partial(self.budget.limit, p.index),
            )
            for p in partitions.partitions
        ]
        self._ready: deque[tuple[int, ReceivedMessage]] = deque()
        self._arrived = asyncio.Event()
        # Set when the caller took a partition's message from the queue: each pump keeps one
        # message ahead, so that its reader asks Redis for more only once the caller has moved
        # on (its acknowledgements flushed first), never while its share is all in the queue.
        self._taken = [asyncio.Event() for _ in self._readers]
        self._error: BaseException | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._closed = False
        self._throttle = Throttle()
        self._metrics: MetricsHook = NULL_METRICS

    @property
    def metrics(self) -> MetricsHook:
        return self._metrics

    @metrics.setter
    def metrics(self, hook: MetricsHook) -> None:
        self._metrics = hook
        for reader in self._readers:
            reader.metrics = hook

    @property
    def consumer(self) -> str:
        """The consumer's name in the first partition (each partition's group names it apart)."""
        return self._readers[0].consumer

    @property
    def consumers(self) -> list[str]:
        """Its name in each partition, in partition order."""
        return [reader.consumer for reader in self._readers]

    # -- the loop ------------------------------------------------------------------------

    async def messages(self) -> AsyncGenerator[ReceivedMessage]:
        """The generator ``consume()`` returns: each message is done once the next is asked for."""
        try:
            while True:
                message = await self.receive()
                yield message
                self.done(message)
        finally:
            await self.aclose()

    async def receive(self) -> ReceivedMessage:
        """The next message of any partition, leased until :meth:`done`, :meth:`release` or
        :meth:`dead_letter`."""
        if self._closed:
            raise BackendClosedError("this consumer is closed (or its backend was)")
        self._caller = asyncio.current_task()
        if not self._pumps:
            loop = asyncio.get_running_loop()
            self._pumps = [loop.create_task(self._pump(i)) for i in range(len(self._readers))]
        failures = 0
        while True:
            while not self._ready:
                if self._error is not None:
                    raise self._error
                self._arrived.clear()
                await self._arrived.wait()
            index, message = self._ready.popleft()
            try:
                mine = await self._readers[index].still_held(message)
            except BaseException as exc:
                # Ownership unknown: it stays first in line, and is asked about again.
                self._ready.appendleft((index, message))
                if not isinstance(exc, (*TRANSIENT_ERRORS, *CLUSTER_TRANSIENT_ERRORS)):
                    raise
                failures += 1
                await wait_out(exc, failures, self._throttle)
                continue
            self._taken[index].set()
            if mine:
                return message
            # It waited here while a peer took it over (a stalled loop renewed nothing): the
            # peer hands it out now, so this consumer must not.

    async def _pump(self, index: int) -> None:
        """Move one partition's messages to the merged queue, one at a time; a cluster in
        transition only pauses it, a fatal error ends the consumer."""
        reader, taken = self._readers[index], self._taken[index]
        throttle = Throttle()
        failures = 0
        try:
            while True:
                try:
                    message = await reader.receive()
                except CLUSTER_TRANSIENT_ERRORS as exc:
                    failures += 1
                    await wait_out(exc, failures, throttle, what="redis cluster")
                    continue
                failures = 0
                self.budget.delivered(index)
                taken.clear()
                self._ready.append((index, message))
                self._arrived.set()
                await taken.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # reported to the caller, who closes the consumer
            self._error = exc
            self._arrived.set()

    def _caller_alive(self) -> bool:
        """False once the task that last asked for a message died without closing this consumer
        (cancelled, or ended by an exception): the readers then stop renewing their leases,
        which lapse after ``claim_idle_ms`` for peers to claim (the pumps ask on the caller's
        behalf and live on). A task that returned normally handed its message on to a handler
        that still holds it, as a single-server reader judges too."""
        return not caller_gone(self._caller)

    def _reader(self, message: ReceivedMessage) -> GroupReader:
        return self._readers[self._partitions.partition(message.stream).index]

    # -- the engine's interface ------------------------------------------------------------

    def done(self, message: ReceivedMessage) -> None:
        self._reader(message).done(message)

    def put_back(self, message: ReceivedMessage) -> None:
        """Undo :meth:`receive` for a message no handler has seen: it is the next one returned.
        (Its reader learns of it only on close, when it is released uncounted.)"""
        self._ready.appendleft((self._partitions.partition(message.stream).index, message))

    async def hand_again(self, message: ReceivedMessage) -> None:
        await self._reader(message).hand_again(message)

    async def release(self, messages: list[ReceivedMessage]) -> None:
        by_reader: dict[int, list[ReceivedMessage]] = {}
        for message in messages:
            by_reader.setdefault(self._partitions.partition(message.stream).index, []).append(message)
        for index, chosen in by_reader.items():
            await self._readers[index].release(chosen)

    async def dead_letter(
        self, message: ReceivedMessage, reason: str, *, error_type: str | None = None
    ) -> None:
        await self._reader(message).dead_letter(message, reason, error_type=error_type)

    # -- leaving -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every partition's reader (acknowledging what was done, releasing the rest, the
        messages waiting here uncounted). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        while self._ready:
            # Handed to this merge, never to a handler: the release must not count a delivery.
            index, message = self._ready.pop()
            self._readers[index].put_back(message)
        try:
            await asyncio.gather(*(reader.aclose() for reader in self._readers), return_exceptions=True)
        finally:
            await close_client(self._taker_client)
