"""The docs' examples, copied verbatim into a fresh project, are green.

Code blocks preceded by ``<!-- example: PATH -->`` are written to PATH in a pytester project that
loads only what the docs tell a user to load (``-p abe_redis_testing``) and keeps pytest-asyncio
in its default strict mode; blocks preceded by ``<!-- example-script: REDIS_URL -->`` run as
scripts against a real server. An edit that breaks an example breaks this test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from abe_redis_testing.servers import RedisEndpoint

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(
    r"<!-- (?P<kind>example|example-script): (?P<arg>\S+) -->\n```python\n(?P<code>.*?)\n```", re.S
)


def examples(kind: str) -> list[tuple[str, str, str]]:
    """(doc file, argument, code) of every marked block of ``kind``."""
    found = []
    for doc in sorted(DOCS.glob("*.md")):
        for match in _BLOCK.finditer(doc.read_text(encoding="utf-8")):
            if match["kind"] == kind:
                found.append((doc.name, match["arg"], match["code"] + "\n"))
    return found


def test_the_docs_have_examples_to_check() -> None:
    tests = {doc for doc, _, _ in examples("example")}
    assert {"testing.md", "contract.md", "chaos.md"} <= tests
    assert [doc for doc, _, _ in examples("example-script")] == ["quickstart.md"]


def test_every_test_example_passes_in_a_fresh_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A project that installed abe-redis[testing]: none of our conftests or ini settings apply,
    # and pytest-asyncio stays in strict mode.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)
    pytester.makeini("[pytest]\naddopts = -p abe_redis_testing -p no:valkey -p no:cacheprovider\n")
    written = []
    for doc, path, code in examples("example"):
        target = pytester.path / path
        assert not target.exists(), f"{doc}: two examples write {path}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code, encoding="utf-8")
        written.append(path)
    result = pytester.runpytest_subprocess("-rA", "-p", "no:randomly", timeout=600)
    outcomes = result.parseoutcomes()
    report = result.stdout.str()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, report
    for path in (path for path in written if Path(path).name.startswith("test_")):
        # Every example test module ran at least one test that passed.
        assert re.search(rf"PASSED {re.escape(path)}::", report), f"nothing in {path} passed:\n{report}"
    # The only skips are the contract tests for capabilities MemoryBackend does not claim.
    skipped = [line for line in report.splitlines() if line.startswith("SKIPPED")]
    assert all("not declared" in line for line in skipped), skipped


@pytest.mark.parametrize(("doc", "variable", "code"), examples("example-script"))
def test_every_script_example_runs_against_a_real_server(
    redis_server: RedisEndpoint, tmp_path: Path, doc: str, variable: str, code: str
) -> None:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if not name.startswith("REDIS_")}
    env[variable] = redis_server.url
    client = redis.Redis.from_url(redis_server.url)
    try:
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env, check=False
        )
        assert result.returncode == 0, f"{doc}:\n{result.stdout}{result.stderr}"
    finally:
        client.flushall()
        client.close()


# -- what a user sees when the plugin is misconfigured -------------------------------------------


def test_a_bogus_target_is_a_usage_message(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(queue_backend_factory):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p", "abe_redis_testing", "-p", "no:valkey", "--abe-redis-targets=bogus"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --abe-redis-targets: unknown target(s)*bogus*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_strict_failure_says_why_without_a_traceback(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makepyfile("def test_x(redis_server):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p",
        "abe_redis_testing",
        "-p",
        "no:valkey",
        "--abe-redis-strict",
        "--abe-redis-url=redis://127.0.0.1:1/0",
    )
    result.assert_outcomes(errors=1)
    text = result.stdout.str()
    assert "--abe-redis-strict is set, so this fails instead of skipping" in text
    assert "def unavailable" not in text and "_plugin_servers.py" not in text
