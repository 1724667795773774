"""Auto-batching ``XADD``: concurrent publishes share pipelined round trips on one connection.

The pattern is Nagle-free batching. The first caller to find the publisher idle sends its own
entry at once, in its own task, so a lone caller waits for exactly one round trip. Callers that
arrive while a round trip is in flight queue up and leave together in the next one, which a
background task sends as soon as the previous replies are read; there are no timers.

Commands are packed into RESP here rather than through a redis-py pipeline: the pipeline costs
several times more Python per command, and on a connection error it resends the whole batch, so
nobody could tell which entries may already be in the stream. Here each entry knows whether any
byte of it was handed to the socket, and replies are read one by one, so every caller gets its
own result: its entry id, its own error reply (``WRONGTYPE`` for its key only), or, when the
connection fails, :class:`PublishOutcomeUnknownError` if the entry may have been written versus
the plain redis-py error if it certainly was not.

Memory is bounded: at most ``max_batch`` entries per round trip and ``max_queued_bytes`` of
packed commands waiting or in flight; callers beyond that wait their turn, first come first
served.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import BusyLoadingError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._errors import PublishOutcomeUnknownError

__all__ = ["PublishOutcomeUnknownError", "Publisher"]

_FieldValue = bytes | str | int | float
FieldsT = Mapping[str, _FieldValue] | Mapping[bytes, _FieldValue] | Mapping[str | bytes, _FieldValue]

# What one queued entry costs beyond its packed command (future, slots, deque cell): counting
# it keeps a flood of tiny entries bounded too.
_ENTRY_OVERHEAD = 200


class _NotSent(Exception):
    """Carries a connect failure past the retry loop, which must not retry it again."""

    def __init__(self, error: RedisError) -> None:
        self.error = error


class _Entry:
    __slots__ = ("command", "maybe_written", "size", "stream", "waiter")

    def __init__(self, stream: str, command: bytes, waiter: asyncio.Future[bytes | str | None]) -> None:
        self.stream = stream
        self.command = command
        self.size = len(command) + _ENTRY_OVERHEAD
        self.waiter = waiter
        self.maybe_written = False


def _data(value: bytes | str | int | float) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"stream field names and values must be bytes, str, int or float, not {value!r}")


def _bulk(value: bytes | str | int | float) -> bytes:
    data = _data(value)
    return b"$%d\r\n%b\r\n" % (len(data), data)


_HEAD_CACHE_LIMIT = 4096


@functools.lru_cache(maxsize=_HEAD_CACHE_LIMIT)
def _head(stream: str, maxlen: int | None, nomkstream: bool) -> tuple[int, bytes]:
    """The arguments before the fields (``XADD key [NOMKSTREAM] [MAXLEN ~ n] *``), packed, and
    how many there are."""
    args: list[bytes] = [b"$4\r\nXADD\r\n", _bulk(stream)]
    if nomkstream:
        args.append(b"$10\r\nNOMKSTREAM\r\n")
    if maxlen is not None:
        args += [b"$6\r\nMAXLEN\r\n", b"$1\r\n~\r\n", _bulk(maxlen)]
    args.append(b"$1\r\n*\r\n")
    return len(args), b"".join(args)


def _pack(nargs: int, head: bytes, fields: FieldsT) -> bytes:
    if not fields:
        raise ValueError("a stream entry needs at least one field")
    parts = [b"*%d\r\n" % (nargs + 2 * len(fields)), head]
    for name, value in fields.items():
        # The common case (str name, bytes value) without a function call per argument.
        key = name.encode() if type(name) is str else _data(name)
        data = value if type(value) is bytes else _data(value)
        parts.append(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key), key, len(data), data))
    return b"".join(parts)


def entry_id(reply: Any) -> str | None:
    """An ``XADD`` reply as the entry id; ``None`` when ``NOMKSTREAM`` found no stream."""
    if reply is None:
        return None
    return reply.decode() if isinstance(reply, bytes) else str(reply)


class _AppendsMany(Protocol):
    async def xadd_many(
        self, stream: str, fields_list: Sequence[FieldsT], *, maxlen: int | None, nomkstream: bool
    ) -> list[str] | None: ...


async def completed(
    publisher: _AppendsMany,
    stream: str,
    fields_list: Sequence[FieldsT],
    results: list[str | None],
    *,
    maxlen: int | None,
) -> list[str] | None:
    """The ids of an ``xadd_many`` whose entries got ``results`` (``None``: refused by
    NOMKSTREAM): ``None`` if nothing was written, else every id, the refused entries appended
    again without NOMKSTREAM (the stream appeared or vanished midway), so that the call never
    half-succeeds."""
    ids = [got for got in results if got is not None]
    if len(ids) == len(results):
        return ids
    if not ids:
        return None
    refused = [fields for fields, got in zip(fields_list, results, strict=True) if got is None]
    again = await publisher.xadd_many(stream, refused, maxlen=maxlen, nomkstream=False)
    assert again is not None
    it = iter(again)
    return [got if got is not None else next(it) for got in results]


class Publisher:
    """Coalesces concurrent ``XADD`` calls into pipelined round trips on one pooled connection.

    The connection is taken from ``client``'s pool on first use and given back by
    :meth:`aclose`. Connection errors are retried with the connection's retry policy (attempts
    and backoff), as redis-py retries a single command; a retried entry may be written twice.
    An entry that may have reached the server and whose retries all failed raises
    :class:`PublishOutcomeUnknownError`.
    """

    def __init__(self, client: Redis, *, max_batch: int = 512, max_queued_bytes: int = 8 * 2**20) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_queued_bytes < 1:
            raise ValueError(f"max_queued_bytes must be at least 1, got {max_queued_bytes}")
        self._client = client
        self._max_batch = max_batch
        self._max_queued_bytes = max_queued_bytes
        self._queue: collections.deque[_Entry] = collections.deque()
        self._queued_bytes = 0  # waiting in the queue or in flight
        self._admissions: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._busy = False  # a round trip is in flight, or the drain task is about to send one
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_task: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None
        self._closed = False
        self.round_trips = 0
        """Round trips sent so far (retries included); with :attr:`entries_sent`, the mean batch."""
        self.entries_sent = 0

    # -- the interface ---------------------------------------------------------------------

    async def xadd(self, stream: str, fields: FieldsT, *, maxlen: int | None, nomkstream: bool) -> str | None:
        """Append one entry; its id, or ``None`` when ``nomkstream`` found no stream."""
        self._check_open()
        nargs, head = _head(stream, maxlen, nomkstream)
        entry = _Entry(stream, _pack(nargs, head, fields), asyncio.get_running_loop().create_future())
        if self._has_room(entry.size):  # the common case, without a coroutine call
            self._queued_bytes += entry.size
        else:
            await self._admit(entry.size)
        self._queue.append(entry)
        if not self._busy:
            await self._lead_for([entry])
        return entry_id(await entry.waiter)

    async def xadd_many(
        self, stream: str, fields_list: Sequence[FieldsT], *, maxlen: int | None, nomkstream: bool
    ) -> list[str] | None:
        """Append the entries in order (other callers' entries may fall between them).

        With ``nomkstream``, ``None`` when the stream did not exist and nothing was written; if
        the stream appeared or vanished midway (another client), the entries NOMKSTREAM refused
        are appended again without it, so the call never half-succeeds.
        """
        self._check_open()
        if not fields_list:
            return []
        nargs, head = _head(stream, maxlen, nomkstream)
        loop = asyncio.get_running_loop()
        entries = [_Entry(stream, _pack(nargs, head, fields), loop.create_future()) for fields in fields_list]
        for entry in entries:
            if not self._has_room(entry.size):
                # Those already queued must get going before this caller waits for room.
                self._kick()
            await self._admit(entry.size)
            self._queue.append(entry)
        if not self._busy:
            await self._lead_for(entries)
        results = [entry_id(reply) for reply in await asyncio.gather(*(e.waiter for e in entries))]
        return await completed(self, stream, fields_list, results, maxlen=maxlen)

    async def aclose(self) -> None:
        """Send everything already accepted, then give the connection back. Later calls raise
        ``RuntimeError``. Safe to call twice."""
        self._closed = True
        while self._busy or self._queue or self._admissions:
            if self._queue and not self._busy:
                self._kick()
            await self._idle.wait()
            if self._busy or self._queue or self._admissions:
                await asyncio.sleep(0)  # admitted callers still have to enqueue
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._client.connection_pool.release(connection)

    # -- admission (backpressure) ----------------------------------------------------------

    def _has_room(self, size: int) -> bool:
        # An entry bigger than the whole budget still goes, alone.
        return not self._admissions and (
            self._queued_bytes == 0 or self._queued_bytes + size <= self._max_queued_bytes
        )

    async def _admit(self, size: int) -> None:
        if self._has_room(size):
            self._queued_bytes += size
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ticket = (size, granted)
        self._admissions.append(ticket)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(size)  # room was granted just as the caller was cancelled
            else:
                self._admissions.remove(ticket)
                self._grant()
            raise

    def _release(self, size: int) -> None:
        self._queued_bytes -= size
        self._grant()

    def _grant(self) -> None:
        while self._admissions:
            size, granted = self._admissions[0]
            if self._queued_bytes and self._queued_bytes + size > self._max_queued_bytes:
                return
            self._admissions.popleft()
            self._queued_bytes += size
            granted.set_result(None)

    # -- flushing --------------------------------------------------------------------------

    async def _lead_for(self, entries: list[_Entry]) -> None:
        try:
            await self._lead()
        except asyncio.CancelledError:
            # Cancelled while sending: what had not left yet must not leave later.
            for entry in entries:
                entry.waiter.cancel()
            raise

    async def _lead(self) -> None:
        """Send the queue's first batch from the caller's own task (no task switch for a lone
        caller); anything queued meanwhile is left to the drain task."""
        self._busy = True
        self._idle.clear()
        try:
            await self._flush(self._take())
        finally:
            if self._queue:
                self._start_drain()
            else:
                self._set_idle()

    def _kick(self) -> None:
        if not self._busy and self._queue:
            self._busy = True
            self._idle.clear()
            self._start_drain()

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(), name="abe-redis publisher")

    def _set_idle(self) -> None:
        self._busy = False
        self._drain_task = None
        self._idle.set()

    async def _drain(self) -> None:
        try:
            while True:
                while self._queue:
                    await self._flush(self._take())
                    # Callers just woken by their replies publish again before the next batch
                    # is cut, so a steady set of publishers shares round trips instead of
                    # alternating between a batch of one and a batch of the rest.
                    await asyncio.sleep(0)
                await asyncio.sleep(0)
                if not self._queue:
                    return
        except asyncio.CancelledError:
            # The event loop is going away: nobody will send what is still queued.
            while self._queue:
                entry = self._queue.popleft()
                entry.waiter.cancel()
                self._release(entry.size)
            raise
        finally:
            self._set_idle()

    def _take(self) -> list[_Entry]:
        queue = self._queue
        if len(queue) <= self._max_batch:
            batch = list(queue)
            queue.clear()
            return batch
        return [queue.popleft() for _ in range(self._max_batch)]

    async def _flush(self, batch: list[_Entry]) -> None:
        """One batch, retried per the client's policy; every entry's waiter is resolved and its
        room released, whatever happens."""
        pending = batch

        async def attempt() -> None:
            nonlocal pending
            pending = [e for e in pending if not e.waiter.done()]
            if pending:
                await self._round_trip(await self._connect(), pending)

        async def failed(error: Exception) -> None:
            pass

        requeued: list[_Entry] = []  # few, and only when the sender is cancelled
        try:
            # The connection's own policy, as redis-py applies it to a single command.
            retry = (await self._connect()).retry
            await retry.call_with_retry(attempt, failed)
        except BaseException as caught:
            exc = caught.error if isinstance(caught, _NotSent) else caught
            for entry in pending:
                if entry.waiter.done():
                    continue
                if entry.maybe_written:
                    error = PublishOutcomeUnknownError(entry.stream, exc)
                    error.__cause__ = exc
                    entry.waiter.set_exception(error)
                    if not isinstance(exc, Exception):
                        # A cancelled leader never awaits its own waiter; others still get
                        # the error when they await theirs.
                        entry.waiter.exception()
                elif isinstance(exc, Exception):
                    entry.waiter.set_exception(exc)
                else:
                    # The task sending this batch was cancelled before these entries left:
                    # they go back to the front of the queue for the next sender, not to
                    # callers who were never cancelled themselves.
                    requeued.append(entry)
            self._queue.extendleft(reversed(requeued))
            if not isinstance(exc, Exception):
                raise
        finally:
            for entry in batch:
                if entry not in requeued:
                    self._release(entry.size)

    async def _round_trip(self, connection: AbstractConnection, pending: list[_Entry]) -> None:
        self.round_trips += 1
        self.entries_sent += len(pending)
        # From here on bytes may reach the server: a failure leaves the entries whose reply was
        # not read "maybe written".
        for entry in pending:
            entry.maybe_written = True
        await connection.send_packed_command(b"".join(e.command for e in pending), check_health=False)
        # One deadline for the whole batch (the socket timeout), not one timer per reply:
        # arming a timer per reply cost about a third of the publisher's time.
        try:
            async with asyncio.timeout(connection.socket_timeout):
                for entry in pending:
                    try:
                        reply = await connection.read_response(timeout=math.inf)
                    except BusyLoadingError:
                        # The server refused it while loading its data: not written. redis-py
                        # has dropped the connection, so the rest of the batch is retried too.
                        entry.maybe_written = False
                        raise
                    except ResponseError as exc:
                        if not entry.waiter.done():
                            entry.waiter.set_exception(exc)
                        continue
                    if not entry.waiter.done():
                        entry.waiter.set_result(reply)
        except TimeoutError:
            # redis-py's read_response has already dropped the interrupted connection.
            raise RedisTimeoutError(
                f"Timeout reading the replies to {len(pending)} XADD command(s)"
            ) from None

    async def _connect(self) -> AbstractConnection:
        """The publisher's connection, connected and healthy. A failure here means nothing of
        the batch was sent; redis-py has already retried the connect, so it is final."""
        try:
            connection = self._connection
            if connection is None:
                pool = self._client.connection_pool
                connection = await pool.get_connection()  # type: ignore[no-untyped-call]
                self._connection = connection
            if not connection.is_connected:
                await connection.connect()
            elif connection.health_check_interval:
                await connection.check_health()
        except RedisError as exc:
            raise _NotSent(exc) from exc
        return connection

    @property
    def queued_bytes(self) -> int:
        """Bytes of packed commands (plus a per-entry overhead) queued or in flight."""
        return self._queued_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Publisher is closed")
