"""Fixtures that hand out abe-redis backends bound to a fake or a real server.

One test body runs against every target (like fakeredis' own conftest): request
``queue_backend_factory`` and the test is parametrised over ``--abe-redis-targets``
(``fake``, ``redis``, ``valkey``). Marks ``abe_redis_fake`` / ``abe_redis_real`` select them
(``-m abe_redis_fake``), and ``@pytest.mark.abe_redis_targets("redis")`` narrows one test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import BlockingConnectionPool, Redis

from abe_redis import RedisConfig, RedisStreamsBackend

from ._options import add_option, get_option
from ._plugin_servers import flush_endpoint
from ._timings import FAST_SETTINGS
from .fake import make_fake_redis, new_fake_server
from .servers import RedisEndpoint

TARGETS = ("fake", "redis", "valkey")
TARGETS_MARKER = "abe_redis_targets"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_option(
        parser,
        "targets",
        "comma-separated targets for queue_backend_factory: fake, redis, valkey (default: fake,redis)",
        default="fake,redis",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{TARGETS_MARKER}(*names): run this test only on these targets (fake, redis, valkey)"
    )
    config.addinivalue_line("markers", "abe_redis_fake: the test runs on the in-memory fake")
    config.addinivalue_line("markers", "abe_redis_real: the test runs on a real server")
    # Checked here, at start-up, so a bad value is a usage message rather than a collection error.
    _targets(config)


def _targets(config: pytest.Config) -> list[str]:
    raw = str(get_option(config, "targets"))
    chosen = [t.strip() for t in raw.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in TARGETS]
    if unknown:
        raise pytest.UsageError(f"--abe-redis-targets: unknown target(s) {unknown}; choose from {TARGETS}")
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "abe_redis_target" not in metafunc.fixturenames:
        return
    targets = _targets(metafunc.config)
    marker = metafunc.definition.get_closest_marker(TARGETS_MARKER)
    if marker is not None:
        targets = [t for t in targets if t in marker.args]
    params = [
        pytest.param(t, id=t, marks=pytest.mark.abe_redis_fake if t == "fake" else pytest.mark.abe_redis_real)
        for t in targets
    ]
    if not params:
        params = [pytest.param("none", marks=pytest.mark.skip(reason="no selected target for this test"))]
    metafunc.parametrize("abe_redis_target", params, indirect=True)


@pytest.fixture
def abe_redis_target(request: pytest.FixtureRequest) -> str:
    """The target this test instance runs on: ``fake``, ``redis`` or ``valkey``."""
    return str(getattr(request, "param", "fake"))


class RedisBackendFactory:
    """Builds :class:`~abe_redis.RedisStreamsBackend` instances that share one broker.

    ``factory(**overrides)`` returns a new backend (its own connection pool, as separate
    processes would have) with :data:`FAST_SETTINGS` plus the overrides. Every backend and
    client it made is closed by :meth:`aclose`, which the fixtures call after the test.
    """

    def __init__(self, target: str, *, url: str | None = None, fake_server: Any = None) -> None:
        self.target = target
        self.url = url
        self._fake_server = fake_server
        self._backends: list[RedisStreamsBackend] = []
        self._clients: list[Redis] = []

    def config(self, **overrides: Any) -> RedisConfig:
        settings = {**FAST_SETTINGS, **overrides}
        return RedisConfig(url=self.url or "redis://fake/0", **settings)

    def client(self) -> Redis:
        """A raw client on the same broker, for arranging and inspecting state."""
        if self._fake_server is not None:
            client = make_fake_redis(
                server=self._fake_server, connection_pool_class=BlockingConnectionPool, max_connections=50
            )
        else:
            assert self.url is not None
            client = Redis.from_url(self.url)
        self._clients.append(client)
        return client

    def __call__(self, **overrides: Any) -> RedisStreamsBackend:
        config = self.config(**overrides)
        if self._fake_server is not None:
            # The fake's default pool refuses bursts; give it the blocking pool the real one has.
            client = make_fake_redis(
                server=self._fake_server,
                connection_pool_class=BlockingConnectionPool,
                max_connections=config.max_connections,
            )
            self._clients.append(client)
            backend = RedisStreamsBackend(config, client=client)
        else:
            backend = RedisStreamsBackend(config)
        self._backends.append(backend)
        return backend

    async def aclose(self) -> None:
        for backend in self._backends:
            await backend.aclose()
        for client in self._clients:
            await client.aclose()


@pytest_asyncio.fixture
async def fake_backend_factory() -> AsyncIterator[RedisBackendFactory]:
    """A :class:`RedisBackendFactory` on a fresh in-memory fakeredis server (nothing to clean up)."""
    factory = RedisBackendFactory("fake", fake_server=new_fake_server())
    yield factory
    await factory.aclose()


async def _real_factory(target: str, endpoint: RedisEndpoint) -> AsyncIterator[RedisBackendFactory]:
    factory = RedisBackendFactory(target, url=endpoint.url)
    try:
        yield factory
    finally:
        await factory.aclose()
        await flush_endpoint(endpoint)


@pytest_asyncio.fixture
async def redis_backend_factory(redis_server: RedisEndpoint) -> AsyncIterator[RedisBackendFactory]:
    """A :class:`RedisBackendFactory` on the session's real ``redis_server``; the server is flushed
    after the test."""
    async for factory in _real_factory("redis", redis_server):
        yield factory


@pytest_asyncio.fixture
async def valkey_backend_factory(valkey_server: RedisEndpoint) -> AsyncIterator[RedisBackendFactory]:
    """A :class:`RedisBackendFactory` on the session's ``valkey_server``; flushed after the test."""
    async for factory in _real_factory("valkey", valkey_server):
        yield factory


@pytest.fixture
def queue_backend_factory(abe_redis_target: str, request: pytest.FixtureRequest) -> RedisBackendFactory:
    """A :class:`RedisBackendFactory` for each selected target (``--abe-redis-targets``): the test
    runs once on the fake and once per real server."""
    name = {
        "fake": "fake_backend_factory",
        "redis": "redis_backend_factory",
        "valkey": "valkey_backend_factory",
    }
    factory: RedisBackendFactory = request.getfixturevalue(name[abe_redis_target])
    return factory


@pytest.fixture
def queue_backend(queue_backend_factory: RedisBackendFactory) -> RedisStreamsBackend:
    """One backend from ``queue_backend_factory``, on each selected target."""
    return queue_backend_factory()
