"""The group consumer: a short loop over small collaborators.

``consume(group=…)`` returns :meth:`GroupReader.messages`. In the order a consumer does things:

1. take a name no live consumer has (:mod:`._membership`), and a connection of its own;
2. find its streams and make sure the group exists on each (:mod:`._registry`);
3. resume what its previous incarnation held, take back orphans of lost replies, and sweep for
   the entries of consumers that are gone (:mod:`._recovery` — the only place that sets delivery
   counts);
4. read new entries within the prefetch bound, waiting on every stream at once (:mod:`._reads`);
5. yield each payload; acknowledge it once the caller asks for the next one (:mod:`._acks`).

Everything read is leased (:mod:`._lease`) until acknowledged or dead-lettered: a background
task renews the leases and the consumer's heartbeat, so a healthy consumer never loses a message
it holds, however slow its handler. Entries that cannot be decoded, or that were handed out more
than ``max_deliveries`` times, go to the dead letters (:mod:`.dead_letters`), never to the caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ._acks import ACK_FLUSH_S, AckQueue
from ._codec import decode_fields
from ._config import RedisConfig
from ._connection import (
    TRANSIENT_ERRORS,
    close_client,
    dedicated_client,
    is_missing_group,
    is_missing_stream,
    is_out_of_memory,
    is_wrong_type,
    setup_error,
    unresent_client,
)
from ._errors import BackendClosedError, PoisonMessageError, RedisSetupError
from ._lease import LeaseTable
from ._liveness import caller_gone
from ._membership import Membership
from ._message import ReceivedMessage, received
from ._reads import Entry, ReadPlan, ReadPlanner, filled, stream_entries
from ._recovery import Recovery, Taken
from ._registry import StreamRegistry, StreamSet
from .dead_letters import write_dead_letter
from .metrics import NULL_METRICS, MetricsHook, emit

log = logging.getLogger("abe_redis")

__all__ = ["ACK_FLUSH_S", "GroupReader", "Throttle", "backoff_sleep", "wait_out"]

MAX_BACKOFF_S = 2.0
CLOSE_TIMEOUT_S = 2.0
_LOG_EVERY_S = 5.0


class Throttle:
    """Log the first occurrence at WARNING, repeats at most every few seconds, so an outage is
    visible without flooding the log."""

    def __init__(self) -> None:
        self._last = -_LOG_EVERY_S
        self.suppressed = 0

    def warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= _LOG_EVERY_S:
            if self.suppressed:
                message += f" ({self.suppressed} similar messages suppressed)"
            log.warning(message, *args)
            self._last = now
            self.suppressed = 0
        else:
            self.suppressed += 1


async def backoff_sleep(failures: int) -> None:
    delay = min(MAX_BACKOFF_S, 0.05 * 2 ** min(failures, 10))
    await asyncio.sleep(delay / 2 + random.random() * delay / 2)


async def wait_out(exc: BaseException, failures: int, throttle: Throttle, *, what: str = "redis") -> None:
    """Back off after the ``failures``-th transient error in a row, with a throttled warning.
    An error that is really a setup problem (credentials, rights) is raised as
    :class:`~abe_redis.RedisSetupError` instead: waiting would not fix it."""
    fatal = setup_error(exc)
    if fatal is not None:
        raise fatal from None
    throttle.warn("%s unavailable (%s), retrying: %s", what, type(exc).__name__, exc)
    await backoff_sleep(failures)


class Leased(NamedTuple):
    """An entry just read or claimed, leased, on its way into the buffer. A tuple rather than a
    :class:`Taken`: one is built for every message read, and a frozen dataclass costs 5x more."""

    stream: str
    entry_id: str
    fields: dict[Any, Any] | None
    delivery_count: int


_leased = tuple.__new__  # builds a Leased without NamedTuple's Python-level __new__


def _eager_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task that runs at once up to its first wait, so that a read ahead is on the wire before
    the caller gets its message: a caller that never awaits while its buffer lasts (a loop of
    quick handlers) would otherwise send it only once the buffer ran dry. Through the loop's
    task factory if it has one (one that takes no ``eager_start`` gets a plain task)."""
    loop = asyncio.get_running_loop()
    factory = loop.get_task_factory()
    if factory is None:
        return asyncio.Task(coro, loop=loop, eager_start=True)
    try:
        return cast("asyncio.Task[None]", factory(loop, coro, eager_start=True))  # type: ignore[call-arg]
    except TypeError:
        return loop.create_task(coro)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


