"""``RedisStreamsBackend``: abe's message-queue protocol over Redis Streams."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import EqualJitterBackoff
from redis.exceptions import RedisError, ResponseError

from ._broadcast import BroadcastReader
from ._cluster_broadcast import cluster_broadcast
from ._cluster_publisher import ClusterPublisher
from ._cluster_reader import ClusterReader
from ._cluster_registry import ClusterRegistry
from ._codec import PAYLOAD_FIELD, check_key, encode_payload
from ._config import RedisConfig
from ._connection import (
    build_client,
    close_client,
    dedicated_cluster_client,
    fatal_or_raise,
    is_wrong_type,
    setup_error,
)
from ._delivery import GroupReader
from ._errors import (
    BackendClosedError,
    ConfigurationError,
    InvalidKeyError,
    InvalidPayloadError,
    ReplicationTimeoutError,
)
from ._message import ReceivedMessage
from ._partitions import Partitions
from ._publisher import Publisher
from ._registry import StreamRegistry
from ._retention import CapGuard
from ._scrub import scrub_pipeline_error
from ._topology import still_serves, wait_node
from .metrics import NULL_METRICS, MetricsHook, emit

log = logging.getLogger("abe_redis")

REREGISTER_AFTER_S = 60.0
"""A publisher re-adds a stream to the registry at least this often, in case the registry key
alone was deleted."""
_REGISTERED_CACHE_LIMIT = 10_000


class RedisStreamsBackend:
    """A message-queue backend for abstract-backend on Redis Streams.

    * ``publish(key, payload)`` appends the payload as JSON to the stream named ``key``.
    * ``consume(group=None)`` yields payloads with **at-least-once** delivery: a message is
      acknowledged when the caller asks for the next one (or calls :meth:`ack`), so a consumer
      that dies mid-handler leaves it pending for another consumer to claim.
    * ``from_env()`` reads ``REDIS_*`` variables; ``from_url()`` takes a URL.

    Use ``async with`` or :meth:`aclose` to release the connection pool.
    """

    def __init__(
        self, config: RedisConfig | None = None, *, client: Redis | None = None, **overrides: Any
    ) -> None:
        base = config if config is not None else RedisConfig()
        self._config = base.with_overrides(**overrides) if overrides else base
        self._client = client if client is not None else build_client(self._config)
        self._owns_client = client is None
        # In a cluster, streams and the backend's own keys are spread over partitions pinned to
        # hash slots (see _partitions); on one server there is one partition, the keys as named.
        self._partitions = Partitions(self._config) if self._config.topology == "cluster" else None
        self._registry: StreamRegistry = (
            ClusterRegistry(self._client, self._partitions)
            if self._partitions is not None
            else StreamRegistry(self._client, self._config)
        )
        # A cluster client opens at most max_connections per node and fails the command past
        # that (it never waits, unlike the single-server pool): the commands the per-node
        # publishers do not batch (registry updates, publishes with WAIT) take turns.
        self._cluster_sends = asyncio.Semaphore(self._config.max_connections)
        self._wait_client: Redis | None = None
        """A cluster's publishes with WAIT go through a client that never retries (built on use)."""
        self._registered: dict[str, float] = {}
        self._readers: weakref.WeakSet[GroupReader | ClusterReader] = weakref.WeakSet()
        self._registry_warned = False
        self._closed = False
        self.metrics: MetricsHook = NULL_METRICS
        """Sees ``published`` here, and the consume-side events of ``consume()`` (see
        :mod:`abe_redis.metrics`)."""
        # REDIS_STREAM_MAXLEN is applied by a counted XTRIM every few publishes rather than by
        # XADD's MAXLEN, which drops unread entries without telling anyone.
        self._cap = CapGuard(self._client, self._config)
        # Concurrent publishes share pipelined round trips on one connection; in a Redis
        # Cluster, on one connection per master.
        self._publisher: Publisher | ClusterPublisher | None = None
        if isinstance(self._client, Redis):
            self._publisher = Publisher(self._client)
        elif isinstance(self._client, RedisCluster):
            config = self._config
            self._publisher = ClusterPublisher(
                self._client,
                attempts=config.retry_attempts,
                backoff=EqualJitterBackoff(cap=config.retry_backoff_cap, base=config.retry_backoff_base),
            )

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Build from ``REDIS_URL`` and the other ``REDIS_*`` variables (see the configuration
        reference). Raises :class:`~abe_redis.ConfigurationError` naming a bad variable."""
        return cls(RedisConfig.from_env(environ, **overrides))

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> Self:
        return cls(RedisConfig.from_url(url, **overrides))

    @property
    def config(self) -> RedisConfig:
        return self._config

    @property
    def client(self) -> Redis:
        """The underlying redis-py client (shared pool); for inspection and tooling."""
        return self._client

    # -- the protocol ----------------------------------------------------------------------

    @property
    def registry(self) -> StreamRegistry:
        """Register, list and retire streams (see ``abe-redis streams``)."""
        return self._registry

    async def publish(self, key: str, payload: dict[str, Any]) -> None:
        """Append ``payload`` to stream ``key``.

        Raises :class:`~abe_redis.InvalidKeyError` or :class:`~abe_redis.InvalidPayloadError`
        (both ``TypeError`` and ``ValueError``) before anything is written, ``InvalidKeyError``
        too when the key holds another Redis type, and :class:`~abe_redis.RedisSetupError` when
        Redis refuses the credentials or the user's rights.
        """
        self._check_open()
        config = self._config
        stream = self._stream_for(key)
        fields: dict[Any, Any] = {PAYLOAD_FIELD: encode_payload(payload)}
        now = time.monotonic()
        registered = self._registered.get(stream)
        secrets = (config.password,)
        if config.wait_replicas:
            await self._publish_replicated(stream, [fields])
            return
        try:
            # Fast path, one command: NOMKSTREAM appends only if the stream still exists, so a
            # stream deleted since we registered it (FLUSHALL, DEL) takes the full path below.
            if registered is not None and now - registered < REREGISTER_AFTER_S:
                added = await fatal_or_raise(self._xadd(stream, [fields], nomkstream=True), secrets=secrets)
                if added:
                    await self._published(stream)
                    return
                # Gone: registered again below. Forgotten first, so that if that registration
                # fails the next publish tries again, instead of finding the stream (recreated
                # below) by the fast path and never registering it (simulate seed 710).
                self._registered.pop(stream, None)
            await fatal_or_raise(self._xadd(stream, [fields], nomkstream=False), secrets=secrets)
        except ResponseError as exc:
            if is_wrong_type(exc):
                raise InvalidKeyError(f"key {stream!r} holds another Redis type, not a stream") from None
            raise
        await self._register(stream, now)
        await self._published(stream)

    async def publish_many(self, key: str, payloads: Sequence[dict[str, Any]]) -> list[str]:
        """Append every payload to stream ``key``, in order, in as few round trips as the
        batching allows; returns their entry ids. Every payload is checked first, so an invalid
        one (its index named in the error) means nothing is written."""
        self._check_open()
        config = self._config
        stream = self._stream_for(key)
        batch: list[dict[Any, Any]] = []
        for index, payload in enumerate(payloads):
            try:
                batch.append({PAYLOAD_FIELD: encode_payload(payload)})
            except InvalidPayloadError as exc:
                raise InvalidPayloadError(
                    exc.path.replace("payload", f"payloads[{index}]", 1), exc.problem
                ) from None
        if not batch:
            return []
        if config.wait_replicas:
            return await self._publish_replicated(stream, batch)
        now = time.monotonic()
        secrets = (config.password,)
        try:
            ids = await fatal_or_raise(self._xadd(stream, batch, nomkstream=False), secrets=secrets)
        except ResponseError as exc:
            if is_wrong_type(exc):
                raise InvalidKeyError(f"key {stream!r} holds another Redis type, not a stream") from None
            raise
        registered = self._registered.get(stream)
        if registered is None or now - registered >= REREGISTER_AFTER_S:
            await self._register(stream, now)
        for _ in batch:
            await self._published(stream)
        return ids

    def stream_name(self, key: str) -> str:
        """The Redis stream that stores what is published under ``key``: ``key`` itself on one
        server; in a Redis Cluster ``key{tag}``, the tag pinning it to its partition's slot (see
        the Key placement section of docs/scaling.md). ``ReceivedMessage.stream`` is this name."""
        return self._stream_for(key)

    def registry_key_for(self, stream: str) -> str:
        """The registry set that lists ``stream`` (in a Redis Cluster, its partition's)."""
        if self._partitions is None:
            return str(self._config.registry_key)
        return str(self._partitions.partition(stream).config.registry_key)

    def _stream_for(self, key: object) -> str:
        """``key`` checked as a stream to publish to (``InvalidKeyError`` naming what is wrong)."""
        config = self._config
        stream = check_key(
            key,
            reserved_suffix=config.dead_letter_suffix,
            registry_key=str(config.registry_key),
            key_prefix=config.key_prefix,
        )
        return stream if self._partitions is None else self._partitions.stream(stream)

    async def _xadd(self, stream: str, batch: list[dict[Any, Any]], *, nomkstream: bool) -> list[str]:
        """Entry ids of ``batch`` appended to ``stream``; empty when NOMKSTREAM found no stream."""
        if self._publisher is not None:
            if len(batch) == 1:
                entry_id = await self._publisher.xadd(stream, batch[0], maxlen=None, nomkstream=nomkstream)
                return [entry_id] if entry_id is not None else []
            return await self._publisher.xadd_many(stream, batch, maxlen=None, nomkstream=nomkstream) or []
        ids = []
        async with self._cluster_sends:
            for fields in batch:
                added = await self._client.xadd(stream, fields, nomkstream=nomkstream)
                if added is None:
                    return []
                ids.append(added.decode() if isinstance(added, bytes) else str(added))
        return ids

    async def _published(self, stream: str) -> None:
        emit(self.metrics, "published", stream=stream)
        await self._cap.published(stream, self.metrics)

    async def _publish_replicated(self, stream: str, batch: list[dict[Any, Any]]) -> list[str]:
        """XADDs then WAIT on the same connection (WAIT counts the replicas that have this
        connection's writes), for callers who need the entries on a replica before returning."""
        config = self._config
        client = self._client
        node = await wait_node(client, stream)
        if node is not None:
            # A retried cluster pipeline resends its WAIT without the target node, to every
            # master, whose replica counts then add up to a confirmation nobody gave; a publish
            # whose WAIT lost its connection must fail instead.
            if self._wait_client is None:
                self._wait_client = dedicated_cluster_client(config, connections=config.max_connections)
            client = self._wait_client
            node = await wait_node(client, stream)
        async with self._cluster_sends, client.pipeline(transaction=False) as pipe:
            for fields in batch:
                pipe.xadd(stream, fields)
            if node is None:
                pipe.wait(config.wait_replicas, config.wait_timeout_ms)
            else:
                # A cluster client sends a keyless WAIT to every master and adds up their
                # replicas; sent to the stream's node, it rides the XADDs' connection.
                pipe.execute_command("WAIT", config.wait_replicas, config.wait_timeout_ms, target_nodes=node)
            try:
                *ids, replicas = await fatal_or_raise(pipe.execute(), secrets=(config.password,))
            except ResponseError as exc:
                if is_wrong_type(exc) or "WRONGTYPE" in str(exc):
                    raise InvalidKeyError(f"key {stream!r} holds another Redis type, not a stream") from None
                # redis-py puts the command's arguments, the payload, into a pipeline's error.
                scrub_pipeline_error(exc)
                raise
        for _ in batch:
            await self._published(stream)
        now = time.monotonic()
        registered = self._registered.get(stream)
        if registered is None or now - registered >= REREGISTER_AFTER_S:
            await self._register(stream, now)
        if node is not None and not await still_serves(client, node, stream):
            # The XADDs were redirected (MOVED) to another node: the WAIT counted nothing of them.
            replicas = 0
        if int(replicas) < config.wait_replicas:
            raise ReplicationTimeoutError(stream, config.wait_replicas, int(replicas), config.wait_timeout_ms)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def _register(self, stream: str, now: float) -> None:
        config = self._config
        secrets = (config.password,)
        # Registered only once the XADD succeeded. The message is written now: a failure to
        # register must not make the caller publish it again, so it is logged, not raised.
        try:
            async with self._cluster_sends:
                await self._registry.register(stream)
        except RedisError as exc:
            fatal = setup_error(exc, secrets=secrets)
            if not self._registry_warned:
                self._registry_warned = True
                log.warning(
                    "published to %s but could not add it to the stream registry %r (%s); consumers "
                    "find it only through REDIS_STREAMS or REDIS_STREAM_PATTERN",
                    stream,
                    config.registry_key,
                    fatal if fatal is not None else exc,
                )
            return
        if len(self._registered) >= _REGISTERED_CACHE_LIMIT:
            self._registered.clear()
        self._registered[stream] = now

    def consume(self, *, group: str | None = None) -> AsyncGenerator[ReceivedMessage]:
        """Yield messages from every discovered stream, forever.

        ``group=None`` joins the configured default group (``REDIS_CONSUMER_GROUP``), so, as
        with abe's MemoryBackend, messages published before the consumer started are delivered
        and each goes to one consumer. In broadcast mode (``REDIS_CONSUME_MODE=broadcast``)
        every consumer gets every message published after it started, and ``group`` is ignored.

        Leaving the loop (break, cancel, close) leaves the message last yielded *unacknowledged*:
        the generator cannot tell a finished handler from one that was cancelled, so that message
        is redelivered after ``claim_idle_ms``. Call :meth:`ack` first to prevent that.
        """
        self._check_open()
        if self._config.mode == "broadcast":
            if self._partitions is not None:
                assert isinstance(self._registry, ClusterRegistry)
                return cluster_broadcast(self._client, self._partitions, self._registry.partitions)
            return BroadcastReader(self._client, self._config, registry=self._registry).messages()
        return self.group_reader(group).messages()

    def group_reader(self, group: str | None = None) -> GroupReader | ClusterReader:
        """The engine behind ``consume(group=...)``, for consumer runners: ``receive()``,
        ``done()``, ``release()``, ``dead_letter()``, ``aclose()``. In a Redis Cluster, one reader
        per partition behind the same interface."""
        self._check_open()
        if group is not None and (not isinstance(group, str) or not group.strip()):
            raise ConfigurationError("group", group, "must be a non-empty string or None")
        chosen = group if group is not None else self._config.consumer_group
        reader: GroupReader | ClusterReader
        if self._partitions is not None:
            partitions = self._partitions
            if self._config.effective_prefetch < partitions.count:
                raise ConfigurationError(
                    "REDIS_PREFETCH (prefetch)",
                    self._config.effective_prefetch,
                    f"in a Redis Cluster a consumer reads all REDIS_CLUSTER_PARTITIONS={partitions.count} "
                    "partitions at once, each needing room for one entry of the prefetch bound: set "
                    "it to at least the number of partitions",
                )
            assert isinstance(self._registry, ClusterRegistry)
            reader = ClusterReader(self._client, partitions, self._registry.partitions, group=chosen)
        else:
            reader = GroupReader(self._client, self._config, group=chosen, registry=self._registry)
        reader.metrics = self.metrics
        self._readers.add(reader)
        return reader

    async def ack(self, message: ReceivedMessage) -> None:
        """Acknowledge ``message`` now, instead of when the next one is requested."""
        if not isinstance(message, ReceivedMessage):
            raise TypeError(f"ack() takes a message yielded by consume(), got {type(message).__name__}")
        if message.acked or message.group is None:
            return
        await self._client.xack(message.stream, message.group, message.message_id)
        message.acked = True

    # -- lifecycle -----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection pool (if the backend created it). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for reader in list(self._readers):
            # A consumer left open (a `break` out of the loop) still holds leases: release them
            # now, so that its messages are claimable at once rather than after claim_idle_ms.
            await reader.aclose()
        if self._publisher is not None:
            await self._publisher.aclose()  # sends what it accepted, gives its connection back
        if self._owns_client:
            await close_client(self._client)
        if self._wait_client is not None:
            await close_client(self._wait_client)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"RedisStreamsBackend(url={self._config.redacted_url!r}, mode={self._config.mode!r})"

    # -- helpers -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BackendClosedError("this RedisStreamsBackend is closed")
