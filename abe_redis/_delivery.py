"""The consume loops: at-least-once group delivery, and broadcast.

Group delivery, in the order a consumer does things:

1. discover streams and make sure the group exists on each (``XGROUP CREATE ... MKSTREAM``);
2. replay its *own* pending entries (a restarted consumer with a stable name resumes them; on an
   old fakeredis that parks blocked reads in the pending list, this is what returns them);
3. every claim interval, take over entries idle longer than ``claim_idle_ms`` from any consumer
   (``XAUTOCLAIM``): the messages of crashed or cancelled consumers;
4. read new entries (``XREADGROUP ... >``, blocking ``block_ms``);
5. yield each payload; acknowledge it only when the caller asks for the next one.

Entries that cannot be decoded, or that were delivered more than ``max_deliveries`` times, go
to the dead-letter stream and are acknowledged there, never yielded. A deleted stream or group
(FLUSHALL, DEL, a restart without persistence) is recreated and reading goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._codec import decode_fields
from ._config import RedisConfig
from ._dead_letters import dead_letter
from ._errors import PoisonMessageError
from ._message import ReceivedMessage
from ._streams import StreamDiscovery, to_str

log = logging.getLogger("abe_redis")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
_MAX_BACKOFF_S = 2.0
ACK_FLUSH_S = 0.1
"""Acknowledgements of handled messages are sent in batches, but never held longer than this:
a handled message left pending grows idle and would be claimed (and handled) again."""
_LOG_EVERY_S = 5.0

Entry = tuple[str, str, dict[Any, Any] | None]
"""(stream, entry id, fields) — fields is None for an entry deleted while pending."""


def is_missing_group(exc: ResponseError) -> bool:
    """NOGROUP, or Redis 7.0's answer to a *blocked* read whose stream was deleted."""
    text = str(exc)
    return text.startswith("NOGROUP") or text.startswith("UNBLOCKED") or "no longer exists" in text


def stream_entries(response: Any) -> list[Entry]:
    """Normalise an XREAD/XREADGROUP reply (RESP2 list or RESP3 map) to a flat list."""
    if not response:
        return []
    pairs: Iterable[Any] = response.items() if isinstance(response, dict) else response
    flat: list[Entry] = []
    for stream, entries in pairs:
        name = to_str(stream)
        if entries and isinstance(entries[0], list) and len(entries) == 1 and isinstance(entries[0][0], list):
            entries = entries[0]  # RESP3 wraps the entry list once more
        for entry_id, fields in entries:
            flat.append((name, to_str(entry_id), fields))
    return flat


class _Throttle:
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


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


async def backoff_sleep(failures: int) -> None:
    delay = min(_MAX_BACKOFF_S, 0.05 * 2 ** min(failures, 10))
    await asyncio.sleep(delay / 2 + random.random() * delay / 2)


