"""The plugin as a downstream project meets it: loaded by name, documented, opt-in."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

PUBLIC_FIXTURES = [
    "redis_server",
    "valkey_server",
    "redis_container",
    "redis_server_factory",
    "redis_server_handle",
    "redis_client",
    "fake_redis",
    "queue_backend_factory",
    "queue_backend",
    "fake_backend_factory",
    "redis_backend_factory",
    "valkey_backend_factory",
    "toxiproxy_server",
    "toxiproxy",
    "toxiproxy_python",
]


@pytest.fixture
def isolated(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # A project that only installed abe-redis: none of our conftests or ini settings apply.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makeini("[pytest]\naddopts = -p no:valkey -p no:cacheprovider\n")
    return pytester


def test_fixtures_are_listed_with_their_docs(isolated: pytest.Pytester) -> None:
    result = isolated.runpytest_subprocess("-p", "abe_redis_testing", "--fixtures")
    text = result.stdout.str()
    for name in PUBLIC_FIXTURES:
        assert f"{name} [" in text or f"{name} --" in text, f"{name} not listed by --fixtures"
    # Listed *with* documentation: none of our sections shows an undocumented fixture.
    sections = re.split(r"-+ fixtures defined from ", text)
    ours = [section for section in sections if section.startswith("abe_redis_testing")]
    assert len(ours) >= 3
    for section in ours:
        assert "no docstring available" not in section, section


def test_options_have_their_own_help_group(isolated: pytest.Pytester) -> None:
    result = isolated.runpytest_subprocess("-p", "abe_redis_testing", "--help")
    text = result.stdout.str()
    assert "abe-redis: Redis servers, fakes, contract suite and chaos" in text
    for flag in (
        "--abe-redis-url",
        "--abe-redis-strict",
        "--abe-redis-targets",
        "--abe-redis-toxiproxy-url",
        "--abe-redis-contract-timeout",
    ):
        assert flag in text
    assert "abe_redis_targets" in text  # the ini key of the same option


def test_markers_pass_strict_markers(isolated: pytest.Pytester) -> None:
    isolated.makepyfile(
        """
        import pytest

        @pytest.mark.abe_redis_targets("fake")
        @pytest.mark.abe_redis_fake
        def test_marked():
            pass
        """
    )
    isolated.runpytest_subprocess("-p", "abe_redis_testing", "--strict-markers").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("--abe-redis-targets=nope", "unknown target(s) ['nope']"),
        ("--abe-redis-startup-timeout=soon", "--abe-redis-startup-timeout / abe_redis_startup_timeout"),
        ("--abe-redis-cluster-masters=three", "must be an integer, got 'three'"),
        ("--abe-redis-server=bogus", "--abe-redis-server must be one of"),
    ],
)
def test_a_bad_option_value_stops_the_run_with_a_usage_message(
    isolated: pytest.Pytester, option: str, expected: str
) -> None:
    # Read lazily, a bad number used to error every test whose fixture read it, and the run went on.
    isolated.makepyfile("def test_uses_a_server(redis_server):\n    pass\n")
    result = isolated.runpytest_subprocess("-p", "abe_redis_testing", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert expected in result.stderr.str()
    assert "test_uses_a_server" not in result.stdout.str()


def test_not_loaded_unless_asked(isolated: pytest.Pytester) -> None:
    # Installing abe-redis must not change unrelated test runs: no pytest11 autoload entry.
    assert not [ep for ep in entry_points(group="pytest11") if ep.value.startswith("abe_redis")]
    result = isolated.runpytest_subprocess("--help")
    assert "--abe-redis-url" not in result.stdout.str()


def test_fake_backend_round_trip_in_a_downstream_project(isolated: pytest.Pytester) -> None:
    isolated.makepyfile(
        """
        import pytest

        @pytest.mark.abe_redis_targets("fake")
        async def test_downstream(queue_backend):
            await queue_backend.publish("k", {"a": 1})
            stream = queue_backend.consume()
            assert await anext(stream) == {"a": 1}
            await stream.aclose()
        """
    )
    isolated.runpytest_subprocess(
        "-p", "abe_redis_testing", "-p", "asyncio", "-o", "asyncio_mode=auto"
    ).assert_outcomes(passed=1)


def test_plugin_importable_without_pytest_running() -> None:
    # Library use (contract runner, servers) must not need a pytest session.
    code = "import abe_redis_testing, abe_redis_testing.contract, abe_redis_testing.faults; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "ok"
