from __future__ import annotations

import re
import subprocess
import sys

import pytest
import redis

from abe_redis.cli import main
from abe_redis_testing.servers import RedisEndpoint


def test_verify_on_the_embedded_fake_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--count", "200", "--keys", "3"]) == 0
    out = capsys.readouterr().out
    assert "verify: PASS" in out
    assert "200 published to 3 keys, 200 delivered" in out
    assert "0 lost, 0 duplicates" in out
    assert "FakeRedisStreamsBackend: 35 passed, 0 failed, 0 skipped" in out
    assert "contract: PASS" in out


def test_verify_backend_runs_the_contract_on_any_backend(capsys: pytest.CaptureFixture[str]) -> None:
    spec = "abe.backends.message_queue.service.memory:MemoryBackend"
    assert main(["verify", "--backend", spec, "--contract-timeout", "2"]) == 0
    out = capsys.readouterr().out
    assert "contract: PASS" in out
    assert "skipped" in out and "not declared" in out  # capabilities it does not claim


def test_verify_backend_fails_a_backend_that_breaks_its_claims(capsys: pytest.CaptureFixture[str]) -> None:
    spec = "tests.abe_redis.broken_backend:UnvalidatingMemoryBackend"
    assert main(["verify", "--backend", spec, "--contract-timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert "contract: FAIL" in out
    assert re.search(r"\b[1-9]\d* failed", out)


def test_verify_on_a_real_server_passes_and_leaves_nothing(
    redis_server: RedisEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
        assert main(["verify", "--url", redis_server.url, "--count", "300"]) == 0
        out = capsys.readouterr().out
        assert "verify: PASS" in out
        assert "abe_redis:RedisStreamsBackend: 35 passed, 0 failed, 0 skipped" in out
        assert client.dbsize() == 0  # its namespaces (checks and contract) were cleaned up
    finally:
        client.close()


def test_verify_fails_with_nonzero_exit_when_the_server_is_unreachable() -> None:
    # A port nothing listens on: every publish fails, which must not look like a pass.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "abe_redis.cli",
            "verify",
            "--url",
            "redis://:hunter2@127.0.0.1:1/0",
            "--timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "REDIS_RETRY_ATTEMPTS": "0"},
    )
    assert result.returncode != 0
    assert "hunter2" not in result.stdout + result.stderr


def test_dlq_commands_round_trip(redis_server: RedisEndpoint, capsys: pytest.CaptureFixture[str]) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
        client.xadd(
            "orders:dead-letter", {"reason": "poison", "source_stream": "orders", "field:payload": b"{}"}
        )
        assert main(["dlq", "keys", "--url", redis_server.url]) == 0
        assert "orders\t1" in capsys.readouterr().out
        assert main(["dlq", "list", "orders", "--url", redis_server.url]) == 0
        assert "poison" in capsys.readouterr().out
        assert main(["dlq", "replay", "orders", "--url", redis_server.url]) == 0
        assert client.xlen("orders") == 1 and client.xlen("orders:dead-letter") == 0
        assert main(["dlq", "purge", "orders", "--url", redis_server.url]) == 0
    finally:
        client.flushall()
        client.close()
