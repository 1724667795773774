"""Build the redis-py clients for a config, and classify what Redis answers.

* One *blocking* pool per backend for short commands: a burst of concurrent publishes waits for
  a free connection instead of failing with "Too many connections".
* One dedicated connection per running consumer for its blocking reads
  (:func:`dedicated_client`), so waiting consumers never hold the connections publishers need.
* Connection errors are retried with exponential backoff and jitter (redis-py's ``Retry``) —
  except a refused password, which no retry can fix.
"""

from __future__ import annotations

import dataclasses
import inspect
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._config import UNSET_URL, RedisConfig
from ._errors import ConfigurationError, RedisSetupError
from ._redact import redact_text
from ._topology import build_topology_client, parse_topology

T = TypeVar("T")

_CERT_REQS = {
    "required": ssl_module.CERT_REQUIRED,
    "optional": ssl_module.CERT_OPTIONAL,
    "none": ssl_module.CERT_NONE,
}

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors a consumer backs off from and retries (after :func:`setup_error` ruled out the fatal)."""


class _Retry(Retry):
    """redis-py's retry, minus authentication failures: ``AuthenticationError`` is a
    ``ConnectionError`` to redis-py, and retrying a wrong password only delays the answer."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def retryable(error: Exception) -> bool:
            if isinstance(error, AuthenticationError):
                return False
            return is_retryable is None or is_retryable(error)

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def _retry(config: RedisConfig) -> Retry:
    return _Retry(
        EqualJitterBackoff(cap=config.retry_backoff_cap, base=config.retry_backoff_base),
        retries=config.retry_attempts,
        supported_errors=(RedisConnectionError, RedisTimeoutError, BusyLoadingError),
    )


def _without_client_setinfo() -> dict[str, Any]:
    """The connection arguments that turn off redis-py's ``CLIENT SETINFO`` (library name and
    version, shown by ``CLIENT LIST``): a round trip on every connect, which Redis before 7.2
    refuses. redis-py 8 takes ``driver_info=None``; 5.x-7.x ``lib_name``/``lib_version=None``."""
    parameters = inspect.signature(AbstractConnection.__init__).parameters
    if "driver_info" in parameters:
        return {"driver_info": None}
    if "lib_name" in parameters:
        return {"lib_name": None, "lib_version": None}
    return {}


_NO_CLIENT_SETINFO = _without_client_setinfo()


def _pool_kwargs(config: RedisConfig) -> tuple[str, dict[str, Any]]:
    url = config.url
    unix = urlsplit(url).scheme == "unix"
    kwargs: dict[str, Any] = {
        "socket_timeout": config.effective_socket_timeout,
        "socket_connect_timeout": config.socket_connect_timeout,
        "health_check_interval": 30,
        "retry": _retry(config),
        "decode_responses": False,
        **_NO_CLIENT_SETINFO,
    }
    if not unix:
        kwargs["socket_keepalive"] = True  # a TCP option: unix sockets refuse it
    if config.client_name:
        kwargs["client_name"] = config.client_name
    if config.use_ssl and not unix:
        if url.startswith("redis://"):
            # REDIS_SSL=true on a redis:// URL means the same server over TLS.
            url = "rediss://" + url[len("redis://") :]
        kwargs["ssl_cert_reqs"] = _CERT_REQS[config.ssl_cert_reqs]
        if config.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = config.ssl_ca_certs
    return url, kwargs


def build_client(config: RedisConfig) -> Redis:
    """The backend's shared client: a blocking pool of ``max_connections`` (for Sentinel, a pool
    that asks the sentinels for the current master on every new connection)."""
    if config.url == UNSET_URL:
        raise ConfigurationError(
            "REDIS_URL (url)",
            UNSET_URL,
            "not set: name the Redis server (REDIS_URL, url=... or from_url()); abe-redis never "
            "falls back to localhost:6379",
        )
    if config.topology == "cluster":
        # redis-py's cluster client fails a command past its per-node limit instead of waiting.
        # A consumer runs a reader per partition, each with at most two commands in flight on
        # this client (its loop and its lease/heartbeat task), possibly all on one node.
        return _topology_client(
            config, max_connections=config.max_connections + 2 * config.cluster_partitions
        )
    if config.topology != "standalone":
        return _topology_client(config)
    url, kwargs = _pool_kwargs(config)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=config.max_connections, timeout=config.pool_timeout, **kwargs
    )
    if config.password is not None:
        # redis-py lets the URL's password win over keyword arguments; REDIS_PASSWORD must win.
        pool.connection_kwargs["password"] = config.password
    return Redis(connection_pool=pool)


