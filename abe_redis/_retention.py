"""Retention: trim what every group has acknowledged, and count what a hard cap drops unread.

**Acknowledged-aware trimming** (the default, ``REDIS_RETENTION=acked``) removes only entries that
every consumer group of the stream has acknowledged. The safe point is computed from the groups'
own state, one round trip per stream:

* a group with pending entries has acknowledged everything before its lowest pending id (it
  reads in id order, so everything before that id was delivered, and is no longer pending);
* a group with nothing pending has acknowledged everything up to its ``last-delivered-id``.

``XTRIM <stream> MINID <lowest of those>`` then removes exactly the entries every group is done
with. A stream without groups is never trimmed: nobody has read it. Where the server trims by
acknowledgement itself (Redis 8.2+: ``XTRIM … ACKED``), the flag is added as a second guard; its
support is detected on first use and remembered.

**The hard cap** (``REDIS_STREAM_MAXLEN``) removes the oldest entries whether read or not. It is
applied as ``XTRIM MAXLEN`` inside a transaction with ``XINFO STREAM`` and ``XINFO GROUPS``, so
the number of entries it removed *before a group read them* is computed exactly from the
counters the server keeps (``entries-added``, each group's ``entries-read``) and reported: a
WARNING per stream and group, and the ``trimmed_unread`` metric.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError, ResponseError

from ._config import RedisConfig
from ._registry import StreamRegistry, StreamSet
from .metrics import NULL_METRICS, MetricsHook, emit

__all__ = ["CapResult", "Retention", "TrimResult"]

log = logging.getLogger("abe_redis")

_CHUNK = 100


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_id(value: Any) -> tuple[int, int]:
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


def _next_id(value: Any) -> str:
    ms, seq = _parse_id(value)
    return f"{ms}-{seq + 1}"


@dataclass(frozen=True)
class GroupState:
    name: str
    pending: int
    last_delivered: str
    lag: int | None
    lowest_pending: str | None = None

    @property
    def acked_below(self) -> str:
        """Every entry with a smaller id is acknowledged by this group."""
        if self.pending and self.lowest_pending is not None:
            return self.lowest_pending
        return _next_id(self.last_delivered)


@dataclass(frozen=True)
class TrimResult:
    stream: str
    trimmed: int
    safe_point: str | None
    """``MINID`` used, or ``None`` when nothing could be trimmed (no groups)."""
    groups: tuple[GroupState, ...] = ()


@dataclass(frozen=True)
class CapResult:
    stream: str
    trimmed: int
    unread: dict[str, int] = field(default_factory=dict)
    """Group -> entries removed before that group read them."""


class Retention:
    """Trims streams safely; one instance remembers what the server supports."""

    def __init__(self, client: Any, config: RedisConfig, *, metrics: MetricsHook = NULL_METRICS) -> None:
        self._client = client
        self._config = config
        self.metrics = metrics
        self.server_acked_trim: bool | None = None
        """Whether the server has ``XTRIM … ACKED`` (None: not asked yet)."""
        # The safe point each stream was last trimmed to: ids only grow, so an unchanged point
        # has nothing new below it and needs no XTRIM.
        self._trimmed_to: dict[str, str] = {}

    async def groups(self, stream: str, infos: list[Any] | None = None) -> list[GroupState]:
        """Each group's pending count, last delivered id, lag and lowest pending id
        (``infos``: the stream's ``XINFO GROUPS`` reply, if already read)."""
        if infos is None:
            infos = await self._client.xinfo_groups(stream)
        busy = [info for info in infos if int(info["pending"])]
        lowest: dict[str, str] = {}
        if busy:
            async with self._client.pipeline(transaction=False) as pipe:
                for info in busy:
                    pipe.xpending(stream, info["name"])
                replies = await pipe.execute()
            for info, summary in zip(busy, replies, strict=True):
                if summary.get("min") is not None:
                    lowest[_text(info["name"])] = _text(summary["min"])
        states = []
        for info in infos:
            name = _text(info["name"])
            lag = info.get("lag")
            states.append(
                GroupState(
                    name=name,
                    pending=int(info["pending"]),
                    last_delivered=_text(info["last-delivered-id"]),
                    lag=int(lag) if lag is not None else None,
                    lowest_pending=lowest.get(name),
                )
            )
        return states

    async def trim(self, stream: str, infos: list[Any] | None = None) -> TrimResult:
        """Remove the entries every group of ``stream`` has acknowledged; report pending and lag."""
        states = await self.groups(stream, infos)
        for state in states:
            emit(self.metrics, "pending", state.pending, stream=stream, group=state.name)
            if state.lag is not None:
                emit(self.metrics, "lag", state.lag, stream=stream, group=state.name)
        if not states:
            return TrimResult(stream, 0, None)
        point = min((s.acked_below for s in states), key=_parse_id)
        if self._trimmed_to.get(stream) == point:
            return TrimResult(stream, 0, point, tuple(states))
        trimmed = await self._xtrim_minid(stream, point)
        if len(self._trimmed_to) >= 100_000:
            self._trimmed_to.clear()
        self._trimmed_to[stream] = point
        if trimmed:
            emit(self.metrics, "trimmed", trimmed, stream=stream)
            log.debug(
                "trimmed %d acknowledged entries of %s below %s",
                trimmed,
                stream,
                point,
                extra={"stream": stream, "trimmed": trimmed, "safe_point": point},
            )
        return TrimResult(stream, trimmed, point, tuple(states))

    async def _xtrim_minid(self, stream: str, point: str) -> int:
        if self.server_acked_trim is not False:
            try:
                trimmed = int(await self._client.execute_command("XTRIM", stream, "MINID", point, "ACKED"))
            except ResponseError as exc:
                if "syntax" not in str(exc).lower() and "arg" not in str(exc).lower():
                    raise
                self.server_acked_trim = False
            else:
                self.server_acked_trim = True
                return trimmed
        return int(await self._client.xtrim(stream, minid=point, approximate=False))

    async def cap(self, stream: str, maxlen: int) -> CapResult:
        """Trim ``stream`` to ``maxlen`` entries, oldest first, counting per group what went
        unread; every unread loss is logged at WARNING and reported as ``trimmed_unread``."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xinfo_stream(stream)
            pipe.xinfo_groups(stream)
            pipe.xtrim(stream, maxlen=maxlen, approximate=False)
            info, groups, trimmed = await pipe.execute()
        trimmed = int(trimmed)
        result = CapResult(stream, trimmed)
        if not trimmed:
            return result
        emit(self.metrics, "trimmed", trimmed, stream=stream)
        added = int(info.get("entries-added") or 0)
        removed_before = added - int(info["length"])
        exact = _text(info.get("max-deleted-entry-id", "0-0")) in ("0-0", "None")
        for group in groups:
            name = _text(group["name"])
            read = group.get("entries-read")
            if _parse_id(group["last-delivered-id"]) == (0, 0):
                read = 0
            if read is None or not exact:
                # The counters cannot tell (XDEL left gaps, or the group was moved by SETID):
                # report every removed entry as possibly unread rather than under-report a loss.
                unread = trimmed
            else:
                # Of the `trimmed` oldest entries, those with an id up to last-delivered were read.
                read_and_present = max(0, int(read) - removed_before)
                unread = trimmed - min(trimmed, read_and_present)
            if unread:
                result.unread[name] = unread
                emit(self.metrics, "trimmed_unread", unread, stream=stream, group=name)
                log.warning(
                    "hard cap REDIS_STREAM_MAXLEN=%d removed %d entries of %s that group %s had not "
                    "read: they are lost to it",
                    maxlen,
                    unread,
                    stream,
                    name,
                    extra={"stream": stream, "group": name, "unread_trimmed": unread, "maxlen": maxlen},
                )
        return result

    async def pass_over(self, streams: list[str]) -> tuple[int, int]:
        """One retention pass: acknowledged-aware trim, then the hard cap if configured.
        Returns (entries trimmed, of which unread). A stream that fails is skipped this time."""
        trimmed = unread = 0
        maxlen = self._config.stream_maxlen
        for start in range(0, len(streams), _CHUNK):
            chunk = streams[start : start + _CHUNK]
            # One round trip reads the groups (and length) of a whole chunk of streams.
            async with self._client.pipeline(transaction=False) as pipe:
                for stream in chunk:
                    pipe.xinfo_groups(stream)
                    pipe.xlen(stream)
                replies = await pipe.execute(raise_on_error=False)
            for i, stream in enumerate(chunk):
                infos, length = replies[2 * i], replies[2 * i + 1]
                if isinstance(infos, Exception) or isinstance(length, Exception):
                    continue  # gone, or not a stream any more: nothing to trim
                done, lost = await self._pass_one(stream, infos, int(length), maxlen)
                trimmed += done
                unread += lost
        return trimmed, unread

    async def _pass_one(
        self, stream: str, infos: list[Any], length: int, maxlen: int | None
    ) -> tuple[int, int]:
        trimmed = unread = 0
        try:
            result = await self.trim(stream, infos)
            trimmed += result.trimmed
            if maxlen is not None and length - result.trimmed > maxlen:
                capped = await self.cap(stream, maxlen)
                trimmed += capped.trimmed
                unread += sum(capped.unread.values())
        except (RedisError, KeyError, ValueError) as exc:
            log.info(
                "retention skipped %s this time: %s",
                stream,
                type(exc).__name__,
                extra={"stream": stream, "error_type": type(exc).__name__},
            )
        return trimmed, unread

    async def run_periodically(self, registry: StreamRegistry, interval_s: float) -> None:
        """Pass over every discovered stream every ``interval_s`` (a consumer runs this)."""
        streams = StreamSet(registry, self._config)
        while True:
            await asyncio.sleep(interval_s)
            try:
                await streams.refresh()
                await self.pass_over(list(streams.streams))
            except Exception as exc:  # a background task has no caller: log, try next time
                log.warning(
                    "retention pass failed, will retry: %s",
                    type(exc).__name__,
                    extra={"error_type": type(exc).__name__},
                )


class CapGuard:
    """Applies ``REDIS_STREAM_MAXLEN`` from the publishing side: every ``every`` publishes to a
    stream (a tenth of the cap, at most 1,000), one counted :meth:`Retention.cap`. A stream thus
    exceeds the cap by at most ``every`` entries per publishing process between trims."""

    _LIMIT = 10_000

    def __init__(self, client: Any, config: RedisConfig) -> None:
        self._retention = Retention(client, config)
        self._maxlen = config.stream_maxlen
        self.every = max(1, min(config.stream_maxlen // 10, 1000)) if config.stream_maxlen else 0
        self._since: dict[str, int] = {}
        self._busy: set[str] = set()

    async def published(self, stream: str, metrics: MetricsHook = NULL_METRICS, *, entries: int = 1) -> None:
        """Note ``entries`` new entries of ``stream``; trims when enough have come."""
        if self._maxlen is None:
            return
        count = self._since.get(stream, 0) + entries
        if count < self.every or stream in self._busy:
            if len(self._since) >= self._LIMIT and stream not in self._since:
                self._since.clear()
            self._since[stream] = count
            return
        self._since[stream] = 0
        self._busy.add(stream)
        self._retention.metrics = metrics
        try:
            await self._retention.cap(stream, self._maxlen)
        except RedisError as exc:
            # The entry is written; a failed trim is retried after the next `every` publishes.
            log.warning(
                "could not apply REDIS_STREAM_MAXLEN=%d to %s: %s",
                self._maxlen,
                stream,
                type(exc).__name__,
                extra={"stream": stream, "maxlen": self._maxlen, "error_type": type(exc).__name__},
            )
        finally:
            self._busy.discard(stream)
