"""A simulated network between the backend and an in-process fakeredis server.

Every connection a redis-py pool opens during a simulation is a
:class:`~._model_connection.ModelConnection` to the lean model server, or with ``--server
fakeredis`` a :class:`SimConnection`: a fakeredis connection (no socket). Either first asks the
:class:`SimNetwork` what happens to each command and each reply. The network decides, with the
seed's generator:

* a reply lost after the command ran (the connection drops; redis-py retries the command);
* a connection reset before the command was sent (it never ran);
* latency: each connection has its own base delay plus jitter per message, so replies on
  different connections overtake each other;
* partitions: for a while, connects are refused and every command or reply is lost;
* a restart without persistence: the data is flushed and every open connection is dropped;
* a killed process: its connections never reach the server again.

Connections belong to a *node* (a simulated process), read from :data:`current_node` when the
connection is made; tasks inherit it, so everything a process starts speaks as that process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio.connection as redis_connection
from fakeredis._clients._async import FakeWriter
from fakeredis._core._database import Database
from fakeredis._msgs import CONNECTION_ERROR_MSG
from fakeredis.aioredis import FakeAsyncRedisConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["LinkFaults", "SimConnection", "SimNetwork", "current_node", "sim_connections"]

current_node: contextvars.ContextVar[str] = contextvars.ContextVar("abe_redis_sim_node", default="main")
"""The simulated process that the running task belongs to."""


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """Per-message probabilities and delays of the links (all zero: a perfect network)."""

    lose_reply: float = 0.0
    reset_before_send: float = 0.0
    base_latency_ms: float = 0.0
    """Upper bound of a connection's fixed one-way delay (drawn per connection)."""
    jitter_ms: float = 0.0
    """Upper bound of the extra delay drawn per message."""


class Link(Protocol):
    """A connection as the network sees it."""

    node: str
    generation: int
    last_command: str


class SimNetwork:
    """What the links do; the run's trace records each fault it injects."""

    def __init__(
        self,
        server: Any,
        rng: random.Random,
        faults: LinkFaults,
        *,
        now: Callable[[], float],
        record: Callable[[str], None],
        version: tuple[int, ...] = (7, 4),
    ) -> None:
        self.server = server
        self.version = version
        self.faults = faults
        self._rng = rng
        self._now = now
        self._record = record
        self.generation = 0
        """Bumped by a restart: connections of an older generation are gone."""
        self.partitioned_until = -1.0
        self.dead_nodes: set[str] = set()
        self.injected: dict[str, int] = {}
        self.commands: dict[str, int] = {}
        self._connections = 0

    # -- decisions ---------------------------------------------------------------------

    def next_connection_number(self) -> int:
        self._connections += 1
        return self._connections

    def connection_latency(self) -> float:
        bound = self.faults.base_latency_ms
        return self._rng.uniform(0.0, bound) / 1000 if bound else 0.0

    def delay(self, base: float) -> float:
        jitter = self.faults.jitter_ms
        return base + (self._rng.uniform(0.0, jitter) / 1000 if jitter else 0.0)

    def partitioned(self) -> bool:
        return self._now() < self.partitioned_until

    def _count(self, kind: str, node: str, command: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1
        self._record(f"net {kind} {node} {command}")

    def refuse_connect(self, node: str) -> bool:
        return node in self.dead_nodes or self.partitioned()

    def drop_before_send(self, connection: Link, command: str) -> bool:
        if connection.node in self.dead_nodes or connection.generation != self.generation:
            return True
        if self.partitioned():
            self._count("partition-drop", connection.node, command)
            return True
        if self.faults.reset_before_send and self._rng.random() < self.faults.reset_before_send:
            self._count("reset", connection.node, command)
            return True
        return False

    def drop_reply(self, connection: Link) -> bool:
        command = connection.last_command
        if connection.node in self.dead_nodes or connection.generation != self.generation:
            return True
        if self.partitioned():
            self._count("partition-lost-reply", connection.node, command)
            return True
        if self.faults.lose_reply and self._rng.random() < self.faults.lose_reply:
            self._count("lost-reply", connection.node, command)
            return True
        return False

    # -- whole-system faults -------------------------------------------------------------

    def partition(self, seconds: float) -> None:
        self.partitioned_until = max(self.partitioned_until, self._now() + seconds)
        self._record(f"fault partition {seconds:.3f}s")

    def restart(self) -> None:
        """Restart without persistence: every key is gone, every open connection dropped."""
        self.generation += 1
        if hasattr(self.server, "flushall"):  # the model
            self.server.flushall()
        else:
            import fakeredis

            fakeredis.FakeRedis(server=self.server).flushall()
        self._record("fault restart")

    def kill(self, node: str) -> None:
        self.dead_nodes.add(node)
        self._record(f"fault kill {node}")


class _Command(tuple[bytes, ...]):
    """A command's arguments, encoded as redis-py encodes them for the wire, handed to the fake
    server as they are: packing them into RESP only for fakeredis to parse them back cost a
    sixth of a schedule."""


def _encode_command(encode: Callable[[Any], Any], args: tuple[Any, ...]) -> _Command:
    # What redis-py's pack_command does before it writes RESP: a command name with a space in it
    # ("CLIENT SETINFO") goes as separate arguments, and every argument through the encoder.
    first = args[0]
    if isinstance(first, str):
        args = tuple(first.encode().split()) + args[1:]
    elif b" " in first:
        args = tuple(first.split()) + args[1:]
    # The encoder hands back a memoryview only when given one, and the engine sends none. Bytes,
    # text and integers are encoded inline as redis-py's encoder would (UTF-8, strict; an int as
    # its decimal digits): calling it for each argument cost a twentieth of a schedule.
    encoder = getattr(encode, "__self__", None)
    if encoder is None or encoder.encoding != "utf-8" or encoder.encoding_errors != "strict":
        return _Command(map(encode, args))
    encoded = []
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            encoded.append(arg)
        elif kind is str:
            encoded.append(arg.encode())
        elif kind is int:
            encoded.append(b"%d" % arg)
        else:
            encoded.append(encode(arg))
    return _Command(encoded)


def _resp(command: _Command) -> bytes:
    return b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in command)


