"""A group consumer on a Redis Cluster: one :class:`~abe_redis._delivery.GroupReader` per
partition (see :mod:`abe_redis._partitions`), merged behind the same interface.

Each partition's reader is the single-server engine, unchanged, on keys that share one slot: its
blocking ``XREADGROUP`` covers the partition's streams and notification stream, its pipelines
and transactions stay in that slot, and redis-py's cluster client routes every command to the
master serving it (following ``MOVED``/``ASK`` and reloading the slot map after a failover).

The caller hands out the readers' buffered messages itself, the partitions taking turns one
message each, without a task switch; a task per partition does only what needs an await (a read,
due acknowledgements, a stale lease's verification), see :meth:`ClusterReader.__init__`. The
readers share the consumer's prefetch bound as they need it (:mod:`abe_redis._budget`), so that
the consumer as a whole holds at most ``prefetch`` entries while a busy partition may use most of
them, and partitions with a backlog take turns at reading large batches. Each partition's
messages reach the caller in its order; which reader a message belongs to is read from its
stream name.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from redis.exceptions import AskError, ClusterError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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


_REMEMBERED_STREAMS = 100_000

_LOST_REPLY: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)


class _UnresentLeases:
    """The consumer's lease client, lent to each partition's lease table (none closes it; the
    consumer does): a non-retrying cluster client of its own, as a single server's consumer has
    (:func:`~abe_redis._connection.unresent_client`). redis-py's cluster client would resend a
    renewal or release whose reply was lost, after a peer may rightly have claimed the entry,
    and steal it back. Two more ways it differs from a single server's client are evened out, so
    that the lease table sees what it expects:

    * a pipeline whose connection failed while its replies were read returns the error as each
      command's result under ``execute(raise_on_error=False)``; here it is raised, as a single
      server's pipeline raises it, so that the table marks those leases unsure (verified before
      anything is sent again) instead of taking a lost renewal for a renewed lease;
    * a command past a node's connection limit fails at once (``MaxConnectionsError``) instead of
      waiting: callers wait for one of ``connections`` instead, each lease command or pipeline
      using one connection (a partition's keys share one slot, so one node).
    """

    def __init__(self, client: Any, connections: int) -> None:
        self._client = client
        self.gate = asyncio.Semaphore(connections)

    def pipeline(self, transaction: bool = False) -> _LeasePipeline:
        return _LeasePipeline(self._client.pipeline(transaction=transaction), self)

    async def xclaim(self, *args: Any, **kwargs: Any) -> Any:
        async with self.gate:
            return await self._client.xclaim(*args, **kwargs)

    def lost(self) -> None:
        """A connection failed: reload the slot map before the next command, as redis-py's
        cluster client does after a single command's connection error. Its pipelines do so only
        on their way to a retry, which this client never makes; without it, a client whose
        commands are all pipelines keeps dialling a failed-over master."""
        self._client._initialize = True

    async def aclose(self) -> None:
        pass


class _LeasePipeline:
    """A cluster pipeline of :class:`_UnresentLeases`: commands queue on it as on redis-py's."""

    def __init__(self, pipe: Any, owner: _UnresentLeases) -> None:
        self._pipe = pipe
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __len__(self) -> int:
        return len(self._pipe)

    async def __aenter__(self) -> _LeasePipeline:
        # Without an await (redis-py's would load the slot map here, which execute() does too):
        # the lease table reads what it holds after entering, and must not be interleaved.
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pipe.reset()

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            async with self._owner.gate:
                replies: list[Any] = await self._pipe.execute(raise_on_error=raise_on_error)
        except _LOST_REPLY:
            self._owner.lost()
            raise
        for reply in replies:
            if isinstance(reply, _LOST_REPLY):
                self._owner.lost()
                raise reply
        return replies


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
        # Lease renewals and releases never go through the shared client, which resends a command
        # whose reply was lost (see _UnresentLeases); one client for every partition's table.
        self._lease_client = dedicated_cluster_client(config, connections=partitions.count + 2)
        leases = _UnresentLeases(self._lease_client, partitions.count + 2)
        self._caller: asyncio.Task[Any] | None = None
        self.budget = PrefetchBudget(partitions.prefetch, partitions.count, on_return=self._next_turn)
        self._readers = [
            GroupReader(
                client,
                p.config,
                group=group,
                registry=registries[p.index],
                taker=taker,
                lease_client=leases,
                in_use=self._caller_alive,
                prefetch=functools.partial(self.budget.limit, p.index),
            )
            for p in partitions.partitions
        ]
        count = len(self._readers)
        # Each partition is in one of three hands at any time. The caller's: it is in the ring,
        # and the caller hands out its buffered messages itself, without a task switch
        # (GroupReader.take_ready). Its pump's: the pump is awaiting GroupReader.receive(), for
        # what only an await can do (a read, due acknowledgements, a stale lease's verification,
        # a lapsed name); the message that call returns waits in the partition's slot, and the
        # partition goes back to the ring. Or, its buffer just emptied, waiting in _refill for
        # the caller's next receive(): the caller has then moved on from its last message, so the
        # read that follows is sent with its acknowledgement flushed and its room returned.
        self._ring: deque[int] = deque()
        self._slots: list[ReceivedMessage | None] = [None] * count
        self._refill: list[int] = []
        self._wanted = [asyncio.Event() for _ in range(count)]
        self._returned: deque[tuple[int, ReceivedMessage]] = deque()
        self._stream_index: dict[str, int] = {}
        # Partitions with a backlog waiting, in order, for room to read (see _turn).
        self._turns: deque[int] = deque()
        self._turn_ready = [asyncio.Event() for _ in range(count)]
        self._arrived = asyncio.Event()
        self._error: BaseException | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._closed = False
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
        :meth:`dead_letter`. Partitions with buffered messages take turns, one message each."""
        if self._closed:
            raise BackendClosedError("this consumer is closed (or its backend was)")
        self._caller = asyncio.current_task()
        if not self._pumps:
            loop = asyncio.get_running_loop()
            self._pumps = [loop.create_task(self._pump(i)) for i in range(len(self._readers))]
            self._refill = list(range(len(self._readers)))
        if self._refill:
            for index in self._refill:
                self._wanted[index].set()
            self._refill.clear()
        ring, slots = self._ring, self._slots
        while True:
            slotted = False
            if self._returned:
                index, message = self._returned.popleft()
            elif ring:
                index = ring.popleft()
                waiting = slots[index]
                if waiting is None:
                    reader = self._readers[index]
                    ready = reader.take_ready()
                    if ready is None:
                        # Something must be awaited first (see __init__): its pump does it.
                        self._wanted[index].set()
                        continue
                    self.budget.delivered(index)
                    if reader.buffered:
                        ring.append(index)  # to the back: the partitions take turns
                    else:
                        self._refill.append(index)
                    # Checked by the reader as it handed it out, like a single server's message.
                    return ready
                slots[index] = None
                message, slotted = waiting, True
            else:
                if self._error is not None:
                    raise self._error
                self._arrived.clear()
                await self._arrived.wait()
                continue
            # A message that waited here, handed out by its reader earlier: while it waited, a
            # stalled loop renewed nothing and a peer may rightly have taken it over.
            reader = self._readers[index]
            try:
                mine = await reader.still_held(message)
            except (*TRANSIENT_ERRORS, *CLUSTER_TRANSIENT_ERRORS):
                # Ownership unknown, and Redis is needed to learn it: back to its reader, whose
                # pump verifies it (waiting out the outage there) before it is handed out again,
                # while the other partitions go on delivering.
                reader.put_back(message)
                if slotted:
                    self._wanted[index].set()
                continue
            except BaseException:
                if slotted:
                    slots[index] = message
                    ring.appendleft(index)
                else:
                    self._returned.appendleft((index, message))
                raise
            if slotted:
                ring.append(index)  # its buffer may hold more
            if mine:
                return message
            # The peer hands it out now, so this consumer must not.

    async def _pump(self, index: int) -> None:
        """Do for one partition what needs an await, when the caller asks (see ``__init__``):
        a cluster in transition only pauses it, a fatal error ends the consumer."""
        reader, wanted = self._readers[index], self._wanted[index]
        throttle = Throttle()
        failures = 0
        try:
            while True:
                await wanted.wait()
                if not reader.buffered:
                    await self._turn(index)  # a read comes next
                try:
                    message = await reader.receive()
                except CLUSTER_TRANSIENT_ERRORS as exc:
                    failures += 1
                    await wait_out(exc, failures, throttle, what="redis cluster")
                    continue
                finally:
                    self._next_turn()  # its read may have returned room
                wanted.clear()
                failures = 0
                self.budget.delivered(index)
                self._slots[index] = message
                self._ring.append(index)
                self._arrived.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # reported to the caller, who closes the consumer
            self._error = exc
            self._arrived.set()

    async def _turn(self, index: int) -> None:
        """Wait until the partition may read: it gives back the room it no longer holds, and one
        with a backlog waits in line until the budget has a good share for it (see
        :mod:`abe_redis._budget`), so that reads stay large when every partition has a backlog."""
        reader, budget = self._readers[index], self.budget
        budget.release(index, reader.held)
        if budget.filling(index) and (self._turns or not budget.ready(index, reader.held)):
            self._turns.append(index)
            event = self._turn_ready[index]
            try:
                while True:
                    # What those in line hold may have dropped since they joined (an ack flush
                    # in flight counted its entries as held): their grants follow.
                    for waiting in self._turns:
                        budget.release(waiting, self._readers[waiting].held)
                    event.clear()
                    if self._turns[0] == index and budget.ready(index, reader.held):
                        break
                    await event.wait()
            finally:
                self._turns.remove(index)
                self._next_turn()
        budget.reserve(index, reader.held)

    def _next_turn(self) -> None:
        if self._turns:
            self._turn_ready[self._turns[0]].set()

    def _caller_alive(self) -> bool:
        """False once the task that last asked for a message died without closing this consumer
        (cancelled, or ended by an exception): the readers then stop renewing their leases,
        which lapse after ``claim_idle_ms`` for peers to claim (the pumps ask on the caller's
        behalf and live on). A task that returned normally handed its message on to a handler
        that still holds it, as a single-server reader judges too."""
        return not caller_gone(self._caller)

    def _reader(self, message: ReceivedMessage) -> GroupReader:
        return self._readers[self._index(message.stream)]

    def _index(self, stream: str) -> int:
        """The partition of a stream, remembered: parsing its name (a CRC-32) for every message
        handled costs more than handing it out."""
        index = self._stream_index.get(stream)
        if index is None:
            if len(self._stream_index) >= _REMEMBERED_STREAMS:
                self._stream_index.clear()
            index = self._stream_index[stream] = self._partitions.partition(stream).index
        return index

    # -- the engine's interface ------------------------------------------------------------

    def done(self, message: ReceivedMessage) -> None:
        self._reader(message).done(message)

    def put_back(self, message: ReceivedMessage) -> None:
        """Undo :meth:`receive` for a message no handler has seen: it is the next one returned.
        (Its reader learns of it only on close, when it is released uncounted.)"""
        self._returned.appendleft((self._index(message.stream), message))

    async def hand_again(self, message: ReceivedMessage) -> None:
        await self._reader(message).hand_again(message)

    async def release(self, messages: list[ReceivedMessage]) -> None:
        by_reader: dict[int, list[ReceivedMessage]] = {}
        for message in messages:
            by_reader.setdefault(self._index(message.stream), []).append(message)
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
        # Handed out by their readers to this merge, never to a handler: the release must not
        # count a delivery. (Last put back, first in its reader's buffer: the order is kept.)
        for index, message in enumerate(self._slots):
            if message is not None:
                self._readers[index].put_back(message)
        self._slots = [None] * len(self._readers)
        while self._returned:
            index, message = self._returned.pop()
            self._readers[index].put_back(message)
        try:
            await asyncio.gather(*(reader.aclose() for reader in self._readers), return_exceptions=True)
        finally:
            await close_client(self._taker_client)
            await close_client(self._lease_client)
