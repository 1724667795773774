"""A lean in-process Redis: exactly the commands the backend sends, on their argument lists.

The simulation's default server. fakeredis implements all of Redis, parses every command
through a generic signature layer and serialises every reply; a schedule spent a quarter of its
time there. :class:`ModelServer` implements the strings, sets, sorted sets and streams (consumer
groups, pending lists, ``XCLAIM``/``XAUTOCLAIM``/``XPENDING``/``XINFO``) the backend uses,
``WATCH``/``MULTI``/``EXEC`` and ``HELLO``, and answers with what redis-py's RESP parser makes
of Redis' reply (``bytes``, ``int``, ``float``, lists, dicts for RESP3 maps, ``None``, and
:class:`ResponseError` with Redis' error text). The differential fuzzer
(``tests/abe_redis_testing/simulation/streams_differential.py``) holds it to a real
``redis-server`` as it holds fakeredis; a command it does not know is recorded in
:attr:`ModelServer.unsupported` and fails the run rather than being guessed at.

It follows Redis 7.4 by default (``version=(7, 0)`` for 7.0's consumer creation and XINFO fields)
and reads the clock through ``time.time()``, which the simulation makes virtual.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis._parsers.base import BaseParser
from redis.exceptions import ResponseError

__all__ = ["BLOCKED", "Blocked", "ClientState", "ModelServer"]

StreamID = tuple[int, int]
_MAX_ID: StreamID = (2**64 - 1, 2**64 - 1)
_MIN_ID: StreamID = (0, 0)
_NODE_ENTRIES = 100
"""Redis' ``stream-node-max-entries``: an approximate trim (``MAXLEN ~``) removes whole nodes."""


def _error(message: str) -> ResponseError:
    # As redis-py's parser turns an error reply into an exception ("ERR " stripped, EXECABORT
    # and the like into their own classes).
    error: ResponseError = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    return error


_WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
_SYNTAX = "ERR syntax error"
_NOT_INT = "ERR value is not an integer or out of range"
_BAD_ID = "ERR Invalid stream ID specified as stream command argument"
_NO_KEY_GROUP = (
    "ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use "
    "the MKSTREAM option to create an empty stream automatically."
)


class _CommandError(Exception):
    """An error reply: raised inside a command, answered as a :class:`ResponseError`."""


def _fail(message: str) -> _CommandError:
    return _CommandError(message)


def _int(arg: bytes) -> int:
    try:
        return int(arg)
    except ValueError:
        raise _fail(_NOT_INT) from None


def _id_bytes(entry_id: StreamID) -> bytes:
    return b"%d-%d" % entry_id


def _parse_id(arg: bytes, *, missing_seq: int = 0, strict: bool = False) -> StreamID:
    """``ms-seq``, or ``ms`` alone (its sequence ``missing_seq``) unless ``strict``."""
    ms, dash, seq = arg.partition(b"-")
    try:
        if not dash:
            if strict:
                raise ValueError
            return int(ms), missing_seq
        return int(ms), int(seq)
    except ValueError:
        raise _fail(_BAD_ID) from None


def _range_bound(arg: bytes, *, start: bool) -> tuple[StreamID, bool]:
    """An XRANGE/XPENDING bound: (id, exclusive)."""
    if arg == b"-":
        return _MIN_ID, False
    if arg == b"+":
        return _MAX_ID, False
    exclusive = arg.startswith(b"(")
    entry_id = _parse_id(arg[1:] if exclusive else arg, missing_seq=0 if start else 2**64 - 1)
    return entry_id, exclusive


def _score(arg: bytes) -> float:
    text = arg.lower()
    try:
        if text in (b"-inf", b"+inf", b"inf"):
            return float(text)
        return float(arg)
    except ValueError:
        raise _fail("ERR value is not a valid float") from None


def _score_bound(arg: bytes) -> tuple[float, bool]:
    if arg.startswith(b"("):
        return _score(arg[1:]), True
    return _score(arg), False


def _format_score(score: float) -> bytes:
    if score == int(score) and abs(score) < 1e17:
        return b"%d" % int(score)
    return repr(score).encode()


@dataclass(slots=True)
class _Nack:
    consumer: _Consumer
    delivery_time: int
    delivery_count: int


@dataclass(slots=True)
class _Consumer:
    name: bytes
    seen_time: int
    active_time: int = -1
    pel: dict[StreamID, _Nack] = field(default_factory=dict)


@dataclass(slots=True)
class _Group:
    last_id: StreamID
    entries_read: int  # -1: unknown
    pel: dict[StreamID, _Nack] = field(default_factory=dict)
    consumers: dict[bytes, _Consumer] = field(default_factory=dict)

    def sorted_pel(self) -> list[StreamID]:
        return sorted(self.pel)