def _topology_client(
    config: RedisConfig, *, retry: Retry | None = None, max_connections: int | None = None
) -> Redis:
    topology = parse_topology(config.url, cluster=config.cluster)
    if config.password is not None:
        # REDIS_PASSWORD wins over the URL's password, as for a single server.
        topology = dataclasses.replace(topology, password=config.password)
    client = build_topology_client(
        topology,
        sentinel_password=config.sentinel_password,
        client_name=config.client_name,
        retry=_retry(config) if retry is None else retry,
        max_connections=config.max_connections if max_connections is None else max_connections,
        pool_timeout=config.pool_timeout,
        socket_timeout=config.effective_socket_timeout,
        socket_connect_timeout=config.socket_connect_timeout,
        ssl=config.ssl,
        ssl_ca_certs=config.ssl_ca_certs,
        ssl_cert_reqs=config.ssl_cert_reqs,
    )
    # A RedisCluster is not a Redis, but serves the same single-key commands the backend sends.
    return cast(Redis, client)


def dedicated_client(client: Redis) -> Redis:
    """A client with one connection of its own, to the same server as ``client`` (real or fake),
    for the commands by which a consumer *takes* entries: its blocking reads and its claims.

    It never retries by itself: a take whose reply was lost must surface, so that the consumer
    takes back the entries the lost reply carried instead of leaving them stranded.
    """
    shared = client.connection_pool
    kwargs = dict(shared.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    pool = ConnectionPool(connection_class=shared.connection_class, max_connections=1, **kwargs)
    return Redis(connection_pool=pool)


def unresent_client(client: Redis, *, connections: int) -> Redis:
    """A client of a few connections of its own, to the same server as ``client`` (real or fake),
    that never resends a command: for a consumer's lease commands. redis-py resends a command
    whose reply was lost once it has reconnected, which for a renewal (``XCLAIM`` with
    min-idle 0) or a release may be seconds later, after a peer rightly claimed the entry: the
    resend steals it back and both hand it out. Callers wait for a free connection."""
    shared = client.connection_pool
    kwargs = dict(shared.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    pool = BlockingConnectionPool(
        connection_class=shared.connection_class, max_connections=connections, timeout=None, **kwargs
    )
    return Redis(connection_pool=pool)


def dedicated_cluster_client(config: RedisConfig, *, connections: int) -> Redis:
    """A Redis Cluster client of a consumer's own, for the commands by which it takes entries:
    up to ``connections`` per node, so that each of its blocking reads has one, and no retries
    (redis-py still follows ``MOVED``/``ASK``, which mean the command did not run), for the same
    reason as :func:`dedicated_client`. A failed command marks the slot map for reloading, so the
    next one finds a promoted replica."""
    return _topology_client(config, retry=Retry(NoBackoff(), 0), max_connections=connections)


async def close_client(client: Redis) -> None:
    await client.aclose()
    pool = getattr(client, "connection_pool", None)  # a RedisCluster has one per node instead
    if pool is not None:
        await pool.disconnect()


def setup_error(exc: BaseException, *, secrets: tuple[str | None, ...] = ()) -> RedisSetupError | None:
    """The fatal reading of ``exc``, if it is one retrying cannot fix; else ``None``."""
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        problem = "Redis refused the credentials (wrong or missing password or user)"
    elif isinstance(exc, NoPermissionError):
        problem = "the Redis user lacks a command or key the backend needs (ACL NOPERM)"
    elif isinstance(exc, ResponseError) and str(exc).startswith("NOAUTH"):
        problem = "Redis requires a password and none was given (set REDIS_PASSWORD or put it in REDIS_URL)"
    else:
        return None
    error = RedisSetupError(f"{problem}: {redact_text(str(exc), secrets)}")
    return error


async def fatal_or_raise[T](call: Awaitable[T], *, secrets: tuple[str | None, ...] = ()) -> T:
    """Await ``call``; a setup failure is re-raised as :class:`RedisSetupError`."""
    try:
        return await call
    except RedisError as exc:
        fatal = setup_error(exc, secrets=secrets)
        if fatal is not None:
            raise fatal from None
        raise


def is_out_of_memory(exc: BaseException) -> bool:
    # redis-py strips the "OOM" prefix when it maps the reply to OutOfMemoryError.
    if isinstance(exc, OutOfMemoryError):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith("OOM")


def is_wrong_type(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


def is_missing_stream(exc: BaseException) -> bool:
    """``XGROUP CREATE`` without ``MKSTREAM`` on a key that does not exist."""
    return isinstance(exc, ResponseError) and "requires the key to exist" in str(exc)


def is_missing_group(exc: BaseException) -> bool:
    """NOGROUP, or Redis 7.0's answer to a *blocked* read whose stream was deleted."""
    if not isinstance(exc, ResponseError):
        return False
    text = str(exc)
    return text.startswith("NOGROUP") or text.startswith("UNBLOCKED") or "no longer exists" in text
