"""A redis-py connection to the in-process :class:`~._model.ModelServer`, through the simulated
network.

Everything above the socket is redis-py's own code (the client, its pools, retries, pipelines,
the handshake); below it, :class:`ModelConnection` hands each command's argument list to the
model and queues the reply as redis-py's parser would have produced it. The network decides, per
command and per reply, as it does for the fakeredis connection: latency, a reset before the
command is sent, a lost reply (error replies included, as on a real socket), a partition, a
restart, a killed process.

A blocking ``XREADGROUP`` that finds nothing waits on the model's keys: a write of new entries to
one of them runs it again, its timeout answers nil. Commands sent behind it on the same
connection wait for it, as on Redis.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any

import redis.asyncio as redis_async
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ._model import Blocked, ClientState, ModelServer
from ._network import SimNetwork, _Command, before_send, pack_command, pack_commands

__all__ = ["ModelConnection"]


class _Pipe:
    """Stands in for the stream reader and writer: redis-py counts a connection as open while it
    holds them, and closes the writer on disconnect."""

    __slots__ = ()

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


_PIPE = _Pipe()


def _parse_resp(data: bytes) -> list[list[bytes]]:
    """The commands in ``data``, packed as RESP arrays of bulk strings (what a caller that packs
    its own commands sends)."""
    commands = []
    position = 0
    while position < len(data):
        end = data.index(b"\r\n", position)
        if data[position : position + 1] != b"*":
            raise ValueError(f"not a RESP command array at {position}: {data[position:end]!r}")
        count = int(data[position + 1 : end])
        position = end + 2
        args = []
        for _ in range(count):
            end = data.index(b"\r\n", position)
            length = int(data[position + 1 : end])
            start = end + 2
            args.append(data[start : start + length])
            position = start + length + 2
        commands.append(args)
    return commands


class _Wait:
    """A blocked read of this connection: registered with the model on its keys until served,
    timed out or dropped."""

    __slots__ = ("blocked", "connection", "future", "timer")

    def __init__(self, connection: ModelConnection, blocked: Blocked) -> None:
        self.connection = connection
        self.blocked = blocked
        loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = loop.create_future()
        self.timer = loop.call_later(blocked.timeout_s, self.expire) if blocked.timeout_s else None
        waiters = connection.server.waiters
        for key in blocked.keys:
            waiters.setdefault(key, {})[self.wake] = None

    def wake(self) -> None:
        connection = self.connection
        client = connection._client
        if client is None:
            return
        reply = connection.server.execute(client, self.blocked.command)
        if type(reply) is not Blocked:
            self.finish(reply)

    def expire(self) -> None:
        self.timer = None
        self.finish(None)

    def finish(self, reply: Any) -> None:
        self.forget()
        if not self.future.done():
            self.future.set_result(reply)
        self.connection._unblocked()

    def forget(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiters = self.connection.server.waiters
        for key in self.blocked.keys:
            callbacks = waiters.get(key)
            if callbacks is not None:
                callbacks.pop(self.wake, None)
                if not callbacks:
                    del waiters[key]


class ModelConnection(redis_async.Connection):
    """A connection of one simulated process (``node``) to the model server."""

    def __init__(self, *args: Any, network: SimNetwork, node: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.network = network
        self.server: ModelServer = network.server
        self.node = node
        self.generation = network.generation
        self.latency = network.connection_latency()
        self.last_command = ""
        self._sim_hash = network.next_connection_number()
        self._client: ClientState | None = None
        self._replies: deque[Any] = deque()
        self._wait: _Wait | None = None
        self._backlog: deque[list[bytes]] = deque()

    def __hash__(self) -> int:
        # Pools keep connections in sets; hashing by number, not address, makes a pool visit
        # them in the same order in every run of a seed.
        return self._sim_hash

    def __del__(self, *args: Any) -> None:
        # Nothing to leak: no ResourceWarning for a connection dropped unclosed (a killed process).
        self._reader = self._writer = None

    def repr_pieces(self) -> list[tuple[str, Any]]:
        return [("node", self.node), ("number", self._sim_hash)]

    async def connect(self) -> None:
        # redis-py runs even an open connection's connect() through its Retry; it returns at once.
        if not self.is_connected:
            await super().connect()  # type: ignore[no-untyped-call]

    async def _connect(self) -> None:
        network = self.network
        if network.refuse_connect(self.node):
            raise RedisConnectionError(f"simulated: connection refused ({self.node})")
        self._drop_session()
        self._client = self.server.new_client()
        self._reader = self._writer = _PIPE  # type: ignore[assignment]
        self.generation = network.generation

    def _drop_session(self) -> None:
        if self._wait is not None:
            wait, self._wait = self._wait, None
            wait.forget()
            if not wait.future.done():
                wait.future.set_exception(RedisConnectionError("simulated: connection closed"))
                wait.future.exception()  # its reader may be gone: nobody need retrieve it
        self._replies.clear()
        self._backlog.clear()
        if self._client is not None:
            self.server._unwatch(self._client)
            self._client = None

    async def disconnect(
        self,
        nowait: bool = False,
        error: Exception | None = None,
        failure_count: int | None = None,
        health_check_failed: bool = False,
    ) -> None:
        self._drop_session()
        await super().disconnect(nowait, error, failure_count, health_check_failed)

    def _close(self) -> None:
        self._drop_session()
        super()._close()  # type: ignore[no-untyped-call]

    def pack_command(self, *args: Any) -> list[Any]:
        return pack_command(self.encoder.encode, args)

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[Any]:
        return pack_commands(self.encoder.encode, commands)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        await before_send(self, command)
        if not self.is_connected:
            await self.connect_check_health(check_health=False)
        if isinstance(command, str | bytes):
            command = [command]
        for chunk in command:
            if type(chunk) is _Command:
                self._submit(list(chunk))
            else:
                data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
                for args in _parse_resp(data):
                    self._submit(args)

    def _submit(self, args: list[bytes]) -> None:
        if self._wait is not None:
            self._backlog.append(args)  # behind a blocked read, as on Redis
            return
        assert self._client is not None
        reply = self.server.execute(self._client, args)
        if type(reply) is Blocked:
            self._wait = wait = _Wait(self, reply)
            self._replies.append(wait.future)
        else:
            self._replies.append(reply)

    def _unblocked(self) -> None:
        self._wait = None
        backlog = self._backlog
        while backlog and self._wait is None:
            self._submit(backlog.popleft())

    async def can_read(self) -> bool:
        return bool(self._replies)

    async def can_read_destructive(self) -> bool:
        return bool(self._replies)

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (redis-py's signature; the model never times out)
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        if not self.is_connected or not self._replies:
            # A real socket would wait forever for a reply to nothing: fail loudly instead.
            if disconnect_on_error:
                await self.disconnect(nowait=True)
            raise RedisConnectionError("simulated: no reply to read (connection closed)")
        reply = self._replies.popleft()
        network = self.network
        try:
            if isinstance(reply, asyncio.Future):
                reply = await reply
            if self.latency or network.faults.jitter_ms:
                await asyncio.sleep(network.delay(self.latency))
        except BaseException:
            # Cancelled while waiting or while the reply was "in flight": like redis-py on a real
            # socket, drop the connection, or the rest of a pipeline's replies would answer its
            # next user.
            if disconnect_on_error:
                await self.disconnect(nowait=True)
            raise
        if network.drop_reply(self):
            await self.disconnect()
            raise RedisConnectionError(f"simulated: reply to {self.last_command} lost")
        if isinstance(reply, ResponseError):
            raise reply
        if self.encoder.decode_responses and not disable_decoding:
            return _decode(reply, self.encoder.decode)
        return reply


def _decode(reply: Any, decode: Any) -> Any:
    if isinstance(reply, bytes):
        return decode(reply)
    if isinstance(reply, list):
        return [_decode(item, decode) for item in reply]
    if isinstance(reply, dict):
        return {_decode(k, decode): _decode(v, decode) for k, v in reply.items()}
    return reply
