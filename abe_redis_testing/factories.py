"""Fixture factories, in the style of pytest-redis: declare a second, differently configured
server (or cluster, or client) in a conftest, under a name of your choosing, without markers::

    # conftest.py
    from abe_redis_testing import factories

    redis_aof = factories.redis_server(kind="valkey", appendonly=True)
    redis_aof_client = factories.redis_client("redis_aof")
    redis_big_cluster = factories.redis_cluster(masters=3, replicas_per_master=2)

    # test_durability.py
    async def test_survives_a_crash(redis_aof, redis_aof_client):
        await redis_aof_client.set("k", "v")
        redis_aof.restart(graceful=False)   # SIGKILL, then start on the same port and data
        ...

Each call returns a fixture function; the name you assign it to is the fixture's name. Servers
are started through the plugin's session factories (so they share its options, skips and
strict mode) and stopped at the end of the fixture's scope. Needs the plugin loaded
(``-p abe_redis_testing``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

import pytest
import pytest_asyncio
import redis.asyncio

from ._options import get_option
from ._plugin_servers import (
    RedisClusterFactory,
    RedisSentinelFactory,
    RedisServerFactory,
    flush_endpoint,
)
from .servers import RedisClusterHandle, RedisEndpoint, RedisSentinelHandle, RedisServer

Scope = Literal["session", "package", "module", "class", "function"]

__all__ = ["redis_client", "redis_cluster", "redis_sentinel", "redis_server"]


def redis_server(
    *,
    kind: str = "auto",
    appendonly: bool = False,
    extra_args: Sequence[str] = (),
    scope: Scope = "session",
) -> Callable[..., Any]:
    """A fixture returning a started :class:`~abe_redis_testing.servers.RedisServer` of ``kind``
    (``auto``, ``redis-server`` or ``valkey``) with these settings, stopped at the end of ``scope``.
    A missing binary skips (fails under ``--abe-redis-strict``)."""

    @pytest.fixture(scope=scope)
    def fixture(pytestconfig: pytest.Config) -> Iterator[RedisServer]:
        factory = RedisServerFactory(pytestconfig)
        try:
            yield factory(kind, appendonly=appendonly, extra_args=tuple(extra_args))
        finally:
            factory.close()

    return fixture


def redis_cluster(
    *,
    masters: int = 3,
    replicas_per_master: int = 1,
    password: str | None = None,
    kind: str | None = None,
    scope: Scope = "session",
) -> Callable[..., Any]:
    """A fixture returning a :class:`~abe_redis_testing.servers.RedisClusterHandle` of this shape,
    removed at the end of ``scope``."""

    @pytest.fixture(scope=scope)
    def fixture(pytestconfig: pytest.Config) -> Iterator[RedisClusterHandle]:
        factory = RedisClusterFactory(pytestconfig, RedisServerFactory(pytestconfig))
        try:
            yield factory(
                masters=masters, replicas_per_master=replicas_per_master, password=password, kind=kind
            )
        finally:
            factory.close()

    return fixture


def redis_sentinel(
    *,
    master_name: str = "abe-master",
    replicas: int = 1,
    sentinels: int = 3,
    password: str | None = None,
    sentinel_password: str | None = None,
    kind: str | None = None,
    scope: Scope = "session",
) -> Callable[..., Any]:
    """A fixture returning a :class:`~abe_redis_testing.servers.RedisSentinelHandle` of this
    shape, removed at the end of ``scope``."""

    @pytest.fixture(scope=scope)
    def fixture(pytestconfig: pytest.Config) -> Iterator[RedisSentinelHandle]:
        factory = RedisSentinelFactory(pytestconfig, RedisServerFactory(pytestconfig))
        try:
            yield factory(
                master_name=master_name,
                replicas=replicas,
                sentinels=sentinels,
                password=password,
                sentinel_password=sentinel_password,
                kind=kind,
            )
        finally:
            factory.close()

    return fixture


def redis_client(server_fixture: str, *, decode_responses: bool | None = None) -> Callable[..., Any]:
    """An async ``redis.asyncio.Redis`` on the server that the fixture named ``server_fixture``
    returns (a ``RedisServer`` or a ``RedisEndpoint``); closed and the server emptied after each
    test. ``decode_responses`` defaults to ``--abe-redis-decode-responses``."""

    @pytest_asyncio.fixture
    async def fixture(request: pytest.FixtureRequest) -> AsyncIterator[redis.asyncio.Redis]:
        server = request.getfixturevalue(server_fixture)
        if isinstance(server, RedisServer):
            endpoint = RedisEndpoint.from_server(server)
        elif isinstance(server, RedisEndpoint):
            endpoint = server
        else:
            raise TypeError(
                f"redis_client({server_fixture!r}): that fixture returned {type(server).__name__}, "
                "not a RedisServer or RedisEndpoint"
            )
        decode = (
            decode_responses
            if decode_responses is not None
            else bool(get_option(request.config, "decode_responses"))
        )
        client = redis.asyncio.Redis.from_url(endpoint.url, decode_responses=decode)
        try:
            yield client
        finally:
            await client.aclose()
            await flush_endpoint(endpoint)

    return fixture
