"""EmbeddedToxiproxy's lifecycle and the ``abe-redis-toxiproxy`` console script."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from toxiproxy_helpers import EchoServer, connect, recv_exactly

from abe_redis_testing.toxiproxy import (
    API_VERSION,
    TOXIC_TYPES,
    EmbeddedToxiproxy,
    ToxiproxyClient,
    ToxiproxyError,
)


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def test_context_manager_exposes_url_host_and_port() -> None:
    with EmbeddedToxiproxy() as server:
        assert server.running
        assert server.host == "127.0.0.1"
        assert server.api_port > 0
        assert server.url == f"http://127.0.0.1:{server.api_port}"
        assert ToxiproxyClient(server.url).version() == API_VERSION
        assert repr(server) == f"<EmbeddedToxiproxy {server.url}>"
    assert not server.running
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url


def test_stop_closes_proxies_and_the_api(echo_server: EchoServer) -> None:
    server = EmbeddedToxiproxy().start()
    assert server.start() is server  # starting twice is a no-op
    client = ToxiproxyClient(server.url, timeout=2)
    info = client.create_proxy("lifecycle", echo_server.address)
    port = int(info.listen.rpartition(":")[2])
    sock = connect(("127.0.0.1", port))
    sock.sendall(b"x")
    assert recv_exactly(sock, 1) == b"x"
    server.stop()
    with sock:
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        connect(("127.0.0.1", port))
    with pytest.raises(ToxiproxyError) as excinfo:
        client.version()
    assert excinfo.value.status == 0


def test_requested_port_in_use_fails_loudly() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="failed to start"):
            EmbeddedToxiproxy(port=port).start()


def test_toxic_types_cover_the_classic_toxiproxy_set() -> None:
    assert {"latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data"} <= set(
        TOXIC_TYPES
    )


def _script() -> list[str]:
    found = shutil.which("abe-redis-toxiproxy", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "abe_redis_testing.toxiproxy.server"]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_console_script_serves_until_signalled(
    tmp_path: Path, echo_server: EchoServer, stop_signal: signal.Signals
) -> None:
    port = free_port()
    config = tmp_path / "proxies.json"
    config.write_text(json.dumps([{"name": "from_config", "upstream": echo_server.address}]))
    process = subprocess.Popen(
        [*_script(), "--host", "127.0.0.1", "--port", str(port), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"listening on http://127.0.0.1:{port}" in banner, (banner, process.poll())
        client = ToxiproxyClient(f"http://127.0.0.1:{port}")
        assert client.version() == API_VERSION
        listen = client.get_proxy("from_config").listen
        with connect(listen) as sock:
            sock.sendall(b"cli")
            assert recv_exactly(sock, 3) == b"cli"
        process.send_signal(stop_signal)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()


def test_console_script_reports_a_busy_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*_script(), "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
