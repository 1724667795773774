"""Toxic behaviour, with the kind of assertions Toxiproxy's own tests make.

Timing bounds: lower bounds are strict (a toxic must never be faster than configured, minus
timer slack); upper bounds are generous because a loaded 2-core CI box can stall any thread.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import random
import socket
import statistics
import threading
import time
from typing import Literal

import pytest
from toxiproxy_helpers import EchoServer, connect, recv_exactly, recv_until_eof, recv_up_to

from abe_redis_testing.faults import FaultProxy, ProxyScope
from abe_redis_testing.toxiproxy import ToxiproxyClient
from abe_redis_testing.toxiproxy._toxics import slice_offsets

# Timers may fire a hair early relative to the arrival stamp taken by the proxy.
TIMER_SLACK = 0.003
# How late anything may be on a loaded machine before we call it a bug.
SCHEDULING_SLACK = 0.5


def roundtrip(sock: socket.socket, payload: bytes) -> float:
    started = time.perf_counter()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.perf_counter() - started


@pytest.fixture
def proxy(toxiproxy: ProxyScope, echo_server: EchoServer) -> FaultProxy:
    """A fresh proxy in front of the echo server, deleted after the test."""
    return toxiproxy.proxy(echo_server.address)


def test_latency_delays_each_roundtrip_within_jitter(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    client.add_toxic(proxy.name, "latency", {"latency": 60, "jitter": 15})
    with connect(proxy.address) as sock:
        samples = [roundtrip(sock, b"x" * 10) for _ in range(8)]
    assert min(samples) >= 0.045 - TIMER_SLACK, samples
    assert max(samples) <= 0.075 + SCHEDULING_SLACK, samples
    # The typical sample stays within latency + jitter + 10 ms, as Toxiproxy's tests demand.
    assert statistics.median(samples) <= 0.075 + 0.010 + 0.050, samples


def test_latency_applies_to_already_open_connections(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    with connect(proxy.address) as sock:
        assert roundtrip(sock, b"warm") < SCHEDULING_SLACK
        client.add_toxic(proxy.name, "latency", {"latency": 150})
        assert roundtrip(sock, b"slow") >= 0.150 - TIMER_SLACK
        client.remove_toxic(proxy.name, "latency_downstream")
        assert roundtrip(sock, b"fast") < 0.150


def test_updating_a_toxic_changes_open_connections(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    client.add_toxic(proxy.name, "latency", {"latency": 0})
    with connect(proxy.address) as sock:
        assert roundtrip(sock, b"quick") < SCHEDULING_SLACK
        client.update_toxic(proxy.name, "latency_downstream", {"latency": 200})
        assert roundtrip(sock, b"slower") >= 0.200 - TIMER_SLACK


def test_latency_upstream_and_downstream_add_up(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    client.add_toxic(proxy.name, "latency", {"latency": 50}, stream="upstream")
    client.add_toxic(proxy.name, "latency", {"latency": 70}, stream="downstream")
    with connect(proxy.address) as sock:
        elapsed = roundtrip(sock, b"both ways")
    assert 0.120 - TIMER_SLACK <= elapsed <= 0.120 + SCHEDULING_SLACK


def test_removing_latency_delivers_the_held_data_at_once(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    client.add_toxic(proxy.name, "latency", {"latency": 5000})
    with connect(proxy.address, timeout=4.0) as sock:
        started = time.perf_counter()
        sock.sendall(b"held")
        # The echo is held: nothing arrives for a while (a recv that times out proves it).
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(4)
        sock.settimeout(4.0)
        client.remove_toxic(proxy.name, "latency_downstream")
        assert recv_exactly(sock, 4) == b"held"
        assert time.perf_counter() - started < 4.0


def test_bandwidth_limits_throughput(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    rate_kb = 200
    payload = os.urandom(100_000)  # 0.5 s at 200 KB/s (1 KB = 1000 bytes, as Toxiproxy)
    client.add_toxic(proxy.name, "bandwidth", {"rate": rate_kb})
    with connect(proxy.address) as sock:
        started = time.perf_counter()
        sock.sendall(payload)
        received = recv_exactly(sock, len(payload))
        elapsed = time.perf_counter() - started
    assert received == payload
    expected = len(payload) / (rate_kb * 1000)
    assert elapsed >= expected * 0.9, elapsed
    assert elapsed <= expected + 4 * SCHEDULING_SLACK, elapsed


def test_slicer_keeps_bytes_intact(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    payload = os.urandom(64 * 1024)
    client.add_toxic(proxy.name, "slicer", {"average_size": 100, "size_variation": 40, "delay": 10})
    client.add_toxic(proxy.name, "slicer", {"average_size": 7, "size_variation": 3}, stream="upstream")
    with connect(proxy.address, timeout=15) as sock:
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload


@pytest.mark.parametrize(
    ("size", "average", "variation"), [(1, 10, 0), (1000, 100, 30), (4096, 7, 3), (50, 1, 0)]
)
def test_slice_offsets_cover_the_buffer_in_bounded_pieces(size: int, average: int, variation: int) -> None:
    cuts = slice_offsets(size, average, variation, random.Random(size))
    assert cuts[0] == 0
    assert cuts[-1] == size
    pieces = [b - a for a, b in itertools.pairwise(cuts)]
    assert all(0 < piece <= average + variation for piece in pieces), pieces


def test_limit_data_passes_exactly_that_many_bytes_then_closes(
    proxy: FaultProxy, client: ToxiproxyClient
) -> None:
    payload = os.urandom(5000)
    client.add_toxic(proxy.name, "limit_data", {"bytes": 1234})
    with connect(proxy.address) as sock:
        sock.sendall(payload)
        received = recv_until_eof(sock)
    assert received == payload[:1234]


def test_limit_data_counts_across_writes(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    client.add_toxic(proxy.name, "limit_data", {"bytes": 10})
    with connect(proxy.address) as sock:
        sock.sendall(b"123456")
        assert recv_exactly(sock, 6) == b"123456"
        sock.sendall(b"789abcdef")
        assert recv_until_eof(sock) == b"789a"


def test_timeout_zero_swallows_data_and_removal_closes_the_connection(
    proxy: FaultProxy, client: ToxiproxyClient
) -> None:
    client.add_toxic(proxy.name, "timeout", {"timeout": 0})
    with connect(proxy.address, timeout=0.3) as sock:
        sock.sendall(b"lost")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        client.remove_toxic(proxy.name, "timeout_downstream")
        sock.settimeout(5)
        # Toxiproxy's timeout toxic closes the connection when it is removed.
        assert recv_until_eof(sock) == b""


def test_timeout_closes_the_connection_after_the_timeout(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    client.add_toxic(proxy.name, "timeout", {"timeout": 200})
    with connect(proxy.address) as sock:
        started = time.perf_counter()
        sock.sendall(b"data")
        assert recv_until_eof(sock) == b""
        elapsed = time.perf_counter() - started
    assert 0.2 - TIMER_SLACK - 0.01 <= elapsed <= 0.2 + SCHEDULING_SLACK


def test_reset_peer_resets_the_connection(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    client.add_toxic(proxy.name, "reset_peer", {"timeout": 0})
    with connect(proxy.address) as sock:
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            recv_until_eof(sock)


def test_reset_peer_waits_for_its_timeout(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    client.add_toxic(proxy.name, "reset_peer", {"timeout": 200}, stream="upstream")
    with connect(proxy.address) as sock:
        started = time.perf_counter()
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            recv_until_eof(sock)
        elapsed = time.perf_counter() - started
    assert 0.2 - TIMER_SLACK <= elapsed <= 0.2 + SCHEDULING_SLACK


def test_slow_close_delays_the_close(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    client.add_toxic(proxy.name, "slow_close", {"delay": 300})
    with connect(proxy.address) as sock:
        assert roundtrip(sock, b"before close") < SCHEDULING_SLACK
        started = time.perf_counter()
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""
        elapsed = time.perf_counter() - started
    assert 0.3 - TIMER_SLACK <= elapsed <= 0.3 + SCHEDULING_SLACK


def test_toxicity_is_drawn_per_connection(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    client.add_toxic(proxy.name, "limit_data", {"bytes": 1}, toxicity=0.5)
    outcomes = []
    for _ in range(40):
        with connect(proxy.address) as sock:
            sock.sendall(b"abc")
            outcomes.append(recv_up_to(sock, 3))
    # With the toxic a connection gets 1 byte; without it the whole echo. P(all alike) = 2**-39.
    assert set(outcomes) <= {b"a", b"abc"}, outcomes
    assert b"a" in outcomes
    assert b"abc" in outcomes


def test_toxicity_zero_never_applies(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    client.add_toxic(proxy.name, "latency", {"latency": 2000}, toxicity=0.0)
    with connect(proxy.address) as sock:
        assert roundtrip(sock, b"unaffected") < 1.0


def test_no_data_is_lost_while_toxics_come_and_go(proxy: FaultProxy, client: ToxiproxyClient) -> None:
    block = 32 * 1024
    blocks = 64
    payload = os.urandom(block * blocks)
    received = bytearray()
    errors: list[BaseException] = []
    sock = connect(proxy.address, timeout=20)
    churned = threading.Condition()
    cycles = 0

    def churned_past(index: int) -> bool:
        return cycles >= index

    def pump_in() -> None:
        # Pace the transfer by the churn, so toxics really are added and removed mid-stream.
        try:
            view = memoryview(payload)
            for index in range(blocks):
                with churned:
                    if not churned.wait_for(functools.partial(churned_past, index), timeout=20):
                        raise TimeoutError("toxic churn stalled")
                sock.sendall(view[index * block : (index + 1) * block])
        except BaseException as exc:
            errors.append(exc)

    def pump_out() -> None:
        try:
            while len(received) < len(payload):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received.extend(chunk)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=pump_in, daemon=True)
    reader = threading.Thread(target=pump_out, daemon=True)
    writer.start()
    reader.start()
    toxics = [
        ("latency", {"latency": 2, "jitter": 1}),
        ("slicer", {"average_size": 512, "size_variation": 128, "delay": 0}),
        ("bandwidth", {"rate": 50_000}),
        ("slow_close", {"delay": 10}),
    ]
    while reader.is_alive() and writer.is_alive() and cycles < 2 * blocks:
        kind, attributes = toxics[cycles % len(toxics)]
        stream: Literal["upstream", "downstream"] = "upstream" if cycles % 2 else "downstream"
        name = f"churn_{cycles}"
        client.add_toxic(proxy.name, kind, attributes, name=name, stream=stream)
        client.remove_toxic(proxy.name, name)
        with churned:
            cycles += 1
            churned.notify_all()
    writer.join(30)
    reader.join(30)
    sock.close()
    assert not errors, errors
    assert not reader.is_alive(), f"stuck after {len(received)} of {len(payload)} bytes"
    assert cycles >= blocks
    assert bytes(received) == payload


def test_deleting_a_proxy_closes_its_connections(toxiproxy: ProxyScope, echo_server: EchoServer) -> None:
    proxy = toxiproxy.proxy(echo_server.address)
    with connect(proxy.address) as sock:
        assert roundtrip(sock, b"x") < SCHEDULING_SLACK
        proxy.delete()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""