@dataclass(slots=True)
class _Stream:
    ids: list[StreamID] = field(default_factory=list)
    fields: dict[StreamID, list[bytes]] = field(default_factory=dict)
    last_id: StreamID = _MIN_ID
    max_deleted: StreamID = _MIN_ID
    entries_added: int = 0
    groups: dict[bytes, _Group] = field(default_factory=dict)

    def first_id(self) -> StreamID:
        return self.ids[0] if self.ids else _MIN_ID

    def entry(self, entry_id: StreamID) -> list[Any]:
        return [_id_bytes(entry_id), self.fields[entry_id]]

    def after(self, entry_id: StreamID, count: int) -> list[StreamID]:
        start = bisect.bisect_right(self.ids, entry_id)
        return self.ids[start : start + count] if count else self.ids[start:]

    def delete(self, entry_id: StreamID) -> bool:
        if entry_id not in self.fields:
            return False
        del self.fields[entry_id]
        self.ids.pop(bisect.bisect_left(self.ids, entry_id))
        self.max_deleted = max(self.max_deleted, entry_id)
        return True

    def has_tombstones(self, start: StreamID) -> bool:
        # Redis' streamRangeHasTombstones(start, +inf).
        if not self.ids or self.max_deleted == _MIN_ID or self.ids[0] > self.max_deleted:
            return False
        return start <= self.max_deleted

    def estimate_read(self, entry_id: StreamID) -> int:
        # Redis' streamEstimateDistanceFromFirstEverEntry.
        if not self.entries_added:
            return 0
        if not self.ids and entry_id <= self.last_id:
            return self.entries_added
        if entry_id == self.last_id:
            return self.entries_added
        if entry_id > self.last_id:
            return -1
        first = self.ids[0]
        if self.max_deleted == _MIN_ID or self.max_deleted < first:
            if entry_id < first:
                return self.entries_added - len(self.ids)
            if entry_id == first:
                return self.entries_added - len(self.ids) + 1
        return -1

    def lag(self, group: _Group) -> int | None:
        if not self.entries_added:
            return 0
        if group.entries_read != -1 and not self.has_tombstones(group.last_id):
            return self.entries_added - group.entries_read
        read = self.estimate_read(group.last_id)
        return None if read == -1 else self.entries_added - read

    def advance(self, group: _Group, entry_id: StreamID) -> None:
        if entry_id <= group.last_id:
            return
        if group.entries_read != -1 and not self.has_tombstones(entry_id):
            group.entries_read += 1
        elif self.entries_added:
            group.entries_read = self.estimate_read(entry_id)
        group.last_id = entry_id


class Blocked:
    """A blocking read that found nothing: the connection waits for a write to ``keys`` (then
    runs ``command`` again) or for ``timeout_s`` (``0``: forever), then answers nil."""

    __slots__ = ("command", "keys", "timeout_s")

    def __init__(self, command: list[bytes], keys: tuple[bytes, ...], timeout_s: float) -> None:
        self.command = command
        self.keys = keys
        self.timeout_s = timeout_s


BLOCKED = Blocked
"""The type of a reply that means "blocked": see :class:`Blocked`."""


@dataclass(slots=True, eq=False)
class ClientState:
    """One connection's session: protocol, watched keys, a transaction being queued."""

    protocol: int = 2
    watched: set[bytes] = field(default_factory=set)
    dirty: bool = False
    queued: list[list[bytes]] | None = None
    queue_error: bool = False


_Value = Any  # bytes | set[bytes] | dict[bytes, float] | _Stream
_TYPES = {bytes: b"string", set: b"set", dict: b"zset", _Stream: b"stream"}


