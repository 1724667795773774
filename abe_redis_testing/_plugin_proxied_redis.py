"""pytest fixtures for chaos tests of an app on abe-redis: a real Redis behind a Toxiproxy proxy,
and backends connected through that proxy with timeouts short enough for faults to show.

::

    async def test_survives_outage(proxied_redis):
        backend = proxied_redis.backend
        with proxied_redis.proxy.down():
            ...                                   # Redis is unreachable through the proxy
        await backend.publish("orders", {"id": 1})  # and reachable again

The server is ``redis_server`` (an external URL, a container, ``redis-server`` or valkey, see
the server options) and the Toxiproxy is ``toxiproxy_server`` (a real one at
``--abe-redis-toxiproxy-url`` / ``TOXIPROXY_URL``, else the embedded one).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from abe_redis import RedisStreamsBackend
from abe_redis_testing._options import add_option, get_option
from abe_redis_testing._plugin_servers import flush_endpoint
from abe_redis_testing.faults import FaultProxy, ProxyScope
from abe_redis_testing.servers import RedisEndpoint, redact_url

# The fixtures below need the server and Toxiproxy fixtures; loading this module alone
# (``-p abe_redis_testing._plugin_proxied_redis``) brings them along.
pytest_plugins = ["abe_redis_testing._plugin_servers", "abe_redis_testing._plugin_toxiproxy"]

DEFAULT_SOCKET_TIMEOUT = 2.0
DEFAULT_BLOCK_MS = 300
DEFAULT_CLAIM_IDLE_MS = 1000
DEFAULT_RETRY_ATTEMPTS = 2


def pytest_addoption(parser: pytest.Parser) -> None:
    add_option(
        parser,
        "chaos-socket-timeout",
        "Socket timeout (s) of proxied_redis backends: how soon a black-holed command fails.",
        kind="float",
        default=DEFAULT_SOCKET_TIMEOUT,
    )
    add_option(
        parser,
        "chaos-block-ms",
        "Blocking-read time (ms) of proxied_redis consumers; must stay below the socket timeout.",
        kind="int",
        default=DEFAULT_BLOCK_MS,
    )
    add_option(
        parser,
        "chaos-claim-idle-ms",
        "claim_idle_ms of proxied_redis consumers: how long a dead consumer's message waits to be claimed.",
        kind="int",
        default=DEFAULT_CLAIM_IDLE_MS,
    )
    add_option(
        parser,
        "chaos-retry-attempts",
        "redis-py retries per command of proxied_redis backends.",
        kind="int",
        default=DEFAULT_RETRY_ATTEMPTS,
    )
    add_option(
        parser,
        "chaos-upstream",
        "Redis's address as Toxiproxy reaches it, HOST:PORT (default: redis_server's address). "
        "Set it when Toxiproxy runs in a container, e.g. redis:6379 next to a Redis service.",
    )


def chaos_settings(config: pytest.Config) -> dict[str, Any]:
    """The backend keyword arguments the chaos fixtures use, from the ``chaos-*`` options."""
    socket_timeout = float(get_option(config, "chaos-socket-timeout"))
    block_ms = int(get_option(config, "chaos-block-ms"))
    claim_idle_ms = int(get_option(config, "chaos-claim-idle-ms"))
    if block_ms / 1000 >= socket_timeout:
        raise pytest.UsageError(
            f"--abe-redis-chaos-block-ms ({block_ms} ms) must be below "
            f"--abe-redis-chaos-socket-timeout ({socket_timeout} s)"
        )
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "block_ms": block_ms,
        "claim_idle_ms": claim_idle_ms,
        "claim_interval_ms": max(100, claim_idle_ms // 3),
        "discovery_interval_ms": 500,
        "retry_attempts": int(get_option(config, "chaos-retry-attempts")),
        "retry_backoff_cap": 0.5,
    }


@dataclass(eq=False)
class ProxiedRedis:
    """A real Redis with a Toxiproxy proxy in front of it, and backends connected through it.

    * ``proxy`` — the :class:`~abe_redis_testing.faults.FaultProxy`; its context managers
      (``latency``, ``down``, ``black_hole``, ``reset_peer``, ``bandwidth``, ``slicer``,
      ``limit_data``) inject a fault for the duration of a ``with`` block.
    * ``url`` — Redis through the proxy; ``direct_url`` — Redis itself (for setup and checks that
      must not suffer the fault).
    * ``backend`` — a :class:`~abe_redis.RedisStreamsBackend` through the proxy with short
      timeouts (``settings``); :meth:`new_backend` makes more (one per consumer, say) and
      :meth:`direct_backend` one that bypasses the proxy. All are closed after the test.
    """

    server: RedisEndpoint
    proxy: FaultProxy
    url: str
    settings: dict[str, Any]
    _backends: list[RedisStreamsBackend] = field(default_factory=list)
    _backend: RedisStreamsBackend | None = None

    @property
    def direct_url(self) -> str:
        return self.server.url

    @property
    def backend(self) -> RedisStreamsBackend:
        if self._backend is None:
            self._backend = self.new_backend()
        return self._backend

    def new_backend(self, **overrides: Any) -> RedisStreamsBackend:
        """Another backend through the proxy; ``overrides`` are :class:`~abe_redis.RedisConfig` fields."""
        return self._make(self.url, overrides)

    def direct_backend(self, **overrides: Any) -> RedisStreamsBackend:
        """A backend straight to Redis, unaffected by the proxy's faults."""
        return self._make(self.direct_url, overrides)

    def _make(self, url: str, overrides: dict[str, Any]) -> RedisStreamsBackend:
        backend = RedisStreamsBackend.from_url(url, **{**self.settings, **overrides})
        self._backends.append(backend)
        return backend

    async def aclose(self) -> None:
        backends, self._backends = self._backends, []
        for backend in backends:
            with contextlib.suppress(Exception):
                await backend.aclose()

    def __repr__(self) -> str:
        return f"ProxiedRedis(url={redact_url(self.url)!r}, upstream={self.proxy.upstream!r})"


@pytest_asyncio.fixture
async def proxied_redis(
    pytestconfig: pytest.Config, redis_server: RedisEndpoint, toxiproxy: ProxyScope
) -> AsyncIterator[ProxiedRedis]:
    """A real Redis (``redis_server``) behind a fresh Toxiproxy proxy, with a backend through it.

    Returns a :class:`ProxiedRedis`: ``.proxy`` to inject faults, ``.url`` / ``.direct_url``,
    ``.backend`` and ``.new_backend()`` (through the proxy), ``.direct_backend()``. Backends use
    the ``chaos-*`` options (socket timeout 2 s, block 300 ms, claim_idle_ms 1000, 2 retries by
    default). After the test the backends are closed, the proxy deleted and the database
    flushed (only the test's own db on an external server).
    """
    # Start empty even if an earlier test on the shared server did not clean up after itself.
    await flush_endpoint(redis_server)
    upstream = get_option(pytestconfig, "chaos-upstream") or f"{redis_server.host}:{redis_server.port}"
    proxy = toxiproxy.proxy(upstream)
    proxied = ProxiedRedis(
        server=redis_server,
        proxy=proxy,
        url=proxy.url_for(redis_server.url),
        settings=chaos_settings(pytestconfig),
    )
    try:
        yield proxied
    finally:
        await proxied.aclose()
        proxy.delete()
        await flush_endpoint(redis_server)


__all__ = ["ProxiedRedis", "chaos_settings", "proxied_redis"]
