"""The pytest fixtures and the ``toxiproxy-url`` option, run in inner pytest sessions."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from abe_redis_testing.toxiproxy import EmbeddedToxiproxy

PLUGIN = "abe_redis_testing._plugin_toxiproxy"

INNER_TESTS = """
import os

from abe_redis_testing.toxiproxy import ToxiproxyEndpoint

def test_endpoint(toxiproxy_server: ToxiproxyEndpoint) -> None:
    expected = os.environ["EXPECT_EMBEDDED"] == "1"
    assert toxiproxy_server.embedded is expected, toxiproxy_server.note
    assert toxiproxy_server.client.version().startswith("2.")
    if not expected:
        assert toxiproxy_server.url == os.environ["EXPECT_URL"]
"""


@pytest.fixture
def outer_server() -> Iterator[EmbeddedToxiproxy]:
    """Stands in for a 'real' Toxiproxy reachable at a URL."""
    with EmbeddedToxiproxy() as server:
        yield server


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def lean_inner_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner sessions load only our plugin: entry-point plugins cost a second per run."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", PLUGIN, "-p", "no:cacheprovider", *args)


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=INNER_TESTS)
    return run(pytester, *args)


def test_flag_selects_a_reachable_server(
    pytester: pytest.Pytester, outer_server: EmbeddedToxiproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)
    monkeypatch.setenv("EXPECT_EMBEDDED", "0")
    monkeypatch.setenv("EXPECT_URL", outer_server.url)
    result = run_inner(pytester, f"--abe-redis-toxiproxy-url={outer_server.url}")
    result.assert_outcomes(passed=1)


def test_env_selects_a_reachable_server(
    pytester: pytest.Pytester, outer_server: EmbeddedToxiproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOXIPROXY_URL", outer_server.url)
    monkeypatch.setenv("EXPECT_EMBEDDED", "0")
    monkeypatch.setenv("EXPECT_URL", outer_server.url)
    result = run_inner(pytester)
    result.assert_outcomes(passed=1)


def test_ini_selects_a_reachable_server(
    pytester: pytest.Pytester, outer_server: EmbeddedToxiproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)
    monkeypatch.setenv("EXPECT_EMBEDDED", "0")
    monkeypatch.setenv("EXPECT_URL", outer_server.url)
    pytester.makeini(f"[pytest]\nabe_redis_toxiproxy_url = {outer_server.url}\n")
    result = run_inner(pytester)
    result.assert_outcomes(passed=1)


def test_unreachable_url_falls_back_to_embedded(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOXIPROXY_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("EXPECT_EMBEDDED", "1")
    result = run_inner(pytester)
    result.assert_outcomes(passed=1)


def test_seed_option_reaches_the_embedded_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)
    pytester.makepyfile(
        test_seed="""
        def test_seed(toxiproxy_server):
            assert toxiproxy_server.embedded and toxiproxy_server.seed == 42
        """
    )
    run(pytester, "--abe-redis-toxiproxy-seed=42").assert_outcomes(passed=1)
    bad = run(pytester, "--abe-redis-toxiproxy-seed=soon")
    assert bad.ret != 0
    bad.stderr.fnmatch_lines(["*--abe-redis-toxiproxy-seed*must be an integer*"])


def test_no_url_starts_embedded(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)
    monkeypatch.setenv("EXPECT_EMBEDDED", "1")
    result = run_inner(pytester)
    result.assert_outcomes(passed=1)


def test_toxiproxy_fixture_deletes_only_its_own_proxies(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_scope="""
        import socket

        KEEP = {}

        def test_creates(toxiproxy, toxiproxy_server):
            with socket.create_server(("127.0.0.1", 0)) as upstream:
                address = "127.0.0.1:%d" % upstream.getsockname()[1]
            toxiproxy_server.client.create_proxy("not_ours", address)
            proxy = toxiproxy.proxy(address)
            KEEP["name"] = proxy.name
            assert proxy.name in toxiproxy_server.client.proxies()

        def test_after(toxiproxy_server):
            names = set(toxiproxy_server.client.proxies())
            assert KEEP["name"] not in names
            assert "not_ours" in names
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)


def test_toxiproxy_python_fixture_restores_class_attributes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_restore="""
        from toxiproxy.api import APIConsumer

        ORIGINAL = (APIConsumer.host, APIConsumer.port)
        SEEN = {}

        def test_uses_it(toxiproxy_python, toxiproxy_server):
            assert APIConsumer.port == toxiproxy_server.client.port != ORIGINAL[1]
            proxy = toxiproxy_python.create(upstream="127.0.0.1:9", name="made_by_python_client")
            SEEN["listen"] = proxy.listen

        def test_restored(toxiproxy_server):
            assert (APIConsumer.host, APIConsumer.port) == ORIGINAL
            assert "made_by_python_client" not in toxiproxy_server.client.proxies()
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)


def test_option_is_listed_in_help(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--help")
    result.stdout.fnmatch_lines(["*--abe-redis-toxiproxy-url*", "*abe_redis_toxiproxy_url*"])
