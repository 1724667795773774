"""``abe-redis verify`` stays in its lane: the server it was given, a namespace of its own, nothing
left behind, and a base install (no testing extra) that still works."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import redis

from abe_redis.cli import main
from abe_redis_testing._plugin_servers import RedisServerFactory
from abe_redis_testing.servers import RedisEndpoint

# An application's stream settings, as a production environment would have them.
PRODUCTION_ENV = {
    "REDIS_STREAMS": "orders",
    "REDIS_STREAM_PATTERN": "orders*",
    "REDIS_REGISTRY_KEY": "prod:streams",
    "REDIS_CONSUMER_GROUP": "prod-workers",
    "REDIS_DEAD_LETTER_SUFFIX": ":prod-dead",
}


@pytest.fixture
def client(redis_server: RedisEndpoint) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.flushall()
    client.close()


def _assert_production_untouched(client: redis.Redis) -> None:
    assert client.xlen("orders") == 1
    assert client.xinfo_groups("orders") == []
    assert not client.exists("prod:streams")
    assert client.keys("*prod-dead*") == []


def test_verify_on_a_real_server_ignores_stream_settings_and_leaves_nothing(
    client: redis.Redis,
    redis_server: RedisEndpoint,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client.xadd("orders", {"payload": b'{"live": true}'})
    for name, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["verify", "--url", redis_server.url, "--count", "300"]) == 0
    out = capsys.readouterr().out
    assert "verify: PASS" in out
    assert "abe_redis:RedisStreamsBackend: 35 passed, 0 failed, 0 skipped" in out
    _assert_production_untouched(client)
    assert client.keys("*") == [b"orders"]  # its namespaces (checks and contract) were removed


def test_verify_backend_with_url_runs_there_and_leaves_nothing(
    client: redis.Redis,
    redis_server: RedisEndpoint,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client.xadd("orders", {"payload": b'{"live": true}'})
    for name, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)
    # A URL in the environment that must lose to --url: nothing listens there.
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("COLUMNS", "200")
    spec = "abe_redis:RedisStreamsBackend"
    assert main(["verify", "--backend", spec, "--url", redis_server.url]) == 0
    out = capsys.readouterr().out
    assert f"{spec}: 35 passed, 0 failed, 0 skipped" in out
    _assert_production_untouched(client)
    assert client.keys("*") == [b"orders"]


def test_verify_takes_the_password_from_the_environment(
    redis_server_factory: RedisServerFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = redis_server_factory()
    admin = redis.Redis.from_url(server.url)
    try:
        admin.config_set("requirepass", "s3cret")
    finally:
        admin.close()
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    assert main(["verify", "--url", server.url, "--count", "50", "--timeout", "10", "--no-contract"]) == 0
    out = capsys.readouterr().out
    assert "verify: PASS" in out and "s3cret" not in out


# -- a base install: no pytest, Hypothesis or fakeredis --------------------------------------------

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = {"pytest", "_pytest", "pytest_asyncio", "hypothesis", "fakeredis"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    for name in list(sys.modules):
        if name.partition(".")[0] in BLOCKED:
            del sys.modules[name]
    sys.meta_path.insert(0, Blocker())
    """
)


def _base_install(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        check=False,
    )


def test_the_runtime_package_imports_no_test_dependencies() -> None:
    result = _base_install(
        """
        import importlib, pkgutil, sys
        import abe_redis
        for module in pkgutil.walk_packages(abe_redis.__path__, "abe_redis."):
            importlib.import_module(module.name)
        leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED | {"abe_redis_testing"})
        print("leaked:", leaked)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "leaked: []" in result.stdout


def test_base_install_verify_with_url_passes_and_skips_the_contract_with_a_note(
    client: redis.Redis, redis_server: RedisEndpoint
) -> None:
    result = _base_install(
        "import sys\nfrom abe_redis.cli import main\nsys.exit(main(sys.argv[1:]))\n",
        "verify",
        "--url",
        redis_server.url,
        "--count",
        "50",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verify: PASS" in result.stdout
    notes = [line for line in result.stdout.splitlines() if "contract suite skipped" in line]
    assert notes == ["contract suite skipped: it needs the testing extra (pip install 'abe-redis[testing]')"]
    assert client.keys("*") == []


def test_base_install_verify_without_a_url_says_what_to_install() -> None:
    result = _base_install(
        "import sys\nfrom abe_redis.cli import main\nsys.exit(main(sys.argv[1:]))\n", "verify"
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "pip install 'abe-redis[testing]'" in line  # not swallowed as markup