class GroupReader:
    """One consumer in one group; :meth:`messages` is the generator ``consume()`` returns."""

    metrics: MetricsHook = NULL_METRICS
    """Sees delivered, acked, dead_lettered and reclaimed events (see :mod:`abe_redis.metrics`)."""

    def __init__(
        self,
        client: Redis,
        config: RedisConfig,
        *,
        group: str,
        registry: StreamRegistry,
        on_close: Callable[[], None] | None = None,
        taker: Any = None,
        in_use: Callable[[], bool] | None = None,
        prefetch: Callable[[int], int] | None = None,
        lease_client: Any = None,
    ) -> None:
        # Any: redis-py types stream replies as wide unions that depend on RESP version and
        # decode_responses; the shapes are normalised by stream_entries() instead.
        self._client: Any = client
        self._config = config
        self.group = group
        self._registry = registry
        self._on_close = on_close
        self._streams = StreamSet(registry, config)
        self._planner = ReadPlanner()
        self._membership = Membership(client, config, group=group)
        self._grouped: set[str] = set()
        self._buffer: deque[ReceivedMessage] = deque()
        self._parked: list[Taken] = []
        # The client for commands that take entries; by default a connection of its own,
        # opened at start (a Redis Cluster consumer passes a non-retrying cluster client).
        self._given_taker = taker
        # Whether the caller still iterates; by default, whether the task that last asked for a
        # message is alive (a merging reader that asks from tasks of its own passes its caller's).
        self._caller_alive = in_use
        # The most entries it may hold, given how many it holds, asked before each read; by
        # default the configured prefetch (readers sharing one bound pass their share's lender).
        self._prefetch = prefetch
        # The client for lease commands; by default connections of its own that never resend
        # (a Redis Cluster consumer passes one of its own, shared by its partitions' readers).
        self._given_lease_client = lease_client
        self._taker: Any = None
        self._lease_client: Any = None
        self._acks_ride_reads = False
        self._leases: LeaseTable | None = None
        self._acks: AckQueue | None = None
        self._recovery: Recovery | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._background_error: BaseException | None = None
        self._iterating: asyncio.Task[Any] | None = None
        self._closed = False
        self._name_lost = False
        self._resumed = False
        self._orphan_check: set[str] = set()
        self._next_sweep = 0.0
        self._failures = 0
        self._throttle = Throttle()
        # Reading ahead (see _read_ahead): on for a single-node taker with the configured
        # prefetch. The read in flight, what it brought (leased, not yet buffered), whether the
        # last read filled its COUNT, and the buffer length below which the next read goes out.
        self._ahead_ok = False
        self._packed_read: tuple[tuple[Any, ...], list[Any]] | None = None
        self._ahead: asyncio.Task[None] | None = None
        self._arrived: list[Leased] = []
        self._backlog = False
        # A quarter: the read goes out while the caller still has a quarter of the prefetch to
        # handle, and brings up to three quarters (reading half at a time, collected at once,
        # overlapped more but cost one consumer of four in a process more than it saved).
        self._ahead_at = config.effective_prefetch // 4

    @property
    def consumer(self) -> str:
        return self._membership.name

    # -- the loop ------------------------------------------------------------------------

    async def messages(self) -> AsyncGenerator[ReceivedMessage]:
        """The generator ``consume()`` returns: each message is done once the next is asked for."""
        try:
            while True:
                message = self._ready()
                if message is None:
                    message = await self.receive()
                yield message
                self.done(message)  # the caller asked for the next message: it is done with this one
        finally:
            await self.aclose()

    # -- the engine's interface, for the generator above and for consumer runners ------------

    async def receive(self) -> ReceivedMessage:
        """The next message, handed to the caller. It stays leased — renewed in the background,
        never claimable by a peer — until :meth:`done`, :meth:`release` or :meth:`dead_letter`."""
        message = self._ready()
        if message is not None:
            return message
        if self._closed:
            raise BackendClosedError("this consumer is closed (or its backend was)")
        self._iterating = asyncio.current_task()
        await self._flush_due_acks()
        while True:
            if self._ahead is not None and (not self._buffer or self._name_lost):
                # Its entries first: the buffer ran dry, or this name is lost and what the read
                # brought goes with the rest of what it held (see _rejoin).
                await self._collect()
                continue
            if self._name_lost:
                # Checked on every turn: a call that waits through an outage (reads, recovery)
                # must not go on taking and handing out entries under a name another now holds.
                try:
                    await self._rejoin()
                except TRANSIENT_ERRORS as exc:
                    self._failures += 1
                    await wait_out(exc, self._failures, self._throttle)
                continue
            if self._buffer and self._membership.lapsed(time.monotonic()):
                # Cut off past the name's TTL: until a heartbeat confirms the name, entries
                # pending under it may be another consumer's, whatever a verify reads.
                try:
                    if not await self._membership.heartbeat():
                        self._name_lost = True
                except TRANSIENT_ERRORS as exc:
                    self._failures += 1
                    await wait_out(exc, self._failures, self._throttle)
                continue
            if not self._buffer:
                await self._fill()
                continue
            message = self._buffer.popleft()
            leases, _ = self._parts()
            if leases.stale(message.stream):
                if self._ahead is not None:
                    # Verify what the read ahead brings too: it may be of the same stream.
                    self._buffer.appendleft(message)
                    await self._collect()
                    continue
                try:
                    lost = await leases.verify(message.stream)
                except TRANSIENT_ERRORS as exc:
                    # Ownership unknown: keep the message back and try again after a pause.
                    self._buffer.appendleft(message)
                    self._failures += 1
                    await wait_out(exc, self._failures, self._throttle)
                    continue
                if lost:
                    # Peers took these over while this consumer stalled: they are theirs now,
                    # the buffered ones included, not only the one at hand.
                    gone = set(lost)
                    self._buffer = deque(
                        m for m in self._buffer if m.stream != message.stream or m.message_id not in gone
                    )
                    if message.message_id in gone:
                        continue
            if not leases.hand(message.stream, message.message_id):
                # Its lease was dropped after it was taken (a peer took it over while it was on
                # its way into the buffer, say): it is no longer this consumer's to hand out.
                continue
            if (
                self._backlog
                and self._ahead_ok
                and self._ahead is None
                and len(self._buffer) < self._ahead_at
            ):
                self._read_ahead()
            if self.metrics is not NULL_METRICS:
                emit(self.metrics, "delivered", stream=message.stream, group=self.group)
            return message

    def _ready(self) -> ReceivedMessage | None:
        """:meth:`receive` without a single await, for the common case: the next buffered message
        when nothing has to happen first (no acknowledgements due, no lease gone stale, no name
        lost); ``None`` sends the caller the long way. Per message, this is the engine's cost."""
        buffer, acks, leases = self._buffer, self._acks, self._leases
        if not buffer or acks is None or leases is None or self._closed or self._name_lost:
            return None
        now = time.monotonic()
        message = buffer[0]
        if (
            self._membership.lapsed(now)
            or acks.due(now)
            or leases.stale(message.stream, now)
            or not leases.hand(message.stream, message.message_id)
        ):
            return None
        buffer.popleft()
        self._iterating = asyncio.current_task()
        if self._backlog and self._ahead_ok and self._ahead is None and len(buffer) < self._ahead_at:
            self._read_ahead()
        if self.metrics is not NULL_METRICS:
            emit(self.metrics, "delivered", stream=message.stream, group=self.group)
        return message

    async def _rejoin(self) -> None:
        """Step aside after another consumer took this one's name: what this consumer held now
        sits in the other's pending list (the other resumes it), so drop it here without a
        release, acknowledge what was handled (acks are per group), and take a new name."""
        leases, acks = self._parts()
        await self._guarded(acks.flush())
        self._buffer.clear()
        self._arrived.clear()
        self._parked.clear()
        leases.clear()
        membership = self._membership.fresh()
        leases.consumer = await membership.join()  # if this fails, the name is still lost: again
        self._membership = membership
        self._name_lost = False
        self._resumed = not membership.configured

    def done(self, message: ReceivedMessage) -> None:
        """``message`` was handled: acknowledge it with the next batch (within ``ACK_FLUSH_S``)."""
        acks = self._acks
        assert acks is not None
        acks.add(message)
        if not self._wake.is_set():
            self._wake.set()
        if self.metrics is not NULL_METRICS:
            emit(self.metrics, "acked", stream=message.stream, group=self.group)

    def put_back(self, message: ReceivedMessage) -> None:
        """Undo :meth:`receive` for a message no handler has seen: it is the next one returned,
        and releasing it meanwhile counts no delivery."""
        leases, _ = self._parts()
        leases.unhand(message.stream, message.message_id)
        self._buffer.appendleft(message)

    def take_ready(self) -> ReceivedMessage | None:
        """The next buffered message if it can be handed out without an await, else ``None``
        (nothing buffered, acknowledgements due, a stale lease, a lapsed name: :meth:`receive`
        does those). For a merging reader that hands out its readers' buffered messages from its
        caller's task and awaits only in tasks of its own."""
        return self._ready()

    @property
    def buffered(self) -> int:
        """How many messages wait in the buffer."""
        return len(self._buffer)

    @property
    def held(self) -> int:
        """How many entries count against its prefetch bound now, as a read counts them: buffered,
        in hand, and unacknowledged, without those whose acknowledgement is queued."""
        leases, acks = self._leases, self._acks
        if leases is None or acks is None:
            return 0
        return len(leases) - len(acks) - len(self._parked)

    async def still_held(self, message: ReceivedMessage) -> bool:
        """Whether a message :meth:`receive` returned a while ago is still this consumer's, for
        a merging reader that queues messages ahead of its caller: while one waits there, a
        stalled loop renews nothing and a peer may claim it (a refresh then drops its lease),
        or the name passes to another consumer. Verified, as :meth:`receive` verifies its
        buffer, when the lease went stale; False means it is someone else's now."""
        leases = self._leases
        if leases is None or self._name_lost:
            return False
        if self._membership.lapsed(time.monotonic()) and not await self._membership.heartbeat():
            self._name_lost = True
            return False
        if leases.stale(message.stream):
            await leases.verify(message.stream)
        return leases.holds(message.stream, message.message_id)

    async def hand_again(self, message: ReceivedMessage) -> None:
        """Count another delivery of a held message that this consumer is about to retry
        itself; the count is kept in Redis, so it survives a restart."""
        leases, _ = self._parts()
        message.delivery_count = await leases.hand_again(message.stream, message.message_id)
        emit(self.metrics, "delivered", stream=message.stream, group=self.group)

    async def release(self, messages: list[ReceivedMessage]) -> None:
        """Give held messages back now: claimable by any consumer at once."""
        leases, _ = self._parts()
        await leases.release([(m.stream, m.message_id) for m in messages])

    async def dead_letter(
        self, message: ReceivedMessage, reason: str, *, error_type: str | None = None
    ) -> None:
        """Move a held message to its dead-letter stream with ``reason``, then acknowledge it."""
        leases, _ = self._parts()
        count = leases.count(message.stream, message.message_id) or message.delivery_count
        fields = await self._client.xrange(
            message.stream, min=message.message_id, max=message.message_id, count=1
        )
        await write_dead_letter(
            self._client,
            self._config,
            stream=message.stream,
            entry_id=message.message_id,
            fields=fields[0][1] if fields else {b"payload": json.dumps(dict(message)).encode()},
            reason=reason,
            group=self.group,
            consumer=self.consumer,
            delivery_count=count,
            error_type=error_type,
        )
        message.acked = True
        leases.drop(message.stream, (message.message_id,))
        emit(
            self.metrics,
            "dead_lettered",
            stream=message.stream,
            group=self.group,
            error_type=error_type or "",
        )

    async def _flush_due_acks(self) -> None:
        # With nothing buffered, the next step is a read, and the read carries them.
        if self._acks is not None and self._acks.due() and (self._buffer or not self._acks_ride_reads):
            await self._guarded(self._acks.flush())

    def _parts(self) -> tuple[LeaseTable, AckQueue]:
        assert self._leases is not None and self._acks is not None
        return self._leases, self._acks

    async def _fill(self) -> None:
        try:
            if self._background_error is not None:
                raise self._background_error
            if self._leases is None:
                await self._start()
            leases, acks = self._parts()
            now = time.monotonic()
            if not self._acks_ride_reads or self._recovery_due(now):
                await acks.flush()
            if self._streams.due(now):
                await self._discover()
            streams = self._streams.streams
            # Entries parked for a dead-letter retry (Redis out of memory) wait outside the bound,
            # or a consumer full of them would stop delivering good messages. Handled entries
            # whose XACK goes with the read are not counted: they are gone when its reply is.
            held = len(leases) - len(acks) - len(self._parked)
            limit = self._config.effective_prefetch if self._prefetch is None else self._prefetch(held)
            room = limit - held
            if room <= 0:
                await acks.flush()
                await asyncio.sleep(ACK_FLUSH_S)  # everything in room is awaiting its ack
                return
            if await self._recover(streams, room, now):
                return
            await self._read(streams, room)
            self._failures = 0
        except ResponseError as exc:
            await self._on_response_error(exc)
        except TRANSIENT_ERRORS as exc:
            self._failures += 1
            self._orphan_check.update(self._streams.streams)
            await wait_out(exc, self._failures, self._throttle)

    async def _start(self) -> None:
        self._taker = self._given_taker if self._given_taker is not None else dedicated_client(self._client)
        # A single-node taker sends acknowledgements in its read's round trip; a cluster client
        # routes each command by key, and its pipelines do not wait out a blocking read.
        self._acks_ride_reads = isinstance(self._taker, Redis)
        # Readers sharing a bound (a cluster consumer's partitions) ask for their share before
        # each read with none in flight (see _budget); they read when their buffer is empty.
        self._ahead_ok = self._acks_ride_reads and self._prefetch is None and self._ahead_at > 0
        try:
            name = await self._membership.join()
        except ResponseError as exc:
            if is_wrong_type(exc):
                raise self._own_key_error(exc) from None
            raise
        # Only a configured name can have a previous incarnation with entries to resume.
        self._resumed = not self._membership.configured
        config = self._config
        # Lease commands go over connections that never resend: a renewal or release resent by
        # redis-py after a lost reply runs late, after a peer may have rightly claimed the entry,
        # and steals it back. A failed one surfaces, and the table verifies before trying again.
        self._lease_client = self._given_lease_client
        if self._lease_client is None:
            own = isinstance(self._client, Redis)
            self._lease_client = unresent_client(self._client, connections=4) if own else self._client
        self._leases = LeaseTable(
            self._lease_client,
            group=self.group,
            consumer=name,
            claim_idle_ms=config.claim_idle_ms,
            refresh_ms=config.lease_refresh_ms,
        )
        self._acks = AckQueue(
            self._client, group=self.group, leases=self._leases, batch_size=config.batch_size
        )
        self._recovery = Recovery(
            self._client,
            self._taker,
            config,
            group=self.group,
            leases=self._leases,
            membership_ttl_ms=self._membership.ttl_ms,
        )
        await self._create_group(self._registry.notifications_key, "$")
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def _discover(self) -> None:
        try:
            added = await self._streams.refresh()
        except ResponseError as exc:
            if is_wrong_type(exc):
                raise self._own_key_error(exc) from None
            raise
        if added:
            await self._create_groups(added, self._config.group_start_id)
            self._planner.track(self._streams.streams)

    def _own_key_error(self, exc: ResponseError) -> RedisSetupError:
        return RedisSetupError(
            f"one of the backend's own keys ({self._config.registry_key!r} or keys under "
            f"{self._config.key_prefix!r}) holds the wrong type; delete it or change "
            f"REDIS_KEY_PREFIX: {exc}"
        )

    async def _create_groups(self, streams: list[str], start_id: str) -> None:
        # Without MKSTREAM first. A listed stream that is gone was lost after the registry was
        # read (a restart without persistence, FLUSHALL): creating it here would let the
        # publisher's NOMKSTREAM fast path succeed on it, so nobody would register it again
        # and consumers that start later would never read it (simulate seeds 818, 843). So it
        # is created and put back in the registry in one write, which a kill cannot split.
        missing = await self._xgroup_create(streams, start_id, mkstream=False)
        if missing:
            await self._xgroup_create(missing, start_id, mkstream=True)

    async def _xgroup_create(self, streams: list[str], start_id: str, *, mkstream: bool) -> list[str]:
        """Create the group on ``streams``; returns those that do not exist (without MKSTREAM).
        With MKSTREAM, the streams are also put back in the registry in the same pipeline."""
        async with self._client.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xgroup_create(stream, self.group, id=start_id, mkstream=mkstream)
            if mkstream:
                self._registry.queue_repair(pipe, streams)
            replies = await pipe.execute(raise_on_error=False)
        if mkstream:
            for reply in replies[len(streams) :]:
                if isinstance(reply, BaseException):
                    raise reply
            replies = replies[: len(streams)]
        missing = []
        for stream, reply in zip(streams, replies, strict=True):
            if isinstance(reply, ResponseError) and "BUSYGROUP" not in str(reply):
                if is_wrong_type(reply):
                    self._streams.skip(stream, "key of another type")
                    continue
                if not mkstream and is_missing_stream(reply):
                    missing.append(stream)
                    continue
                raise reply
            self._grouped.add(stream)
        return missing

    async def _create_group(self, stream: str, start_id: str) -> None:
        try:
            await self._client.xgroup_create(stream, self.group, id=start_id, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _recovery_due(self, now: float) -> bool:
        """Whether :meth:`_recover` may take entries now (it then needs the room that queued
        acknowledgements would free, so they are sent first rather than with the read)."""
        recovery = self._recovery
        return bool(
            self._parked
            or not self._resumed
            or self._orphan_check
            or now >= self._next_sweep
            or (recovery is not None and recovery.more)
        )

    async def _recover(self, streams: list[str], room: int, now: float) -> bool:
        """Take over what nobody is handling; True if anything was taken."""
        recovery = self._recovery
        assert recovery is not None
        taken: list[Taken] = []
        swept = False
        try:
            if self._parked:
                await self._retry_parked()
            if not self._resumed:
                taken = await recovery.own_pending(streams, room, counted=True)
                self._resumed = True
                self._orphan_check.clear()
            elif self._orphan_check:
                checked = sorted(self._orphan_check & set(streams))
                self._orphan_check.clear()
                taken = await recovery.own_pending(checked, room, counted=False)
            if not taken and (now >= self._next_sweep or recovery.more):
                self._next_sweep = now + self._config.effective_claim_interval_ms / 1000
                swept = True
                taken = await recovery.sweep(streams, room)
        finally:
            # Everything recovery leased is buffered, even when a later step of it failed:
            # a leased entry that is not buffered would be held, renewed and never handled.
            taken = recovery.collect()
            if swept:
                for entry in taken:
                    emit(self.metrics, "reclaimed", stream=entry.stream, group=self.group)
            if taken:
                await self._intake([Leased(t.stream, t.entry_id, t.fields, t.count) for t in taken])
        return bool(taken)

    async def _read(self, streams: list[str], room: int) -> None:
        plan = self._planner.plan(streams, room)
        keys = dict.fromkeys(plan.streams, ">")
        notifications = self._registry.notifications_key
        if plan.block:
            keys[notifications] = ">"
        block = self._config.block_ms if plan.block else None
        _, acks = self._parts()
        sent = time.monotonic()
        response = await self._send_read(
            plan, keys, block, acks.take() if self._acks_ride_reads and len(acks) else None
        )
        entries = stream_entries(response)
        notes = [e for e in entries if e[0] == notifications]
        if notes:
            entries = [e for e in entries if e[0] != notifications]
            self._streams.force()
        self._planner.observe(plan, entries)
        self._backlog = filled(plan, entries)
        if (
            not entries
            and not notes
            and plan.block
            and time.monotonic() - sent < self._config.block_ms / 10_000
        ):
            # A blocking read that comes back empty at once is a broken server or fake (fakeredis
            # < 2.41 does this with COUNT); pause rather than spin.
            await asyncio.sleep(min(self._config.block_ms, 100) / 1000)
        if entries:
            await self._intake(self._lease_read(entries, sent))
        if notes:
            # Last: what was read is leased and buffered first, whatever this answers.
            await self._guarded(self._client.xack(notifications, self.group, *(i for _, i, _ in notes)))

    async def _send_read(
        self,
        plan: ReadPlan,
        keys: dict[str, str],
        block: int | None,
        acked: dict[str, list[ReceivedMessage]] | None,
    ) -> Any:
        """Send the XREADGROUP of ``plan`` on the taker, behind the XACKs of ``acked`` if any (one
        round trip), settle those, and return the read's reply. A read whose reply may have
        carried entries and was lost (a connection error, a cancellation) marks its streams for
        the orphan check: the entries are this consumer's in Redis, and taken back before the
        next read or on close."""
        _, acks = self._parts()
        try:
            if acked:
                # One round trip: the handled entries' XACKs, then the read that refills the room
                # they leave (a consumer at full speed reads once per batch, and acks with it).
                ack_replies, response = await self._ack_and_read(acked, keys, plan.count, block)
                settling, acked = acked, None
                try:
                    acks.settle(settling, ack_replies)
                except BaseException:
                    self._orphan_check.update(plan.streams)  # the read's entries, for the close
                    raise
                if isinstance(response, BaseException):
                    raise response
            else:
                response = await self._taker.xreadgroup(
                    self.group, self.consumer, keys, count=plan.count, block=block
                )
        except BaseException as exc:
            if acked:
                acks.requeue(acked)  # unknown whether they ran: XACK again, it is idempotent
            if not isinstance(exc, (*TRANSIENT_ERRORS, asyncio.CancelledError)):
                raise
            # The reply may have carried entries: look for them before the next read, or on close.
            self._orphan_check.update(plan.streams)
            raise
        return response

    def _lease_read(self, entries: list[Entry], sent: float) -> list[Leased]:
        """Lease what a read returned (``sent``: when the read was sent), the moment it is known:
        from here on a close releases it, whether or not it reached the buffer."""
        leases, _ = self._parts()
        by_stream: dict[str, list[tuple[str, int]]] = {}
        for stream, entry_id, _ in entries:
            by_stream.setdefault(stream, []).append((entry_id, 1))
        for stream, taken_ids in by_stream.items():
            leases.take(stream, taken_ids, at=sent)
        return [_leased(Leased, (s, i, f, 1)) for s, i, f in entries]

    # -- reading ahead -------------------------------------------------------------------

    def _read_ahead(self) -> None:
        """While a backlog lasts, send the next read before the buffer runs dry, so that its
        round trip overlaps the caller's work on what is still buffered. Called as a message is
        handed out; the read goes out before this returns (an eagerly started task), and its
        entries are leased as soon as its reply is parsed, then buffered by :meth:`_collect`.

        Only within the prefetch bound: the read asks for at most the room left by what is
        held (buffered, in hand, unacknowledged), as :meth:`_fill` does, so buffered + in hand +
        in flight never exceeds ``prefetch``. Never while :meth:`_fill` has other work due
        (recovery, a sweep, discovery, parked dead letters): those run once the buffer is empty,
        with the read they precede. Never blocking, and never without a backlog: a read that
        got less than it asked for ends reading ahead until a read fills its COUNT again, so an
        idle consumer sends nothing more than before."""
        leases, acks = self._leases, self._acks
        assert leases is not None and acks is not None
        now = time.monotonic()
        if self._background_error is not None or self._streams.due(now) or self._recovery_due(now):
            return
        held = len(leases) - len(acks)
        room = self._config.effective_prefetch - held
        if room < self._ahead_at:
            # Handlers hold most of the room (a runner with several in hand): read when the
            # buffer is empty instead, as without reading ahead.
            self._backlog = False
            return
        streams = self._streams.streams
        plan = self._planner.plan(streams, room)
        if plan.block and len(streams) > room:
            self._backlog = False  # no stream is known to have a backlog
            return
        keys = dict.fromkeys(plan.streams, ">")
        task = _eager_task(self._ahead_read(plan, keys, acks.take() if len(acks) else None))
        # A consumer abandoned with a read ahead in flight never awaits it: mark a failure seen.
        task.add_done_callback(_retrieve)
        self._ahead = task

    async def _ahead_read(
        self, plan: ReadPlan, keys: dict[str, str], acked: dict[str, list[ReceivedMessage]] | None
    ) -> None:
        sent = time.monotonic()
        response = await self._send_read(plan, keys, None, acked)
        entries = stream_entries(response)
        self._planner.observe(plan, entries)
        self._backlog = filled(plan, entries)
        if entries:
            self._arrived += self._lease_read(entries, sent)

    async def _collect(self) -> None:
        """Wait for the read ahead in flight and buffer what it brought; its errors are handled
        as :meth:`_fill` handles a read's. Run before the loop does anything that needs the taker
        (which carries one command at a time) or all of what this consumer holds (a verify, a
        rejoin)."""
        task = self._ahead
        assert task is not None
        try:
            # Not shielded: a caller cancelled meanwhile cuts the read off, as it would its own read
            # (the connection is dropped and the read's streams go to the orphan check).
            await task
            self._failures = 0
        except ResponseError as exc:
            self._backlog = False
            await self._on_response_error(exc)
        except TRANSIENT_ERRORS as exc:
            self._backlog = False
            self._failures += 1
            await wait_out(exc, self._failures, self._throttle)
        finally:
            if self._ahead is task and task.done():
                self._ahead = None
        arrived, self._arrived = self._arrived, []
        if arrived:
            await self._intake(arrived)

    async def _ack_and_read(
        self, acked: dict[str, list[ReceivedMessage]], keys: dict[str, str], count: int, block: int | None
    ) -> tuple[list[Any], Any]:
        """The XACKs of ``acked`` and then the XREADGROUP in one round trip on the taker's
        connection: what a redis-py pipeline does, without its per-round-trip machinery and with
        the XACKs packed by :meth:`AckQueue.packed` (together 0.6-0.7 µs per message consumed).
        Error replies are returned, not raised, as ``execute(raise_on_error=False)`` does; a
        connection error or a cancellation drops the connection (as redis-py does), since replies
        may still be on their way, and is raised: the taker never retries (see
        :func:`dedicated_client`)."""
        _, acks = self._parts()
        taker = self._taker
        pool = taker.connection_pool
        connection = await pool.get_connection()
        try:
            # The same read is sent batch after batch: packed once (redis-py packs per argument).
            key = (self.consumer, count, block, *keys.items())
            cached = self._packed_read
            if cached is not None and cached[0] == key:
                packed_read = cached[1]
            else:
                read: list[Any] = ["XREADGROUP", b"GROUP", self.group, self.consumer, b"COUNT", count]
                if block is not None:
                    read += [b"BLOCK", block]
                read += [b"STREAMS", *keys, *keys.values()]
                packed_read = connection.pack_command(*read)
                self._packed_read = (key, packed_read)
            # A list of chunks, not one bytes: a simulated connection packs commands as objects.
            await connection.send_packed_command(
                [acks.packed(acked, connection.encoder.encode), *packed_read]
            )
            replies: list[Any] = []
            for _ in acked:
                try:
                    replies.append(await taker.parse_response(connection, "XACK"))
                except ResponseError as exc:
                    replies.append(exc)
            try:
                response = await taker.parse_response(connection, "XREADGROUP")
            except ResponseError as exc:
                response = exc
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)
        return replies, response

    async def _intake(self, taken: list[Leased]) -> None:
        """Buffer what can be handed out; dead-letter poison and entries past max_deliveries."""
        limit = self._config.max_deliveries
        for stream in sorted({t[0] for t in taken}):
            # The record only speeds up recovery after a crash (the rotating sweep is the net);
            # failing to write it must not drop entries that are already leased.
            await self._guarded(self._membership.holds_on(stream))
        append, group = self._buffer.append, self.group
        for stream, entry_id, fields, count in taken:
            if fields is not None and count <= limit:
                try:
                    payload = decode_fields(fields)
                except PoisonMessageError as exc:
                    await self._dead_letter(Taken(stream, entry_id, fields, count), f"poison message: {exc}")
                    continue
                append(received(payload, stream, entry_id, group, count))
            elif fields is None:
                await self._drop_vanished(Taken(stream, entry_id, fields, count))
            else:
                reason = f"delivered {count - 1} times without acknowledgement (max_deliveries={limit})"
                await self._dead_letter(Taken(stream, entry_id, fields, count), reason)

    async def _dead_letter(self, entry: Taken, reason: str) -> None:
        leases, _ = self._parts()
        try:
            await write_dead_letter(
                self._client,
                self._config,
                stream=entry.stream,
                entry_id=entry.entry_id,
                fields=entry.fields,
                reason=reason,
                group=self.group,
                consumer=self.consumer,
                delivery_count=entry.count,
            )
        except Exception as exc:
            transient = isinstance(exc, TRANSIENT_ERRORS) and setup_error(exc) is None
            if not (transient or is_out_of_memory(exc)):
                raise
            # Still pending and leased: nothing is lost. Try again after the next claim interval.
            self._throttle.warn(
                "could not dead-letter %s %s, will retry: %s", entry.stream, entry.entry_id, exc
            )
            self._parked.append(entry)
            return
        leases.drop(entry.stream, (entry.entry_id,))
        emit(self.metrics, "dead_lettered", stream=entry.stream, group=self.group, error_type="")

    async def _retry_parked(self) -> None:
        parked, self._parked = self._parked, []
        for entry in parked:
            if entry.count > self._config.max_deliveries:
                reason = f"delivered {entry.count - 1} times without acknowledgement"
            else:
                reason = "poison message"
                try:
                    decode_fields(entry.fields)
                except PoisonMessageError as exc:
                    reason = f"poison message: {exc}"
            await self._dead_letter(entry, reason)

    async def _drop_vanished(self, entry: Taken) -> None:
        # A pending entry whose data was trimmed or deleted cannot be delivered; drop it from the
        # pending list so it is not retried forever.
        leases, _ = self._parts()
        log.warning("pending entry %s of %s no longer exists; acknowledging", entry.entry_id, entry.stream)
        leases.drop(entry.stream, (entry.entry_id,))
        # If this fails the entry stays in the pending list, where a later sweep finds it again.
        await self._guarded(self._client.xack(entry.stream, self.group, entry.entry_id))

    # -- errors --------------------------------------------------------------------------

    async def _on_response_error(self, exc: ResponseError) -> None:
        fatal = setup_error(exc)
        if fatal is not None:
            raise fatal from None
        self._failures += 1
        if is_missing_group(exc):
            self._throttle.warn("group %r or its stream vanished (%s); recreating", self.group, exc)
            await self._recreate_groups()
        elif is_wrong_type(exc):
            await self._drop_non_streams()
        elif is_out_of_memory(exc):
            self._throttle.warn("redis is out of memory, backing off: %s", exc)
        else:
            raise exc
        if self._failures > 1:
            await backoff_sleep(self._failures)

    async def _recreate_groups(self) -> None:
        streams = self._streams.streams
        self._grouped.clear()
        # A recreated stream holds only what was written after the loss: deliver all of it.
        await self._create_groups(streams, "0")
        await self._create_group(self._registry.notifications_key, "$")
        # The registry went with the data; restore it for consumers that start later.
        await self._registry.repair(streams)
        await self._membership.heartbeat()
        self._planner.all_hot()
        self._orphan_check.update(streams)

    async def _drop_non_streams(self) -> None:
        streams = self._streams.streams
        kinds = await self._registry.types(streams)
        for stream, kind in kinds.items():
            if kind not in ("stream", "none"):
                self._streams.skip(stream, kind)
        self._planner.track(self._streams.streams)

    async def _guarded(self, call: Any) -> None:
        """Await a maintenance step from the loop; transient failures wait for the next try."""
        try:
            await call
        except TRANSIENT_ERRORS as exc:
            fatal = setup_error(exc)
            if fatal is not None:
                raise fatal from None
            self._throttle.warn("redis unavailable (%s), will retry: %s", type(exc).__name__, exc)

    # -- background: leases, heartbeat, late acknowledgements ----------------------------

    async def _maintain(self) -> None:
        leases, acks = self._parts()
        refresh_s = self._config.lease_refresh_ms / 1000
        next_refresh = time.monotonic() + refresh_s
        while True:
            timeout = max(0.0, next_refresh - time.monotonic())
            if len(acks):
                timeout = min(timeout, ACK_FLUSH_S)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
                if len(acks):
                    await asyncio.sleep(ACK_FLUSH_S)  # let the batch fill; never longer
            except TimeoutError:
                pass
            try:
                await acks.flush()
                if time.monotonic() >= next_refresh and self._in_use():
                    next_refresh = time.monotonic() + refresh_s
                    # Renewing under a name another holds would renew the other's entries:
                    # nothing, once it is lost, until the loop has stepped aside (see _rejoin).
                    if self._membership.lapsed(time.monotonic()) and not await self._membership.heartbeat():
                        self._name_lost = True
                    if not self._name_lost:
                        lost = set(await leases.refresh())
                        if lost:
                            self._buffer = deque(
                                m for m in self._buffer if (m.stream, m.message_id) not in lost
                            )
                        if not await self._membership.heartbeat():
                            self._name_lost = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a background task has no caller; the loop gets fatal ones
                fatal = setup_error(exc)
                if fatal is not None:
                    self._background_error = fatal
                    return
                self._throttle.warn("background lease refresh failed, will retry: %s", exc)

    def _in_use(self) -> bool:
        """False once the task iterating this consumer has died without closing it (cancelled or
        raised while the generator is kept referenced): such a consumer is dead, and its leases
        must lapse so that peers claim its messages after ``claim_idle_ms``. A task that just
        returned the message it asked for is not (see :mod:`abe_redis._liveness`)."""
        if self._caller_alive is not None:
            return self._caller_alive()
        return not caller_gone(self._iterating)

    # -- leaving -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Acknowledge what the caller finished; release everything else so that peers can take
        it at once (messages in hand included: they may not have been handled). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            self._on_close()
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        leases, acks, recovery = self._leases, self._acks, self._recovery
        self._buffer.clear()
        # The release gives back the count of every take no handler saw; one left undone is
        # counted again by the peer that claims the entry after claim_idle_ms. On a lossy link
        # an attempt (a verification, then the release) fails often, so it is tried for half the
        # close's time, not three times in 150 ms (simulate seed 868: three attempts failed in
        # 0.15 s, and a message was dead-lettered at count 5 after three handler deliveries).
        release_until = time.monotonic() + CLOSE_TIMEOUT_S / 2
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                ahead = self._ahead
                if ahead is not None:
                    # A read ahead in flight: its entries are this consumer's once it answers,
                    # and released with the rest. One that does not answer soon is cut off; its
                    # streams are then in the orphan check below.
                    await asyncio.wait({ahead}, timeout=CLOSE_TIMEOUT_S / 4)
                    ahead.cancel()
                    await asyncio.gather(ahead, return_exceptions=True)
                    self._ahead = None
                self._arrived.clear()  # leased: the release below gives them back uncounted
                # Each step is tried on its own, a few times: one connection reset must not leave
                # the rest undone (handled messages unacknowledged, held ones unreleased).
                if leases is not None and acks is not None:
                    await self._closing_step("acknowledge", acks.flush)  # the caller is done with these
                    if self._orphan_check and recovery is not None:
                        # A read cut short (a shutdown cancels the blocking wait) may have left
                        # entries in this consumer's name: take them, so they are released too.
                        streams = sorted(self._orphan_check)
                        await self._closing_step(
                            "find", lambda: recovery.own_pending(streams, 10_000, counted=False)
                        )
                    await self._closing_step("release", leases.release, until=release_until)
                if self._membership.name:
                    streams = [*self._streams.streams, self._registry.notifications_key]
                    await self._closing_step("leave", lambda: self._membership.leave(streams))
        except TimeoutError:
            log.warning(
                "consumer %s: closing took longer than %.0f s; what it still holds becomes claimable "
                "after claim_idle_ms=%d",
                self.consumer,
                CLOSE_TIMEOUT_S,
                self._config.claim_idle_ms,
            )
        finally:
            if self._taker is not None:
                await close_client(self._taker)
            if self._lease_client is not None and self._lease_client is not self._client:
                await close_client(self._lease_client)

    async def _closing_step(
        self, what: str, step: Callable[[], Awaitable[Any]], *, until: float | None = None
    ) -> None:
        """Run ``step``, tried three times on transient errors, and more while ``until`` (a
        ``time.monotonic()`` value) is ahead."""
        attempt = 0
        while True:
            try:
                await step()
                return
            except TRANSIENT_ERRORS as exc:
                attempt += 1
                again = attempt < 3 or (until is not None and time.monotonic() < until)
                if not again or setup_error(exc) is not None:
                    error: BaseException = exc
                    break
                await asyncio.sleep(min(0.05 * attempt, 0.2))
            except Exception as exc:  # closing must never raise out of a finally block
                error = exc
                break
        log.warning(
            "consumer %s: could not %s on close (%s: %s); what it holds becomes claimable after "
            "claim_idle_ms=%d",
            self.consumer,
            what,
            type(error).__name__,
            error,
            self._config.claim_idle_ms,
        )