class GroupReader:
    """One consumer in one group; :meth:`messages` is the generator ``consume()`` returns."""

    def __init__(
        self,
        client: Redis,
        config: RedisConfig,
        *,
        group: str,
        consumer: str,
        discovery: StreamDiscovery,
        forget_consumer: bool,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        # Any: redis-py types stream replies as wide unions that depend on RESP version and
        # decode_responses; the shapes are normalised by stream_entries() and to_str() instead.
        self._client: Any = client
        self._config = config
        self.group = group
        self.consumer = consumer
        self._discovery = discovery
        self._forget_consumer = forget_consumer
        self._on_close = on_close
        self._streams: list[str] = []
        self._grouped: set[str] = set()
        self._buffer: deque[ReceivedMessage] = deque()
        self._acks_due: list[ReceivedMessage] = []
        self._acks_due_since = 0.0
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_tasks: set[asyncio.Task[None]] = set()
        self._replay_cursor: dict[str, str] | None = None
        self._count_replays = True
        self._claim_cursor: dict[str, str] = {}
        self._next_discovery = 0.0
        self._next_claim = 0.0
        self._failures = 0
        self._throttle = _Throttle()

    async def messages(self) -> AsyncGenerator[ReceivedMessage]:
        in_flight: ReceivedMessage | None = None
        try:
            while True:
                if not self._buffer:
                    await self._fill()
                    continue
                in_flight = self._buffer.popleft()
                yield in_flight
                # The caller asked for the next message: it is done with this one.
                if not in_flight.acked:
                    if not self._acks_due:
                        self._acks_due_since = time.monotonic()
                    self._acks_due.append(in_flight)
                in_flight = None
                if self._acks_due and (
                    not self._buffer
                    or len(self._acks_due) >= self._config.batch_size
                    or time.monotonic() - self._acks_due_since >= ACK_FLUSH_S
                ):
                    await self._flush_acks()
                elif self._acks_due and self._ack_timer is None:
                    # The next handler may run long; do not let these acks wait for it.
                    self._ack_timer = asyncio.get_running_loop().call_later(ACK_FLUSH_S, self._flush_later)
        finally:
            await self._close()

    def _flush_later(self) -> None:
        self._ack_timer = None
        if self._acks_due:
            task = asyncio.ensure_future(self._flush_acks_quietly())
            self._ack_tasks.add(task)
            task.add_done_callback(self._ack_tasks.discard)

    async def _flush_acks_quietly(self) -> None:
        try:
            await self._flush_acks()
        except Exception as exc:  # a background task has no caller to raise to
            self._throttle.warn("background ack failed, will retry: %s", exc)

    async def _flush_acks(self) -> None:
        """XACK every handled message, one command per stream; on a connection error keep them
        for the next flush (unacknowledged is safe: at worst they are delivered again)."""
        due, self._acks_due = self._acks_due, []
        by_stream: dict[str, list[ReceivedMessage]] = {}
        for message in due:
            if not message.acked:
                by_stream.setdefault(message.stream, []).append(message)
        for stream, messages in by_stream.items():
            try:
                await self._client.xack(stream, self.group, *(m.message_id for m in messages))
            except TRANSIENT_ERRORS as exc:
                self._throttle.warn(
                    "ack of %d messages of %s failed, will retry: %s", len(messages), stream, exc
                )
                self._acks_due.extend(messages)
                continue
            except ResponseError as exc:
                if not is_missing_group(exc):
                    raise
                # The group is gone, and its pending list with it: nothing left to acknowledge.
            for message in messages:
                message.acked = True

    # -- filling the buffer ------------------------------------------------------------

    async def _fill(self) -> None:
        try:
            if self._ack_tasks:
                await asyncio.gather(*self._ack_tasks, return_exceptions=True)
            if self._acks_due:
                await self._flush_acks()
            now = time.monotonic()
            if now >= self._next_discovery:
                await self._refresh_streams()
                self._next_discovery = now + self._config.discovery_interval_ms / 1000
            if not self._streams:
                await asyncio.sleep(min(self._config.discovery_interval_ms, self._config.block_ms) / 1000)
                return
            replaying = self._replay_cursor is None or bool(self._replay_cursor)
            if replaying and await self._replay_own_pending():
                return
            if now >= self._next_claim:
                self._next_claim = now + self._config.effective_claim_interval_ms / 1000
                if not self._acks_due:
                    # Here the buffer is empty and every handled message is acknowledged, so
                    # anything still pending for this consumer was read but never yielded: a
                    # reply lost in transit that redis-py's retry papered over. Take it back now
                    # rather than after claim_idle_ms.
                    self._replay_cursor = None
                    if await self._replay_own_pending():
                        return
                if await self._claim_idle():
                    return
            await self._read_new()
            self._failures = 0
        except ResponseError as exc:
            if not is_missing_group(exc):
                raise
            await self._recreate_groups(exc)
        except TRANSIENT_ERRORS as exc:
            self._failures += 1
            self._throttle.warn("redis unavailable (%s), retrying: %s", type(exc).__name__, exc)
            # Whatever was in flight may have been claimed meanwhile; re-read the pending list.
            self._replay_cursor = None
            await backoff_sleep(self._failures)

    async def _refresh_streams(self) -> None:
        # A stream once known stays known: the registry itself may have been flushed while the
        # stream lives on (or is recreated by the next publish).
        streams = sorted(set(self._streams).union(await self._discovery.discover()))
        for stream in streams:
            if stream not in self._grouped:
                await self._create_group(stream, self._config.group_start_id)
        self._streams = streams

    async def _create_group(self, stream: str, start_id: str) -> None:
        try:
            await self._client.xgroup_create(stream, self.group, id=start_id, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._grouped.add(stream)

    async def _recreate_groups(self, exc: ResponseError) -> None:
        self._failures += 1
        self._throttle.warn("group %r or its stream vanished (%s); recreating", self.group, exc)
        self._grouped.clear()
        for stream in self._streams:
            # A recreated stream holds only what was written after the loss: deliver all of it.
            await self._create_group(stream, "0")
        if self._streams:
            # The registry went with the data; restore it for consumers that start later.
            await self._client.sadd(self._config.registry_key, *self._streams)
        self._replay_cursor = None
        self._claim_cursor.clear()
        if self._failures > 1:
            await backoff_sleep(self._failures)

    async def _read_new(self) -> None:
        started = time.monotonic()
        response = await self._client.xreadgroup(
            self.group,
            self.consumer,
            dict.fromkeys(self._streams, ">"),
            count=self._config.batch_size,
            block=self._config.block_ms,
        )
        entries = stream_entries(response)
        if not entries and time.monotonic() - started < self._config.block_ms / 10_000:
            # A blocking read that comes back empty at once is a broken server or fake (fakeredis
            # < 2.41 does this with COUNT); pause rather than spin.
            await asyncio.sleep(min(self._config.block_ms, 100) / 1000)
        await self._accept([(entry, 1) for entry in entries])

    async def _replay_own_pending(self) -> bool:
        """Take back this consumer's pending entries, one page per call.

        The first replay after start counts as a delivery (XCLAIM raises the counter): the
        previous process under this name may have died handling these, and a message that keeps
        killing its consumer must still reach max_deliveries. Later replays (after a connection
        error, or the orphan sweep) take back entries whose *reply* was lost: they never reached
        a handler, so they are claimed with JUSTID and read with XRANGE, leaving the counter as is.
        """
        if self._replay_cursor is None:
            self._replay_cursor = dict.fromkeys(self._streams, "-")
        handled = {m.message_id for m in self._acks_due}  # done, only their XACK is outstanding
        for stream, cursor in list(self._replay_cursor.items()):
            pending = await self._client.xpending_range(
                stream,
                self.group,
                min=cursor,
                max="+",
                count=self._config.batch_size,
                consumername=self.consumer,
            )
            if not pending:
                del self._replay_cursor[stream]
                continue
            self._replay_cursor[stream] = _next_id(to_str(pending[-1]["message_id"]))
            counts = {
                to_str(p["message_id"]): int(p["times_delivered"])
                for p in pending
                if to_str(p["message_id"]) not in handled
            }
            if not counts:
                return True
            if self._count_replays:
                claimed = await self._client.xclaim(stream, self.group, self.consumer, 0, list(counts))
                entries = [(to_str(i), f) for i, f in claimed]
                counts = {i: n + 1 for i, n in counts.items()}
            else:
                # JUSTID: reset the idle time (so no one else claims them meanwhile), keep the count.
                await self._client.xclaim(stream, self.group, self.consumer, 0, list(counts), justid=True)
                entries = await self._entries_by_id(stream, list(counts))
            found = {entry_id for entry_id, _ in entries}
            await self._accept([((stream, i, f), counts[i]) for i, f in entries])
            await self._ack_vanished(stream, [i for i in counts if i not in found])
            return True
        self._count_replays = False
        return False

    async def _entries_by_id(self, stream: str, entry_ids: list[str]) -> list[tuple[str, Any]]:
        async with self._client.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
            replies = await pipe.execute()
        return [(to_str(found[0][0]), found[0][1]) for found in replies if found]

    async def _claim_idle(self) -> bool:
        """XAUTOCLAIM entries idle longer than claim_idle_ms from any consumer of the group."""
        got = False
        for stream in self._streams:
            reply = await self._client.xautoclaim(
                stream,
                self.group,
                self.consumer,
                min_idle_time=self._config.claim_idle_ms,
                start_id=self._claim_cursor.get(stream, "0-0"),
                count=self._config.batch_size,
            )
            self._claim_cursor[stream] = to_str(reply[0])
            claimed = [(to_str(i), f) for i, f in reply[1] if i is not None]
            if not claimed:
                continue
            if self._claim_cursor[stream] != "0-0":
                self._next_claim = 0.0  # more waiting: claim again on the next fill
            pending = await self._client.xpending_range(
                stream,
                self.group,
                min=claimed[0][0],
                max=claimed[-1][0],
                count=len(claimed) * 2 + 10,
                consumername=self.consumer,
            )
            counts = {to_str(p["message_id"]): int(p["times_delivered"]) for p in pending}
            log.info("claimed %d idle entries of %s in group %s", len(claimed), stream, self.group)
            await self._accept([((stream, i, f), counts.get(i, 1)) for i, f in claimed])
            got = True
        return got

    async def _ack_vanished(self, stream: str, entry_ids: list[str]) -> None:
        # Pending entries whose data was trimmed or deleted cannot be delivered; drop them from
        # the pending list so they are not retried forever.
        if entry_ids:
            log.warning("%d pending entries of %s no longer exist; acknowledging", len(entry_ids), stream)
            await self._client.xack(stream, self.group, *entry_ids)

    async def _accept(self, entries: list[tuple[Entry, int]]) -> None:
        for (stream, entry_id, fields), count in entries:
            reason: str | None = None
            payload: dict[str, Any] = {}
            limit = self._config.max_deliveries
            if count > limit:
                reason = f"delivered {count - 1} times without acknowledgement (max_deliveries={limit})"
            else:
                try:
                    payload = decode_fields(fields)
                except PoisonMessageError as exc:
                    reason = f"poison message: {exc}"
            if reason is not None:
                if fields is None:
                    await self._ack_vanished(stream, [entry_id])
                    continue
                await dead_letter(
                    self._client,
                    self._config,
                    stream=stream,
                    entry_id=entry_id,
                    fields=fields,
                    reason=reason,
                    group=self.group,
                    consumer=self.consumer,
                    delivery_count=count,
                )
                continue
            self._buffer.append(
                ReceivedMessage(
                    payload, stream=stream, message_id=entry_id, group=self.group, delivery_count=count
                )
            )

    # -- leaving -------------------------------------------------------------------------

    async def _close(self) -> None:
        if self._on_close is not None:
            self._on_close()
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        try:
            async with asyncio.timeout(2.0):
                if self._ack_tasks:
                    await asyncio.gather(*self._ack_tasks, return_exceptions=True)
                await self._flush_acks()  # the caller moved past these: they are handled
                await self._release_unyielded()
                if self._forget_consumer:
                    await self._delete_consumer_if_idle()
        except Exception as exc:  # closing must never raise out of a finally block
            log.debug("consumer %s: cleanup on close skipped: %s", self.consumer, exc)

    async def _release_unyielded(self) -> None:
        """Entries read but never yielded are certainly unprocessed: make them claimable now.

        XCLAIM to ourselves with IDLE set to the claim timeout (JUSTID, so the delivery count is
        not raised) lets any other consumer's next XAUTOCLAIM take them at once.
        """
        by_stream: dict[str, list[str]] = {}
        for message in self._buffer:
            by_stream.setdefault(message.stream, []).append(message.message_id)
        self._buffer.clear()
        for stream, ids in by_stream.items():
            await self._client.xclaim(
                stream, self.group, self.consumer, 0, ids, idle=self._config.claim_idle_ms, justid=True
            )

    async def _delete_consumer_if_idle(self) -> None:
        """Forget an automatically named consumer that holds nothing, so groups do not fill up
        with dead names. A consumer with pending entries stays: deleting it would drop them."""
        for stream in self._streams:
            consumers = await self._client.xinfo_consumers(stream, self.group)
            for info in consumers:
                if to_str(info["name"]) == self.consumer and int(info["pending"]) == 0:
                    await self._client.xgroup_delconsumer(stream, self.group, self.consumer)


class BroadcastReader:
    """Every instance receives every message published after it started; no group state."""

    def __init__(self, client: Redis, config: RedisConfig, *, discovery: StreamDiscovery) -> None:
        self._client: Any = client
        self._config = config
        self._discovery = discovery
        self._throttle = _Throttle()

    async def messages(self) -> AsyncGenerator[ReceivedMessage]:
        seconds, micros = await self._client.time()
        # Everything from the start millisecond on; the server's clock, not ours.
        start = f"{int(seconds) * 1000 + int(micros) // 1000 - 1}-18446744073709551615"
        last: dict[str, str] = {}
        next_discovery = 0.0
        failures = 0
        while True:
            try:
                if time.monotonic() >= next_discovery:
                    for stream in await self._discovery.discover():
                        last.setdefault(stream, start)
                    next_discovery = time.monotonic() + self._config.discovery_interval_ms / 1000
                if not last:
                    await asyncio.sleep(self._config.discovery_interval_ms / 1000)
                    continue
                response = await self._client.xread(
                    dict(last), count=self._config.batch_size, block=self._config.block_ms
                )
                failures = 0
            except TRANSIENT_ERRORS as exc:
                failures += 1
                self._throttle.warn("redis unavailable (%s), retrying: %s", type(exc).__name__, exc)
                await backoff_sleep(failures)
                continue
            except ResponseError as exc:
                if not is_missing_group(exc):
                    raise
                continue
            for stream, entry_id, fields in stream_entries(response):
                last[stream] = entry_id
                try:
                    payload = decode_fields(fields)
                except PoisonMessageError as exc:
                    # Without a group there is no one place to dead-letter to; every broadcast
                    # consumer sees the same entry, so each logs and skips it.
                    self._throttle.warn("skipping poison entry %s %s: %s", stream, entry_id, exc)
                    continue
                yield ReceivedMessage(payload, stream=stream, message_id=entry_id, group=None)