_READS = {b"XREADGROUP": 4, b"XREAD": 1}
"""Stream reads, and where their options start (after ``GROUP group consumer``)."""

_blocking_on: frozenset[bytes] | None = None
"""The keys of the stream read being run, while it runs: if it blocks, only writes to these
wake it."""


def _stream_keys(command: _Command) -> frozenset[bytes] | None:
    start = _READS.get(command[0].upper())
    if start is None:
        return None
    for index in range(start, len(command)):
        if command[index].upper() == b"STREAMS":
            keys = command[index + 1 :]
            return frozenset(keys[: len(keys) // 2])
    return None


class _SimWriter(FakeWriter):
    """Hands each command straight to the fake server's command processor, except while the
    socket is paused by a blocked command: then, as fakeredis' own writer does, it queues the
    command's bytes in the socket's parser, which runs it when the blocked command answers."""

    def writelines(self, data: Iterable[Any]) -> None:
        socket: Any = self._socket
        if socket is None:
            return
        for chunk in data:
            if type(chunk) is not _Command:
                socket.sendall(chunk)
            elif socket._paused:
                socket.sendall(_resp(chunk))
            else:
                if not socket._server.connected or socket._killed:
                    raise socket._connection_error_class(CONNECTION_ERROR_MSG)
                global _blocking_on
                _blocking_on = _stream_keys(chunk)
                try:
                    socket._process_command(list(chunk))
                finally:
                    _blocking_on = None


def _command_name(command: Any) -> str:
    first = command[0] if isinstance(command, list | tuple) else command
    if type(first) is _Command:
        return first[0].decode("ascii", "replace").upper()
    if isinstance(first, str):
        first = first.encode()
    parts = bytes(first).split(b"\r\n", 3)
    return parts[2].decode("ascii", "replace").upper() if len(parts) > 2 else "?"


def pack_command(encode: Callable[[Any], Any], args: tuple[Any, ...]) -> list[Any]:
    """A simulated connection's ``pack_command``: the encoded arguments, not RESP."""
    return [_encode_command(encode, args)]


def pack_commands(encode: Callable[[Any], Any], commands: Iterable[Iterable[Any]]) -> list[Any]:
    return [_encode_command(encode, tuple(command)) for command in commands]


async def before_send(connection: Any, command: Any) -> str:
    """What the simulated link does to a command before it leaves ``connection`` (either
    server's connection class): count it, delay it, or reset the connection. Returns its name."""
    network = connection.network
    connection.last_command = name = _command_name(command)
    network.commands[name] = network.commands.get(name, 0) + 1
    if connection.latency or network.faults.jitter_ms:
        try:
            await asyncio.sleep(network.delay(connection.latency))
        except BaseException:
            # Cancelled before the command left: a caller may still read this connection
            # for the replies of commands it sent earlier (a pipeline), so drop it.
            await connection.disconnect(nowait=True)
            raise
    if connection.is_connected and network.drop_before_send(connection, name):
        await connection.disconnect()
        raise RedisConnectionError(f"simulated: connection reset before {name} was sent")
    return name


class SimConnection(FakeAsyncRedisConnection):
    """A fakeredis connection that passes every command and reply through a :class:`SimNetwork`."""

    def __init__(self, *args: Any, network: SimNetwork, node: str, **kwargs: Any) -> None:
        super().__init__(*args, server=network.server, version=network.version, **kwargs)
        self.network = network
        self.node = node
        self.generation = network.generation
        self.latency = network.connection_latency()
        self.last_command = ""
        self._sim_hash = network.next_connection_number()

    def __hash__(self) -> int:
        # Pools keep connections in sets; hashing by number, not address, makes a pool visit
        # them in the same order in every run of a seed.
        return self._sim_hash

    async def _connect(self) -> None:
        network = self.network
        if network.refuse_connect(self.node):
            raise RedisConnectionError(f"simulated: connection refused ({self.node})")
        await super()._connect()
        if self._sock is not None:
            self._writer = _SimWriter(self._sock)
        self.generation = network.generation

    def pack_command(self, *args: Any) -> list[Any]:
        return pack_command(self.encoder.encode, args)

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[Any]:
        return pack_commands(self.encoder.encode, commands)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        await before_send(self, command)
        await super().send_packed_command(command, check_health)

    async def read_response(self, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            response = await super().read_response(**kwargs)
        except ResponseError as exc:
            # fakeredis answers XREADGROUP on a missing key with XGROUP's "requires the key to
            # exist"; Redis answers NOGROUP. Simulate Redis, not the fake's wording. (Only XGROUP
            # itself answers that on Redis.)
            if self.last_command != "XGROUP" and str(exc).startswith("The XGROUP subcommand requires"):
                raise ResponseError(
                    "NOGROUP No such key or consumer group in XREADGROUP with GROUP option"
                ) from None
            raise
        network = self.network
        try:
            if self.latency or network.faults.jitter_ms:
                await asyncio.sleep(network.delay(self.latency))
        except BaseException:
            # Cancelled while the reply was "in flight": like redis-py on a real socket, drop
            # the connection, or the rest of a pipeline's replies would answer its next user.
            await self.disconnect(nowait=True)
            raise
        if network.drop_reply(self):
            await self.disconnect()
            raise RedisConnectionError(f"simulated: reply to {self.last_command} lost")
        return response


@contextlib.contextmanager
def sim_connections(network: SimNetwork) -> Iterator[None]:
    """Every redis-py asyncio pool makes :class:`SimConnection` s on ``network`` within the block,
    whatever the backend's own client setup (URL, retries, timeouts) asked for."""
    pool_class = redis_connection.ConnectionPool
    original = pool_class.make_connection
    connection_class: Any = SimConnection
    if hasattr(network.server, "flushall"):
        from ._model_connection import ModelConnection

        connection_class = ModelConnection

    def make_connection(pool: Any) -> Any:
        kwargs = dict(pool.connection_kwargs)
        for name in ("host", "port", "path", "ssl", "ssl_cert_reqs", "ssl_ca_certs", "socket_keepalive"):
            kwargs.pop(name, None)
        # redis-py's idle health check reads its PING reply out of order from a fake socket;
        # the simulation drops idle connections its own way (restart, partition).
        kwargs["health_check_interval"] = 0
        # No CLIENT SETINFO nor CLIENT MAINT_NOTIFICATIONS after each connect: three commands a
        # reconnect whose replies redis-py ignores (the fake knows no maintenance events). HELLO
        # still runs, and faults still hit the handshake through it.
        kwargs["driver_info"] = None
        kwargs["maint_notifications_config"] = None
        for name in ("lib_name", "lib_version", "maint_notifications_pool_handler"):
            kwargs.pop(name, None)
        return connection_class(network=network, node=current_node.get(), **kwargs)

    database_class: Any = Database
    add_callback = database_class.add_change_callback
    notify_watch = database_class.notify_watch

    def add_change_callback(database: Any, callback: Callable[[], None]) -> None:
        # fakeredis keeps the callbacks of blocked readers in a set of functions, iterated in
        # memory-address order: which reader wakes first would differ between runs of a seed.
        if not isinstance(database._change_callbacks, _InsertionOrdered):
            database._change_callbacks = _InsertionOrdered.of(database._change_callbacks)
        add_callback(database, callback)
        database._change_callbacks[callback] = _blocking_on

    def notify_key(database: Any, key: bytes) -> None:
        # fakeredis wakes every blocked reader on a write to any key (a heartbeat, an ack), and
        # each one runs its read again to find nothing; Redis wakes a blocked XREADGROUP only
        # for its own streams. Readers whose keys are known wake as on Redis; others on any key.
        for sock in database._watches.get(key, ()):
            sock.notify_watch()
        database.condition.notify_all()
        callbacks = database._change_callbacks
        if not isinstance(callbacks, _InsertionOrdered):
            callbacks = _InsertionOrdered.of(callbacks)  # nobody has blocked on it yet
        for callback, keys in callbacks.items():
            if keys is None or key in keys:
                callback()

    pool_class.make_connection = make_connection  # type: ignore[method-assign]
    database_class.add_change_callback = add_change_callback
    database_class.notify_watch = notify_key
    try:
        yield
    finally:
        pool_class.make_connection = original  # type: ignore[method-assign]
        database_class.add_change_callback = add_callback
        database_class.notify_watch = notify_watch


class _InsertionOrdered(dict[Any, frozenset[bytes] | None]):
    """The part of ``set``'s interface fakeredis uses, iterated in insertion order; each
    callback maps to the keys whose writes wake it (``None``: any key)."""

    @classmethod
    def of(cls, items: Iterable[Any]) -> _InsertionOrdered:
        ordered = cls()
        for item in items:
            ordered.add(item)
        return ordered

    def add(self, item: Any) -> None:
        self[item] = None

    def remove(self, item: Any) -> None:
        del self[item]

    def discard(self, item: Any) -> None:
        self.pop(item, None)
