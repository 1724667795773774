"""Auto-batching ``XADD`` on a Redis Cluster: concurrent publishes share pipelined round trips
per node.

Each master gets a :class:`~abe_redis._publisher.Publisher` of its own, over one connection taken
from the cluster client's node, so the batching, the per-call results and errors, the memory
bound and :class:`PublishOutcomeUnknownError` are the single-server publisher's. A publish goes to
the publisher of the master that owns its stream's slot in the cluster client's slot map.

What the cluster adds is an answer that says "not here": ``MOVED`` (the slot has a new owner),
``ASK`` (the slot is migrating and this key already left), ``TRYAGAIN``, ``CLUSTERDOWN`` or
``READONLY`` (a failover is under way). None of them writes anything, so the entry is sent again:
after ``MOVED`` to the owner it names (the client's slot map is patched, as redis-py does), after
``ASK`` to the importing node behind ``ASKING`` on the same connection, after the others and
after a connection that failed before any byte of the entry left, once the slot map is reloaded
and after a backoff. An entry that may have reached a server whose reply was lost is never sent
again: it raises :class:`PublishOutcomeUnknownError`, as on one server. redis-py's own cluster
client would resend it after a connection error, which may write it twice without saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.backoff import AbstractBackoff
from redis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._errors import PublishOutcomeUnknownError
from ._publisher import FieldsT, Publisher, completed, entry_id

__all__ = ["ClusterPublisher"]

# Answers by which a node refused an entry without writing it; the entry goes elsewhere or later.
_REFUSED = (MovedError, AskError, TryAgainError, ClusterDownError, ReadOnlyError, SlotNotCoveredError)
# Failures that left nothing written (the publisher raises PublishOutcomeUnknownError otherwise).
_NOT_SENT = (RedisConnectionError, RedisTimeoutError, MaxConnectionsError, RedisClusterException)

# As redis-py's cluster client: a chain of redirections longer than this is a loop, not a move.
_MAX_REDIRECTS = 16


class _NodePool:
    """The connection-pool face a :class:`Publisher` needs, over one cluster node's connections.

    Its connections are the node's own (no retries of their own: the cluster publisher decides
    what is sent again). One given back to a node the client no longer lists is closed, since
    nothing would ever close it there."""

    def __init__(self, client: RedisCluster, node: ClusterNode) -> None:
        self._client = client
        self._node = node
        self.connection_kwargs = node.connection_kwargs

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        return self._node.acquire_connection()

    async def release(self, connection: AbstractConnection) -> None:
        node = self._node
        if self._client.nodes_manager.nodes_cache.get(node.name) is node:
            await node.disconnect_if_needed(cast(Connection, connection))
            node.release(cast(Connection, connection))
        else:
            await connection.disconnect()


class ClusterPublisher:
    """Coalesces concurrent ``XADD`` calls into pipelined round trips, one connection per master.

    ``attempts`` and ``backoff`` bound how often an entry refused during a failover or not sent
    for a connection failure is tried again (redirections by ``MOVED``/``ASK`` are followed at
    once, up to 16 in a row); after that the last error is raised, and nothing was written.
    """

    def __init__(
        self,
        client: RedisCluster,
        *,
        attempts: int,
        backoff: AbstractBackoff,
        max_batch: int = 512,
        max_queued_bytes: int = 8 * 2**20,
    ) -> None:
        self._client = client
        self._attempts = attempts
        self._backoff = backoff
        self._max_batch = max_batch
        self._max_queued_bytes = max_queued_bytes
        self._publishers: dict[str, tuple[ClusterNode, Publisher]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._reload: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def publishers(self) -> dict[str, Publisher]:
        """The per-node publishers by node name (``host:port``); for inspection and tests."""
        return {name: publisher for name, (_, publisher) in self._publishers.items()}

    async def xadd(self, stream: str, fields: FieldsT, *, maxlen: int | None, nomkstream: bool) -> str | None:
        """Append one entry; its id, or ``None`` when ``nomkstream`` found no stream."""
        if self._closed:
            raise RuntimeError("this ClusterPublisher is closed")
        failures = 0
        redirects = 0
        asking: AskError | None = None
        while True:
            try:
                if asking is not None:
                    redirect, asking = asking, None
                    return await self._xadd_asking(
                        redirect, stream, fields, maxlen=maxlen, nomkstream=nomkstream
                    )
                publisher = await self._publisher_for(stream)
                return await publisher.xadd(stream, fields, maxlen=maxlen, nomkstream=nomkstream)
            except (PublishOutcomeUnknownError, AuthenticationError):
                raise
            except MovedError as exc:  # (before AskError, its base class in redis-py)
                await self._client.nodes_manager.move_slot(exc)
                error: BaseException = exc
                now = True
            except AskError as exc:
                asking = exc
                error, now = exc, True
            except (*_REFUSED, *_NOT_SENT) as exc:
                error, now = exc, False
            # Nothing of the entry was written: it is sent again.
            if now:
                redirects += 1
                if redirects > _MAX_REDIRECTS:
                    raise error
                continue
            failures += 1
            if failures > self._attempts:
                raise error
            await asyncio.sleep(self._backoff.compute(failures))
            await self._reload_slots()

    async def xadd_many(
        self, stream: str, fields_list: Sequence[FieldsT], *, maxlen: int | None, nomkstream: bool
    ) -> list[str] | None:
        """Append the entries in order (other callers' entries may fall between them).

        They go out together in the node's next round trip; those refused (a slot moved under
        them) are sent again one by one, in order, after the ones written. With ``nomkstream``,
        ``None`` when the stream did not exist and nothing was written; if it appeared or
        vanished midway, the entries NOMKSTREAM refused are appended again without it.
        """
        if not fields_list:
            return []
        try:
            publisher = await self._publisher_for(stream)
        except _NOT_SENT:
            # No slot map to route by yet: the retrying path, one entry at a time.
            publisher = None
        if publisher is None:
            first: list[Any] = [None] * len(fields_list)
        else:
            first = await asyncio.gather(
                *(publisher.xadd(stream, f, maxlen=maxlen, nomkstream=nomkstream) for f in fields_list),
                return_exceptions=True,
            )
        unknown = next((r for r in first if isinstance(r, PublishOutcomeUnknownError)), None)
        if unknown is not None:
            raise unknown
        results: list[str | None] = []
        for fields, got in zip(fields_list, first, strict=True):
            if publisher is None or isinstance(got, BaseException):
                if isinstance(got, BaseException) and not isinstance(got, (*_REFUSED, *_NOT_SENT)):
                    raise got
                # Refused by the node, so not written: the retrying path sends it again.
                got = await self.xadd(stream, fields, maxlen=maxlen, nomkstream=nomkstream)
            results.append(got)
        return await completed(self, stream, fields_list, results, maxlen=maxlen)

    async def aclose(self) -> None:
        """Send everything already accepted, then give the connections back. Safe to call twice."""
        self._closed = True
        publishers, self._publishers = self._publishers, {}
        await asyncio.gather(*(publisher.aclose() for _, publisher in publishers.values()))
        while self._retiring:
            await asyncio.gather(*self._retiring)
        if self._reload is not None:
            self._reload.cancel()

    # -- routing ---------------------------------------------------------------------------

    async def _publisher_for(self, stream: str) -> Publisher:
        client = self._client
        if not client.nodes_manager.slots_cache:
            # The first burst waits for the slot map together, not through the client's lock
            # one by one, which would leave each caller a round trip of its own.
            await self._shared_reload(client.initialize)
        node = client.get_node_from_key(stream)
        assert node is not None  # a master, never None
        known = self._publishers.get(node.name)
        if known is not None and known[0] is node:
            return known[1]
        # A node new to us, or a fresh object for the same address after the slot map was
        # reloaded: the old one's connection belongs to a node nobody uses any more.
        pool = cast(ConnectionPool, _NodePool(client, node))
        publisher = Publisher(
            Redis(connection_pool=pool), max_batch=self._max_batch, max_queued_bytes=self._max_queued_bytes
        )
        self._publishers[node.name] = (node, publisher)
        if known is not None:
            self._retire(known[1])
        return publisher

    def _retire(self, publisher: Publisher) -> None:
        task = asyncio.get_running_loop().create_task(publisher.aclose(), name="abe-redis retired publisher")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _reload_slots(self) -> None:
        """Reload the slot map from the cluster once for every caller who is waiting for it."""
        # No node answering is left for the next attempt to find out (and raise its own error).
        with contextlib.suppress(RedisError, RedisClusterException):
            await self._shared_reload(self._client.nodes_manager.initialize)

    async def _shared_reload(self, load: Callable[[], Awaitable[object]]) -> None:
        if self._reload is None or self._reload.done():

            async def run() -> None:
                await load()

            self._reload = asyncio.get_running_loop().create_task(run(), name="abe-redis slot map")
            # Retrieved here, should every caller waiting for it be cancelled.
            self._reload.add_done_callback(lambda task: task.cancelled() or task.exception())
        await asyncio.shield(self._reload)

    async def _xadd_asking(
        self, redirect: AskError, stream: str, fields: FieldsT, *, maxlen: int | None, nomkstream: bool
    ) -> str | None:
        """One entry sent to the node importing its slot, ``ASKING`` first on the same connection."""
        manager = self._client.nodes_manager
        node = manager.get_node(redirect.host, redirect.port)
        if node is None:  # a node that joined since the slot map was loaded
            await self._reload_slots()
            node = manager.get_node(redirect.host, redirect.port)
            if node is None:
                raise RedisClusterException(
                    f"ASK names {redirect.host}:{redirect.port}, which is not in the slot map"
                )
        args: list[Any] = ["XADD", stream]
        if nomkstream:
            args.append("NOMKSTREAM")
        if maxlen is not None:
            args += ["MAXLEN", "~", maxlen]
        args.append("*")
        for name, value in fields.items():
            args += [name, value]
        connection = node.acquire_connection()
        sent = complete = False
        try:
            if not connection.is_connected:
                await connection.connect()  # type: ignore[no-untyped-call]
            sent = True
            await connection.send_packed_command(connection.pack_commands([("ASKING",), args]))
            replies: list[Any] = []
            for _ in range(2):  # both read, whatever they say, so the connection can be reused
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            complete = True
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not sent:
                raise
            raise PublishOutcomeUnknownError(stream, exc) from exc
        finally:
            if not complete:
                # Cut off between sending and reading (an error, or the caller cancelled): a
                # reply may still be on its way, for whoever used the connection next.
                await connection.disconnect()
            node.release(connection)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return entry_id(replies[1])
