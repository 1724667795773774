"""The scenario helpers of :mod:`abe_redis_testing.faults`, against the embedded server (or a real
Toxiproxy when ``TOXIPROXY_URL`` answers), with a local echo upstream and a real redis-server."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from abe_redis_testing.faults import FaultProxy, ProxyScope, proxy_to
from abe_redis_testing.toxiproxy import EmbeddedToxiproxy, ToxiproxyClient, ToxiproxyError

SLACK = 0.5  # generous upper-bound slack for a loaded machine


@pytest.fixture(scope="module")
def chaos_client() -> Iterator[ToxiproxyClient]:
    """A real Toxiproxy if TOXIPROXY_URL answers, else an embedded server for this module."""
    url = os.environ.get("TOXIPROXY_URL")
    if url and ToxiproxyClient(url, timeout=2).is_available():
        yield ToxiproxyClient(url)
        return
    with EmbeddedToxiproxy() as server:
        yield ToxiproxyClient(server.url)


@pytest.fixture
def scope(chaos_client: ToxiproxyClient) -> Iterator[ProxyScope]:
    """Proxies for one test, deleted after it."""
    with ProxyScope(chaos_client, prefix="chaos_test") as proxies:
        yield proxies


class _Echo:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)


@pytest.fixture(scope="module")
def echo() -> Iterator[_Echo]:
    """A TCP echo server used as the upstream."""
    server = _Echo()
    yield server
    server.sock.close()


@pytest.fixture
def proxy(scope: ProxyScope, echo: _Echo) -> FaultProxy:
    """A proxy in front of the echo server."""
    return scope.proxy(("127.0.0.1", echo.port))


def exchange(proxy: FaultProxy, payload: bytes = b"ping", timeout: float = 5.0) -> float:
    """Seconds for one echo roundtrip on a fresh connection through ``proxy``."""
    with socket.create_connection(proxy.address, timeout=timeout) as sock:
        started = time.perf_counter()
        sock.sendall(payload)
        data = b""
        while len(data) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} bytes")
            data += chunk
        assert data == payload
        return time.perf_counter() - started


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_proxy_to_listens_on_a_free_port(chaos_client: ToxiproxyClient, echo: _Echo) -> None:
    with proxy_to(chaos_client, f"127.0.0.1:{echo.port}") as proxy:
        assert proxy.listen_host == "127.0.0.1"
        assert proxy.listen_port > 0
        assert proxy.listen == f"127.0.0.1:{proxy.listen_port}"
        assert proxy.upstream == f"127.0.0.1:{echo.port}"
        assert exchange(proxy) < SLACK
        assert proxy.enabled is True
    with pytest.raises(ToxiproxyError) as excinfo:
        chaos_client.get_proxy(proxy.name)
    assert excinfo.value.status == 404
    assert excinfo.value.message == "proxy not found"


def test_latency_holds_for_the_block_only(proxy: FaultProxy) -> None:
    with proxy.latency(150, jitter=20) as toxics:
        assert [t.type for t in toxics] == ["latency"]
        assert proxy.toxics() == toxics
        elapsed = exchange(proxy)
        assert 0.130 - 0.003 <= elapsed <= 0.170 + SLACK
    assert proxy.toxics() == []
    assert exchange(proxy) < 0.130


def test_scenarios_nest_and_both_streams(proxy: FaultProxy) -> None:
    with proxy.latency(40, stream="both") as lag, proxy.bandwidth(10_000):
        assert {t.stream for t in lag} == {"upstream", "downstream"}
        assert len(proxy.toxics()) == 3
        assert exchange(proxy) >= 0.080 - 0.003
    assert proxy.toxics() == []


def test_fault_is_removed_when_the_block_fails(proxy: FaultProxy) -> None:
    with pytest.raises(RuntimeError, match="boom"), proxy.limit_data(1):
        raise RuntimeError("boom")
    assert proxy.toxics() == []


def test_exit_tolerates_a_toxic_removed_meanwhile(proxy: FaultProxy, chaos_client: ToxiproxyClient) -> None:
    with proxy.slow_close(10) as toxics:
        chaos_client.remove_toxic(proxy.name, toxics[0].name)
    assert proxy.toxics() == []


def test_down_refuses_then_recovers(proxy: FaultProxy) -> None:
    with proxy.down():
        assert proxy.enabled is False
        with pytest.raises(ConnectionRefusedError):
            exchange(proxy)
    assert exchange(proxy) < SLACK


def test_down_for_seconds_comes_back_while_the_block_runs(proxy: FaultProxy) -> None:
    started = time.perf_counter()
    with proxy.down(seconds=0.3):
        with pytest.raises(ConnectionRefusedError):
            exchange(proxy)
        deadline = started + 5
        while True:
            try:
                exchange(proxy)
                break
            except ConnectionRefusedError:
                if time.perf_counter() > deadline:
                    raise
                time.sleep(0.02)
        back_after = time.perf_counter() - started
    assert 0.3 <= back_after <= 0.3 + 2 * SLACK


def test_reset_peer_gives_connection_reset(proxy: FaultProxy) -> None:
    with proxy.reset_peer(), pytest.raises(ConnectionResetError):
        exchange(proxy)
    assert exchange(proxy) < SLACK


def test_black_hole_swallows_data_and_closes_on_exit(proxy: FaultProxy) -> None:
    sock = socket.create_connection(proxy.address, timeout=0.3)
    with sock:
        with proxy.black_hole():
            sock.sendall(b"into the void")
            with pytest.raises(TimeoutError):
                sock.recv(100)
        sock.settimeout(5)
        assert read_all(sock) == b""
    assert exchange(proxy) < SLACK


def test_black_hole_with_timeout_closes_the_connection(proxy: FaultProxy) -> None:
    with proxy.black_hole(200), socket.create_connection(proxy.address, timeout=5) as sock:
        started = time.perf_counter()
        sock.sendall(b"x")
        assert read_all(sock) == b""
        assert 0.19 <= time.perf_counter() - started <= 0.2 + SLACK


def test_bandwidth_slows_a_transfer(proxy: FaultProxy) -> None:
    payload = os.urandom(60_000)
    with proxy.bandwidth(200):
        elapsed = exchange(proxy, payload)
    assert 0.3 * 0.9 <= elapsed <= 0.3 + 4 * SLACK


def test_slicer_and_limit_data(proxy: FaultProxy) -> None:
    payload = os.urandom(20_000)
    with proxy.slicer(50, 10, 5):
        assert exchange(proxy, payload) < 10
    with proxy.limit_data(777), socket.create_connection(proxy.address, timeout=5) as sock:
        sock.sendall(payload)
        assert read_all(sock) == payload[:777]


def test_scope_deletes_only_what_it_created(chaos_client: ToxiproxyClient, echo: _Echo) -> None:
    outsider = proxy_to(chaos_client, ("127.0.0.1", echo.port))
    try:
        with ProxyScope(chaos_client) as scope:
            first = scope.proxy(("127.0.0.1", echo.port))
            second = scope.proxy(f"127.0.0.1:{echo.port}", name="chaos_named_proxy")
            assert second.name == "chaos_named_proxy"
            assert scope.proxies == [first, second]
        names = set(chaos_client.proxies())
        assert first.name not in names
        assert second.name not in names
        assert outsider.name in names
    finally:
        outsider.delete()


def test_client_errors_are_typed_and_never_leak_credentials() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    client = ToxiproxyClient(f"http://admin:hunter2@127.0.0.1:{port}", timeout=1)
    assert "hunter2" not in repr(client)
    assert client.is_available() is False
    with pytest.raises(ToxiproxyError) as excinfo:
        client.proxies()
    assert excinfo.value.status == 0
    assert "hunter2" not in str(excinfo.value)


def test_client_covers_update_and_populate(
    chaos_client: ToxiproxyClient, proxy: FaultProxy, echo: _Echo
) -> None:
    toxic = chaos_client.add_toxic(proxy.name, "latency", {"latency": 5}, name="tuned")
    assert toxic.attributes == {"latency": 5, "jitter": 0}
    tuned = chaos_client.update_toxic(proxy.name, "tuned", {"jitter": 2}, toxicity=0.25)
    assert (tuned.attributes["jitter"], tuned.toxicity) == (2, 0.25)
    assert chaos_client.get_toxic(proxy.name, "tuned") == tuned
    name = f"chaos_populated_{os.getpid()}"
    try:
        populated = chaos_client.populate([{"name": name, "upstream": f"127.0.0.1:{echo.port}"}])
        assert [p.name for p in populated] == [name]
        assert populated[0].enabled is True
    finally:
        chaos_client.delete_proxy(name)


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Port of a throwaway redis-server (not the shared one on 6379), skipped if none on PATH."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH")
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = int(placeholder.getsockname()[1])
    workdir: Path = tmp_path_factory.mktemp("chaos-redis")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_redis_through_the_proxy_sees_the_faults(scope: ProxyScope, redis_port: int) -> None:
    proxy = scope.proxy(("127.0.0.1", redis_port))
    # No retries: redis-py's default back-off would hide each fault behind seconds of retrying.
    client = redis.Redis(
        host=proxy.listen_host, port=proxy.listen_port, socket_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    try:
        assert client.ping() is True
        with proxy.latency(120):
            started = time.perf_counter()
            assert client.ping() is True
            assert time.perf_counter() - started >= 0.117
        with proxy.down(), pytest.raises(redis.ConnectionError):
            client.ping()
        # redis-py reconnects on the next command once the proxy is back.
        assert client.ping() is True
        with proxy.reset_peer(), pytest.raises(redis.ConnectionError):
            client.ping()
        assert client.set("chaos", "survived") is True
        assert client.get("chaos") == b"survived"
    finally:
        client.close()