class ModelServer:
    """The data and the commands. :meth:`execute` runs one command for one client."""

    def __init__(
        self, *, version: tuple[int, ...] = (7, 4), clock: Callable[[], float] | None = None
    ) -> None:
        self.version = version
        # time.time looked up at each call: the simulation replaces it while a run lasts.
        self._clock = clock or (lambda: time.time())
        self.data: dict[bytes, _Value] = {}
        self.expires: dict[bytes, int] = {}
        self.watchers: dict[bytes, set[ClientState]] = {}
        self.waiters: dict[bytes, dict[Any, None]] = {}
        """Per stream key, the callbacks of reads blocked on it, in the order they blocked."""
        self.unsupported: list[str] = []
        self._now_ms = 0
        self._client_ids = 0
        self._commands: dict[bytes, Callable[[ClientState, list[bytes]], Any]] = {
            b"GET": self._get,
            b"SET": self._set,
            b"PEXPIRE": self._pexpire,
            b"DEL": self._del,
            b"EXISTS": self._exists,
            b"TYPE": self._type,
            b"INCRBY": self._incrby,
            b"SADD": self._sadd,
            b"SREM": self._srem,
            b"SMEMBERS": self._smembers,
            b"SISMEMBER": self._sismember,
            b"ZADD": self._zadd,
            b"ZREM": self._zrem,
            b"ZRANGEBYSCORE": self._zrangebyscore,
            b"XADD": self._xadd,
            b"XLEN": self._xlen,
            b"XRANGE": self._xrange,
            b"XREVRANGE": self._xrevrange,
            b"XDEL": self._xdel,
            b"XTRIM": self._xtrim,
            b"XGROUP": self._xgroup,
            b"XREADGROUP": self._xreadgroup,
            b"XACK": self._xack,
            b"XCLAIM": self._xclaim,
            b"XAUTOCLAIM": self._xautoclaim,
            b"XPENDING": self._xpending,
            b"XINFO": self._xinfo,
            b"PING": lambda client, args: b"PONG",
            b"FLUSHALL": self._flushall,
            b"SELECT": self._select,
            b"CLIENT": lambda client, args: b"OK",
        }

    # -- the entry point -------------------------------------------------------------

    def new_client(self) -> ClientState:
        self._client_ids += 1
        return ClientState()

    def execute(self, client: ClientState, args: list[bytes]) -> Any:
        """The reply to ``args`` (an exception instance for an error reply, :class:`Blocked` for
        a read that must wait)."""
        name = args[0].upper()
        queued = client.queued
        if queued is not None and name not in (b"EXEC", b"DISCARD", b"MULTI", b"WATCH"):
            if name not in self._commands:
                client.queue_error = True
                return self._unknown(args)
            queued.append(args)
            return b"QUEUED"
        if name == b"MULTI":
            if queued is not None:
                return _error("ERR MULTI calls can not be nested")
            client.queued = []
            client.queue_error = False
            return b"OK"
        if name == b"EXEC":
            return self._exec(client)
        if name == b"DISCARD":
            if queued is None:
                return _error("ERR DISCARD without MULTI")
            self._unwatch(client)
            client.queued = None
            return b"OK"
        if name == b"WATCH":
            if queued is not None:
                return _error("ERR WATCH inside MULTI is not allowed")
            for key in args[1:]:
                client.watched.add(key)
                self.watchers.setdefault(key, set()).add(client)
            return b"OK"
        if name == b"UNWATCH":
            self._unwatch(client)
            return b"OK"
        if name == b"HELLO":
            return self._hello(client, args)
        return self._run(client, name, args, blocking=True)

    def _run(self, client: ClientState, name: bytes, args: list[bytes], *, blocking: bool) -> Any:
        command = self._commands.get(name)
        if command is None:
            return self._unknown(args)
        self._now_ms = int(self._clock() * 1000)
        try:
            reply = command(client, args)
        except _CommandError as exc:
            return _error(str(exc))
        if type(reply) is Blocked and not blocking:
            return None
        return reply

    def _unknown(self, args: list[bytes]) -> ResponseError:
        self.unsupported.append(" ".join(a.decode("utf-8", "replace") for a in args[:3]))
        return _error(f"ERR unknown command '{args[0].decode('utf-8', 'replace')}'")

    def _exec(self, client: ClientState) -> Any:
        queued = client.queued
        if queued is None:
            return _error("ERR EXEC without MULTI")
        client.queued = None
        dirty = client.dirty
        self._unwatch(client)
        if client.queue_error:
            return _error("EXECABORT Transaction discarded because of previous errors.")
        if dirty:
            return None
        return [self._run(client, args[0].upper(), args, blocking=False) for args in queued]

    def _unwatch(self, client: ClientState) -> None:
        for key in client.watched:
            watchers = self.watchers.get(key)
            if watchers is not None:
                watchers.discard(client)
                if not watchers:
                    del self.watchers[key]
        client.watched.clear()
        client.dirty = False

    def _hello(self, client: ClientState, args: list[bytes]) -> Any:
        if len(args) > 1:
            try:
                protocol = int(args[1])
            except ValueError:
                return _error("ERR Protocol version is not an integer or out of range")
            if protocol not in (2, 3):
                return _error("NOPROTO unsupported protocol version")
            client.protocol = protocol
        info = {
            b"server": b"redis",
            b"version": ".".join(map(str, self.version)).encode(),
            b"proto": client.protocol,
            b"id": self._client_ids,
            b"mode": b"standalone",
            b"role": b"master",
            b"modules": [],
        }
        return info if client.protocol == 3 else _flat(info)

    # -- keys ----------------------------------------------------------------------------

    def touch(self, key: bytes, *, wake: bool = False) -> None:
        """A write to ``key``: transactions watching it fail; with ``wake`` (new entries, or the
        key or its group gone), reads blocked on it run again, in the order they blocked. Other
        writes (a read, an ack, a claim) wake nobody, as on Redis."""
        watchers = self.watchers.get(key)
        if watchers:
            for client in watchers:
                client.dirty = True
        if wake:
            waiters = self.waiters.get(key)
            if waiters:
                for callback in list(waiters):
                    callback()

    def _lookup(self, key: bytes) -> _Value | None:
        expires = self.expires.get(key)
        if expires is not None and expires <= self._now_ms:
            del self.expires[key]
            del self.data[key]
            return None
        return self.data.get(key)

    def _typed(self, key: bytes, kind: type) -> Any:
        value = self._lookup(key)
        if value is not None and type(value) is not kind:
            raise _fail(_WRONGTYPE)
        return value

    def _stream(self, key: bytes) -> _Stream | None:
        value: _Stream | None = self._typed(key, _Stream)
        return value

    def _delete(self, key: bytes) -> bool:
        if self._lookup(key) is None:
            return False
        del self.data[key]
        self.expires.pop(key, None)
        self.touch(key, wake=True)
        return True

    def flushall(self) -> None:
        """Everything gone (a restart without persistence)."""
        keys = list(self.data)
        self.data.clear()
        self.expires.clear()
        for key in keys:
            self.touch(key, wake=True)

    def _flushall(self, client: ClientState, args: list[bytes]) -> Any:
        self.flushall()
        return b"OK"

    def _select(self, client: ClientState, args: list[bytes]) -> Any:
        if _int(args[1]) != 0:
            raise _fail("ERR DB index is out of range")
        return b"OK"

    def _get(self, client: ClientState, args: list[bytes]) -> Any:
        return self._typed(args[1], bytes)

    def _set(self, client: ClientState, args: list[bytes]) -> Any:
        key, value = args[1], args[2]
        nx = xx = get = keepttl = False
        expires: int | None = None
        index = 3
        while index < len(args):
            option = args[index].upper()
            if option == b"NX":
                nx = True
            elif option == b"XX":
                xx = True
            elif option == b"GET":
                get = True
            elif option == b"KEEPTTL":
                keepttl = True
            elif option in (b"PX", b"EX", b"PXAT", b"EXAT") and index + 1 < len(args):
                amount = _int(args[index + 1])
                if amount <= 0:
                    raise _fail("ERR invalid expire time in 'set' command")
                index += 1
                if option == b"PX":
                    expires = self._now_ms + amount
                elif option == b"EX":
                    expires = self._now_ms + 1000 * amount
                elif option == b"PXAT":
                    expires = amount
                else:
                    expires = 1000 * amount
            else:
                raise _fail(_SYNTAX)
            index += 1
        if nx and xx:
            raise _fail(_SYNTAX)
        old = self._lookup(key)
        if get and old is not None and type(old) is not bytes:
            raise _fail(_WRONGTYPE)
        if (nx and old is not None) or (xx and old is None):
            return old if get else None
        self.data[key] = value
        if expires is not None:
            self.expires[key] = expires
        elif not keepttl:
            self.expires.pop(key, None)
        self.touch(key)
        return old if get else b"OK"

    def _pexpire(self, client: ClientState, args: list[bytes]) -> Any:
        key, amount = args[1], _int(args[2])
        if len(args) > 3:
            raise _fail(_SYNTAX)
        if self._lookup(key) is None:
            return 0
        if amount <= 0:
            self._delete(key)
            return 1
        self.expires[key] = self._now_ms + amount
        self.touch(key)
        return 1

    def _del(self, client: ClientState, args: list[bytes]) -> Any:
        return sum(self._delete(key) for key in args[1:])

    def _exists(self, client: ClientState, args: list[bytes]) -> Any:
        return sum(self._lookup(key) is not None for key in args[1:])

    def _type(self, client: ClientState, args: list[bytes]) -> Any:
        value = self._lookup(args[1])
        return b"none" if value is None else _TYPES[type(value)]

    def _incrby(self, client: ClientState, args: list[bytes]) -> Any:
        key, amount = args[1], _int(args[2])
        old = self._typed(key, bytes)
        value = _int(old) + amount if old is not None else amount
        self.data[key] = b"%d" % value
        self.touch(key)
        return value

    # -- sets and sorted sets ------------------------------------------------------------

    def _sadd(self, client: ClientState, args: list[bytes]) -> Any:
        key = args[1]
        members: set[bytes] | None = self._typed(key, set)
        if members is None:
            members = self.data[key] = set()
        before = len(members)
        members.update(args[2:])
        added = len(members) - before
        if added:
            self.touch(key)
        return added

    def _srem(self, client: ClientState, args: list[bytes]) -> Any:
        key = args[1]
        members: set[bytes] | None = self._typed(key, set)
        if members is None:
            return 0
        removed = len(members & set(args[2:]))
        members.difference_update(args[2:])
        if not members:
            del self.data[key]
            self.expires.pop(key, None)
        if removed:
            self.touch(key)
        return removed

    def _smembers(self, client: ClientState, args: list[bytes]) -> Any:
        members: set[bytes] | None = self._typed(args[1], set)
        # Redis' order for a small set of strings is insertion order (a listpack); any fixed
        # order keeps a run repeatable.
        return sorted(members) if members else []

    def _sismember(self, client: ClientState, args: list[bytes]) -> Any:
        members: set[bytes] | None = self._typed(args[1], set)
        return int(bool(members) and args[2] in members)  # type: ignore[operator]

    def _zadd(self, client: ClientState, args: list[bytes]) -> Any:
        key = args[1]
        pairs = args[2:]
        if pairs and pairs[0].upper() in (b"NX", b"XX", b"GT", b"LT", b"CH", b"INCR"):
            # The backend sends none of ZADD's options: not modelled, so not answered.
            self.unsupported.append(f"ZADD {pairs[0].decode('utf-8', 'replace')}")
            raise _fail(_SYNTAX)
        if not pairs or len(pairs) % 2:
            raise _fail(_SYNTAX)
        scores = [(_score(pairs[i]), pairs[i + 1]) for i in range(0, len(pairs), 2)]
        zset: dict[bytes, float] | None = self._typed(key, dict)
        if zset is None:
            zset = self.data[key] = {}
        added = 0
        for score, member in scores:
            if member not in zset:
                added += 1
            zset[member] = score
        self.touch(key)
        return added

    def _zrem(self, client: ClientState, args: list[bytes]) -> Any:
        key = args[1]
        zset: dict[bytes, float] | None = self._typed(key, dict)
        if zset is None:
            return 0
        removed = 0
        for member in args[2:]:
            if zset.pop(member, None) is not None:
                removed += 1
        if not zset:
            del self.data[key]
            self.expires.pop(key, None)
        if removed:
            self.touch(key)
        return removed

    def _zrangebyscore(self, client: ClientState, args: list[bytes]) -> Any:
        low, low_open = _score_bound(args[2])
        high, high_open = _score_bound(args[3])
        with_scores = False
        offset, count = 0, -1
        index = 4
        while index < len(args):
            option = args[index].upper()
            if option == b"WITHSCORES":
                with_scores = True
            elif option == b"LIMIT" and index + 2 < len(args):
                offset, count = _int(args[index + 1]), _int(args[index + 2])
                index += 2
            else:
                raise _fail(_SYNTAX)
            index += 1
        zset: dict[bytes, float] | None = self._typed(args[1], dict)
        if not zset:
            return []
        members = sorted(
            (score, member)
            for member, score in zset.items()
            if (score > low if low_open else score >= low) and (score < high if high_open else score <= high)
        )
        if offset < 0:
            return []
        members = members[offset:] if count < 0 else members[offset : offset + count]
        if not with_scores:
            return [member for _, member in members]
        if client.protocol == 3:
            return [[member, score] for score, member in members]
        return [part for score, member in members for part in (member, _format_score(score))]

    # -- streams -------------------------------------------------------------------------

    def _new_id(self, stream: _Stream, arg: bytes) -> StreamID:
        last = stream.last_id
        if arg == b"*":
            ms = self._now_ms
            if ms > last[0]:
                return ms, 0
            if last[1] == 2**64 - 1:
                raise _fail("ERR The stream has exhausted the last possible ID, unable to add more items")
            return last[0], last[1] + 1
        ms_part, dash, seq_part = arg.partition(b"-")
        if dash and seq_part == b"*":
            try:
                ms = int(ms_part)
            except ValueError:
                raise _fail(_BAD_ID) from None
            if ms < last[0]:
                raise _fail(
                    "ERR The ID specified in XADD is equal or smaller than the target stream top item"
                )
            new_id = (ms, last[1] + 1) if ms == last[0] else (ms, 0)
        else:
            new_id = _parse_id(arg)
        if new_id == _MIN_ID:
            raise _fail("ERR The ID specified in XADD must be greater than 0-0")
        if new_id <= last:
            raise _fail("ERR The ID specified in XADD is equal or smaller than the target stream top item")
        return new_id

    def _trim_options(self, args: list[bytes], index: int) -> tuple[int, tuple[bytes, bool, bytes] | None]:
        """Parse ``MAXLEN|MINID [=|~] threshold [LIMIT n]`` at ``index``: (next index, trim)."""
        strategy = args[index].upper()
        index += 1
        approximate = False
        if index < len(args) and args[index] in (b"~", b"="):
            approximate = args[index] == b"~"
            index += 1
        if index >= len(args):
            raise _fail(_SYNTAX)
        threshold = args[index]
        index += 1
        if index < len(args) and args[index].upper() == b"LIMIT":
            if not approximate:
                raise _fail("ERR syntax error, LIMIT cannot be used without the special ~ option")
            index += 2
        if strategy == b"MAXLEN" and _int(threshold) < 0:
            raise _fail("ERR The MAXLEN argument must be >= 0.")
        return index, (strategy, approximate, threshold)

    def _trim(self, stream: _Stream, strategy: bytes, approximate: bool, threshold: bytes) -> int:
        if strategy == b"MAXLEN":
            excess = len(stream.ids) - _int(threshold)
        else:
            minimum = _parse_id(threshold)
            excess = bisect.bisect_left(stream.ids, minimum)
        if excess <= 0:
            return 0
        if approximate:
            # Whole nodes only, as Redis' radix tree of listpacks of 100 entries trims them.
            excess -= excess % _NODE_ENTRIES
            if not excess:
                return 0
        removed = stream.ids[:excess]
        del stream.ids[:excess]
        for entry_id in removed:
            del stream.fields[entry_id]
        # Trimming is not deleting: max-deleted-entry-id moves only when a trim leaves a gap.
        return excess

    def _xadd(self, client: ClientState, args: list[bytes]) -> Any:
        key = args[1]
        index = 2
        nomkstream = False
        trim = None
        while index < len(args):
            option = args[index].upper()
            if option == b"NOMKSTREAM":
                nomkstream = True
                index += 1
            elif option in (b"MAXLEN", b"MINID"):
                index, trim = self._trim_options(args, index)
            else:
                break
        pairs = args[index + 1 :]
        if index >= len(args) or not pairs or len(pairs) % 2:
            raise _fail("ERR wrong number of arguments for 'xadd' command")
        stream = self._stream(key)
        if stream is None:
            if nomkstream:
                return None
            stream = _Stream()
            new_id = self._new_id(stream, args[index])
            self.data[key] = stream
        else:
            new_id = self._new_id(stream, args[index])
        stream.ids.append(new_id)
        stream.fields[new_id] = list(pairs)
        stream.last_id = new_id
        stream.entries_added += 1
        if trim is not None:
            self._trim(stream, *trim)
        self.touch(key, wake=True)
        return _id_bytes(new_id)

    def _xlen(self, client: ClientState, args: list[bytes]) -> Any:
        stream = self._stream(args[1])
        return len(stream.ids) if stream else 0

    def _range(self, args: list[bytes], *, reverse: bool) -> Any:
        stream = self._stream(args[1])
        low_arg, high_arg = (args[3], args[2]) if reverse else (args[2], args[3])
        low, low_open = _range_bound(low_arg, start=True)
        high, high_open = _range_bound(high_arg, start=False)
        count = -1
        if len(args) > 4:
            if len(args) != 6 or args[4].upper() != b"COUNT":
                raise _fail(_SYNTAX)
            count = _int(args[5])
        if stream is None or count == 0:
            return []
        start = bisect.bisect_right(stream.ids, low) if low_open else bisect.bisect_left(stream.ids, low)
        end = bisect.bisect_left(stream.ids, high) if high_open else bisect.bisect_right(stream.ids, high)
        ids = stream.ids[start:end]
        if reverse:
            ids.reverse()
        if count > 0:
            ids = ids[:count]
        return [stream.entry(entry_id) for entry_id in ids]

    def _xrange(self, client: ClientState, args: list[bytes]) -> Any:
        return self._range(args, reverse=False)

    def _xrevrange(self, client: ClientState, args: list[bytes]) -> Any:
        return self._range(args, reverse=True)

    def _xdel(self, client: ClientState, args: list[bytes]) -> Any:
        ids = [_parse_id(arg, strict=False) for arg in args[2:]]
        stream = self._stream(args[1])
        if stream is None:
            return 0
        deleted = sum(stream.delete(entry_id) for entry_id in ids)
        if deleted:
            self.touch(args[1])
        return deleted

    def _xtrim(self, client: ClientState, args: list[bytes]) -> Any:
        if len(args) < 4 or args[2].upper() not in (b"MAXLEN", b"MINID"):
            raise _fail(_SYNTAX)
        index, trim = self._trim_options(args, 2)
        if index != len(args) or trim is None:
            raise _fail(_SYNTAX)
        stream = self._stream(args[1])
        if stream is None:
            return 0
        removed = self._trim(stream, *trim)
        if removed:
            self.touch(args[1])
        return removed

    def _group_or_fail(self, key: bytes, name: bytes) -> tuple[_Stream, _Group]:
        stream = self._stream(key)
        group = stream.groups.get(name) if stream is not None else None
        if stream is None or group is None:
            raise _fail(f"NOGROUP No such key '{key.decode()}' or consumer group '{name.decode()}'")
        return stream, group

    def _consumer(self, group: _Group, name: bytes) -> _Consumer:
        consumer = group.consumers.get(name)
        if consumer is None:
            consumer = group.consumers[name] = _Consumer(name, self._now_ms)
        return consumer

    def _xgroup(self, client: ClientState, args: list[bytes]) -> Any:
        sub = args[1].upper() if len(args) > 1 else b""
        arity = {b"CREATE": (5, 8), b"SETID": (5, 7), b"DESTROY": (4, 4)}
        arity.update({b"DELCONSUMER": (5, 5), b"CREATECONSUMER": (5, 5)})
        if sub not in arity:
            raise _fail(f"ERR unknown subcommand '{args[1].decode() if len(args) > 1 else ''}'.")
        low, high = arity[sub]
        if not low <= len(args) <= high:
            raise _fail(f"ERR wrong number of arguments for 'xgroup|{sub.decode().lower()}' command")
        key, name = args[2], args[3]
        mkstream = False
        entries_read = -1
        if sub in (b"CREATE", b"SETID"):
            index = 5
            while index < len(args):
                option = args[index].upper()
                if option == b"MKSTREAM" and sub == b"CREATE":
                    mkstream = True
                elif option == b"ENTRIESREAD" and index + 1 < len(args):
                    entries_read = _int(args[index + 1])
                    if entries_read < 0 and entries_read != -1:
                        raise _fail("ERR value for ENTRIESREAD must be positive or -1")
                    index += 1
                else:
                    raise _fail(_SYNTAX)
                index += 1
        stream = self._stream(key)
        if stream is None and not (sub == b"CREATE" and mkstream):
            raise _fail(_NO_KEY_GROUP)
        group = stream.groups.get(name) if stream is not None else None
        no_group = f"NOGROUP No such consumer group '{name.decode()}' for key name '{key.decode()}'"
        if sub == b"CREATE":
            id_arg = args[4]
            if id_arg == b"$":
                start = stream.last_id if stream is not None else _MIN_ID
            else:
                start = _parse_id(id_arg)
            if stream is None:
                stream = self.data[key] = _Stream()
            if name in stream.groups:
                raise _fail("BUSYGROUP Consumer Group name already exists")
            stream.groups[name] = _Group(start, entries_read)
            self.touch(key)
            return b"OK"
        assert stream is not None
        if sub == b"DESTROY":
            if group is None:
                return 0
            del stream.groups[name]
            self.touch(key, wake=True)
            return 1
        if group is None:
            raise _fail(no_group)
        if sub == b"SETID":
            id_arg = args[4]
            group.last_id = stream.last_id if id_arg == b"$" else _parse_id(id_arg)
            group.entries_read = entries_read
            self.touch(key)
            return b"OK"
        if sub == b"CREATECONSUMER":
            if args[4] in group.consumers:
                return 0
            self._consumer(group, args[4])
            self.touch(key)
            return 1
        consumer = group.consumers.pop(args[4], None)
        if consumer is None:
            return 0
        for entry_id in consumer.pel:
            del group.pel[entry_id]
        self.touch(key)
        return len(consumer.pel)

    def _xreadgroup(self, client: ClientState, args: list[bytes]) -> Any:
        if len(args) < 7 or args[1].upper() != b"GROUP":
            raise _fail("ERR wrong number of arguments for 'xreadgroup' command")
        name, consumer_name = args[2], args[3]
        count = 0
        block: int | None = None
        noack = False
        index = 4
        while index < len(args):
            option = args[index].upper()
            if option == b"STREAMS":
                break
            if option == b"COUNT" and index + 1 < len(args):
                count = max(_int(args[index + 1]), 0)
                index += 1
            elif option == b"BLOCK" and index + 1 < len(args):
                block = _int(args[index + 1])
                if block < 0:
                    raise _fail("ERR timeout is negative")
                index += 1
            elif option == b"NOACK":
                noack = True
            else:
                raise _fail(_SYNTAX)
            index += 1
        rest = args[index + 1 :]
        if index >= len(args) or not rest or len(rest) % 2:
            raise _fail(
                "ERR Unbalanced 'xreadgroup' list of streams: for each stream key an ID or '>' must be "
                "specified."
            )
        half = len(rest) // 2
        keys, id_args = rest[:half], rest[half:]
        targets = []
        for key, id_arg in zip(keys, id_args, strict=True):
            stream = self._stream(key)
            group = stream.groups.get(name) if stream is not None else None
            if stream is None or group is None:
                raise _fail(
                    f"NOGROUP No such key '{key.decode()}' or consumer group '{name.decode()}' "
                    "in XREADGROUP with GROUP option"
                )
            targets.append((key, stream, group, None if id_arg == b">" else _parse_id(id_arg)))
        now = self._now_ms
        answer: dict[bytes, list[Any]] = {}
        for key, stream, group, after in targets:
            consumer = group.consumers.get(consumer_name)
            if consumer is None and self.version >= (7, 2):
                consumer = self._consumer(group, consumer_name)
            if consumer is not None:
                consumer.seen_time = now
            if after is not None:
                # The consumer's own pending entries after ``after``: its history (a reply even
                # when empty, so the consumer is created on 7.0 too).
                entries: list[Any] = []
                if consumer is None:
                    consumer = self._consumer(group, consumer_name)
                if consumer is not None:
                    for entry_id in sorted(consumer.pel):
                        if entry_id <= after:
                            continue
                        if count and len(entries) >= count:
                            break
                        if entry_id in stream.fields:
                            nack = consumer.pel[entry_id]
                            nack.delivery_time = now
                            nack.delivery_count += 1
                            entries.append(stream.entry(entry_id))
                        else:
                            entries.append([_id_bytes(entry_id), None])
                answer[key] = entries
                continue
            new = stream.after(group.last_id, count)
            if not new:
                continue
            if consumer is None:
                consumer = self._consumer(group, consumer_name)
            consumer.active_time = now
            for entry_id in new:
                stream.advance(group, entry_id)
                if noack:
                    continue
                taken = group.pel.get(entry_id)
                if taken is None:
                    taken = group.pel[entry_id] = _Nack(consumer, now, 1)
                else:
                    # Pending already (the group's last ID was set back): Redis hands it to this
                    # consumer with its count reset.
                    del taken.consumer.pel[entry_id]
                    taken.consumer, taken.delivery_time, taken.delivery_count = consumer, now, 1
                consumer.pel[entry_id] = taken
            answer[key] = [stream.entry(entry_id) for entry_id in new]
            self.touch(key)
        if not answer:
            if block is not None:
                return Blocked(args, tuple(keys), block / 1000)
            return None
        return answer if client.protocol == 3 else [[key, entries] for key, entries in answer.items()]

    def _xack(self, client: ClientState, args: list[bytes]) -> Any:
        ids = [_parse_id(arg) for arg in args[3:]]
        if not ids:
            raise _fail("ERR wrong number of arguments for 'xack' command")
        stream = self._stream(args[1])
        group = stream.groups.get(args[2]) if stream is not None else None
        if group is None:
            return 0
        acked = 0
        for entry_id in ids:
            nack = group.pel.pop(entry_id, None)
            if nack is not None:
                del nack.consumer.pel[entry_id]
                acked += 1
        if acked:
            self.touch(args[1])
        return acked

    def _claim(self, group: _Group, consumer: _Consumer, entry_id: StreamID, nack: _Nack) -> None:
        if nack.consumer is not consumer:
            nack.consumer.pel.pop(entry_id, None)
            nack.consumer = consumer
            consumer.pel[entry_id] = nack

    def _xclaim(self, client: ClientState, args: list[bytes]) -> Any:
        if len(args) < 6:
            raise _fail("ERR wrong number of arguments for 'xclaim' command")
        key, name, consumer_name = args[1], args[2], args[3]
        stream, group = self._group_or_fail(key, name)
        min_idle = max(_int(args[4]), 0)
        index = 5
        ids: list[StreamID] = []
        while index < len(args):
            try:
                ids.append(_parse_id(args[index]))
            except _CommandError:
                break
            index += 1
        now = self._now_ms
        delivery_time: int | None = None
        retry_count: int | None = None
        force = justid = False
        last_id: StreamID | None = None
        while index < len(args):
            option = args[index].upper()
            more = index + 1 < len(args)
            if option == b"FORCE":
                force = True
            elif option == b"JUSTID":
                justid = True
            elif option == b"IDLE" and more:
                delivery_time = now - _int(args[index + 1])
                index += 1
            elif option == b"TIME" and more:
                delivery_time = _int(args[index + 1])
                index += 1
            elif option == b"RETRYCOUNT" and more:
                retry_count = _int(args[index + 1])
                index += 1
            elif option == b"LASTID" and more:
                last_id = _parse_id(args[index + 1])
                index += 1
            else:
                raise _fail(f"ERR Unrecognized XCLAIM option '{args[index].decode()}'")
            index += 1
        if delivery_time is None or delivery_time < 0 or delivery_time > now:
            delivery_time = now
        if last_id is not None and last_id > group.last_id:
            group.last_id = last_id
        consumer = group.consumers.get(consumer_name)
        if self.version >= (7, 2):
            if consumer is None:
                consumer = self._consumer(group, consumer_name)
            consumer.seen_time = now
        claimed: list[Any] = []
        changed = False
        for entry_id in ids:
            nack = group.pel.get(entry_id)
            if entry_id not in stream.fields:
                if nack is not None:
                    del group.pel[entry_id]
                    del nack.consumer.pel[entry_id]
                    changed = True
                continue
            if nack is None:
                if not force:
                    continue
                if consumer is None:
                    consumer = self._consumer(group, consumer_name)
                # Redis creates the entry as delivered once; JUSTID then leaves the count alone.
                nack = group.pel[entry_id] = _Nack(consumer, delivery_time, 1)
                consumer.pel[entry_id] = nack
            elif min_idle and now - nack.delivery_time < min_idle:
                continue
            if consumer is None:
                consumer = self._consumer(group, consumer_name)
            self._claim(group, consumer, entry_id, nack)
            nack.delivery_time = delivery_time
            if retry_count is not None:
                nack.delivery_count = retry_count
            elif not justid:
                nack.delivery_count += 1
            consumer.active_time = now
            changed = True
            claimed.append(_id_bytes(entry_id) if justid else stream.entry(entry_id))
        if changed:
            self.touch(key)
        return claimed

    def _xautoclaim(self, client: ClientState, args: list[bytes]) -> Any:
        if len(args) < 6:
            raise _fail("ERR wrong number of arguments for 'xautoclaim' command")
        key, name, consumer_name = args[1], args[2], args[3]
        stream, group = self._group_or_fail(key, name)
        min_idle = max(_int(args[4]), 0)
        start, exclusive = _range_bound(args[5], start=True)
        count, justid = 100, False
        index = 6
        while index < len(args):
            option = args[index].upper()
            if option == b"COUNT" and index + 1 < len(args):
                count = _int(args[index + 1])
                if count < 1 or count > 2**63 // 10:
                    raise _fail("ERR COUNT must be > 0")
                index += 1
            elif option == b"JUSTID":
                justid = True
            else:
                raise _fail(_SYNTAX)
            index += 1
        if exclusive:
            start = (start[0], start[1] + 1)
        now = self._now_ms
        consumer = group.consumers.get(consumer_name)
        if self.version >= (7, 2):
            if consumer is None:
                consumer = self._consumer(group, consumer_name)
            consumer.seen_time = now
        pending = [entry_id for entry_id in group.sorted_pel() if entry_id >= start]
        attempts = count * 10
        claimed: list[Any] = []
        deleted: list[bytes] = []
        position = 0
        while attempts and count and position < len(pending):
            attempts -= 1
            entry_id = pending[position]
            position += 1
            nack = group.pel[entry_id]
            if entry_id not in stream.fields:
                del group.pel[entry_id]
                del nack.consumer.pel[entry_id]
                deleted.append(_id_bytes(entry_id))
                count -= 1
                continue
            if min_idle and now - nack.delivery_time < min_idle:
                continue
            if consumer is None:
                consumer = self._consumer(group, consumer_name)
            self._claim(group, consumer, entry_id, nack)
            nack.delivery_time = now
            if not justid:
                nack.delivery_count += 1
            consumer.active_time = now
            claimed.append(_id_bytes(entry_id) if justid else stream.entry(entry_id))
            count -= 1
        cursor = _id_bytes(pending[position]) if position < len(pending) else b"0-0"
        if claimed or deleted:
            self.touch(key)
        return [cursor, claimed, deleted]

    def _xpending(self, client: ClientState, args: list[bytes]) -> Any:
        if len(args) < 3:
            raise _fail("ERR wrong number of arguments for 'xpending' command")
        _, group = self._group_or_fail(args[1], args[2])
        if len(args) == 3:
            if not group.pel:
                return [0, None, None, None]
            ids = group.sorted_pel()
            per_consumer: dict[bytes, int] = {}
            for nack in group.pel.values():
                per_consumer[nack.consumer.name] = per_consumer.get(nack.consumer.name, 0) + 1
            return [
                len(ids),
                _id_bytes(ids[0]),
                _id_bytes(ids[-1]),
                [[consumer, b"%d" % n] for consumer, n in sorted(per_consumer.items())],
            ]
        index = 3
        min_idle = 0
        if args[index].upper() == b"IDLE":
            if len(args) < 8:
                raise _fail(_SYNTAX)
            min_idle = _int(args[index + 1])
            index += 2
        if len(args) - index not in (3, 4):
            raise _fail(_SYNTAX)
        low, low_open = _range_bound(args[index], start=True)
        high, high_open = _range_bound(args[index + 1], start=False)
        count = _int(args[index + 2])
        owner = args[index + 3] if len(args) - index == 4 else None
        if owner is not None:
            consumer = group.consumers.get(owner)
            source = consumer.pel if consumer is not None else {}
        else:
            source = group.pel
        now = self._now_ms
        reply: list[Any] = []
        if count <= 0:
            return reply
        for entry_id in sorted(source):
            if entry_id < low or (low_open and entry_id == low):
                continue
            if entry_id > high or (high_open and entry_id == high):
                break
            nack = source[entry_id]
            idle = now - nack.delivery_time
            if min_idle and idle < min_idle:
                continue
            reply.append([_id_bytes(entry_id), nack.consumer.name, idle, nack.delivery_count])
            if len(reply) >= count:
                break
        return reply

    def _xinfo(self, client: ClientState, args: list[bytes]) -> Any:
        sub = args[1].upper() if len(args) > 1 else b""
        if sub not in (b"GROUPS", b"CONSUMERS", b"STREAM") or len(args) < 3:
            raise _fail(f"ERR unknown subcommand or wrong number of arguments for '{sub.decode()}'")
        stream = self._stream(args[2])
        if stream is None:
            raise _fail("ERR no such key")
        now = self._now_ms
        shape = (lambda d: d) if client.protocol == 3 else _flat
        if sub == b"GROUPS":
            return [
                shape(
                    {
                        b"name": name,
                        b"consumers": len(group.consumers),
                        b"pending": len(group.pel),
                        b"last-delivered-id": _id_bytes(group.last_id),
                        b"entries-read": None if group.entries_read == -1 else group.entries_read,
                        b"lag": stream.lag(group),
                    }
                )
                for name, group in sorted(stream.groups.items())
            ]
        if sub == b"CONSUMERS":
            if len(args) != 4:
                raise _fail("ERR wrong number of arguments for 'xinfo|consumers' command")
            group = stream.groups.get(args[3])
            if group is None:
                raise _fail(
                    f"NOGROUP No such consumer group '{args[3].decode()}' for key name '{args[2].decode()}'"
                )
            consumers = []
            for name, consumer in sorted(group.consumers.items()):
                info: dict[bytes, Any] = {
                    b"name": name,
                    b"pending": len(consumer.pel),
                    b"idle": now - consumer.seen_time,
                }
                if self.version >= (7, 2):
                    info[b"inactive"] = now - consumer.active_time if consumer.active_time != -1 else -1
                consumers.append(shape(info))
            return consumers
        if len(args) > 3:
            # XINFO STREAM ... FULL: the backend never asks for it; not modelled.
            self.unsupported.append(" ".join(a.decode("utf-8", "replace") for a in args[:4]))
            raise _fail(_SYNTAX)
        first = stream.ids[0] if stream.ids else None
        last = stream.ids[-1] if stream.ids else None
        return shape(
            {
                b"length": len(stream.ids),
                # Redis' listpack nodes of up to 100 entries; an estimate where deletes left gaps.
                b"radix-tree-keys": -(-len(stream.ids) // _NODE_ENTRIES),
                b"radix-tree-nodes": 1 + -(-len(stream.ids) // _NODE_ENTRIES),
                b"last-generated-id": _id_bytes(stream.last_id),
                b"max-deleted-entry-id": _id_bytes(stream.max_deleted),
                b"entries-added": stream.entries_added,
                b"recorded-first-entry-id": _id_bytes(first) if first else b"0-0",
                b"groups": len(stream.groups),
                b"first-entry": stream.entry(first) if first else None,
                b"last-entry": stream.entry(last) if last else None,
            }
        )


def _flat(mapping: dict[bytes, Any]) -> list[Any]:
    return [part for pair in mapping.items() for part in pair]


class ModelObserver:
    """What the simulation reads at the end of a run, straight from the model (no network), in
    the shapes redis-py's synchronous client gives (``decode_responses=False``)."""

    def __init__(self, server: ModelServer) -> None:
        self._server = server
        self._client = server.new_client()

    def _call(self, *args: Any) -> Any:
        reply = self._server.execute(
            self._client, [a if isinstance(a, bytes) else str(a).encode() for a in args]
        )
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def xinfo_groups(self, stream: str) -> list[dict[str, Any]]:
        groups = self._call("XINFO", "GROUPS", stream)
        return [{k.decode(): v for k, v in zip(g[::2], g[1::2], strict=True)} for g in groups]

    def xrange(self, stream: str, min: str = "-", max: str = "+", count: int | None = None) -> list[Any]:
        extra = ("COUNT", count) if count is not None else ()
        return [(i, _pairs(f)) for i, f in self._call("XRANGE", stream, min, max, *extra)]

    def xrevrange(self, stream: str, max: str = "+", min: str = "-", count: int | None = None) -> list[Any]:
        extra = ("COUNT", count) if count is not None else ()
        return [(i, _pairs(f)) for i, f in self._call("XREVRANGE", stream, max, min, *extra)]

    def xpending_range(self, stream: str, group: str, min: str, max: str, count: int) -> list[dict[str, Any]]:
        return [
            {"message_id": i, "consumer": c, "time_since_delivered": idle, "times_delivered": n}
            for i, c, idle, n in self._call("XPENDING", stream, group, min, max, count)
        ]


def _pairs(fields: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(fields[::2], fields[1::2], strict=True))
