"""The server driven through toxiproxy-python (``requests`` based, synchronous), as users do."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import pytest
from toxiproxy_helpers import EchoServer, connect, recv_exactly

toxiproxy = pytest.importorskip("toxiproxy")
from toxiproxy.api import APIConsumer  # noqa: E402
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists  # noqa: E402

_ids = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_ids)}"


def address_of(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host, int(port)


def test_fixture_points_the_class_level_consumer_at_our_server(
    toxiproxy_python: Any, toxiproxy_server: Any
) -> None:
    assert (APIConsumer.host, APIConsumer.port) == (
        toxiproxy_server.client.host,
        toxiproxy_server.client.port,
    )
    assert toxiproxy_python.running() is True
    assert b'"version"' in toxiproxy_python.version()


def test_create_get_and_destroy(toxiproxy_python: Any, echo_server: EchoServer) -> None:
    name = unique("tp_python")
    proxy = toxiproxy_python.create(upstream=echo_server.address, name=name)
    assert proxy.name == name
    assert proxy.enabled is True
    host, port = address_of(proxy.listen)
    assert port > 0
    assert name in toxiproxy_python.proxies()
    assert toxiproxy_python.get_proxy(name).listen == proxy.listen
    with connect((host, port)) as sock:
        sock.sendall(b"hi")
        assert recv_exactly(sock, 2) == b"hi"
    with pytest.raises(ProxyExists):
        toxiproxy_python.create(upstream=echo_server.address, name=name)
    assert toxiproxy_python.destroy(proxy) is True
    assert toxiproxy_python.get_proxy(name) is None


def test_toxics_through_the_client(toxiproxy_python: Any, echo_server: EchoServer) -> None:
    proxy = toxiproxy_python.create(upstream=echo_server.address, name=unique("tp_toxics"))
    proxy.add_toxic(type="latency", attributes={"latency": 120, "jitter": 0})
    toxics = proxy.toxics()
    assert set(toxics) == {"latency_downstream"}
    toxic = toxics["latency_downstream"]
    assert (toxic.type, toxic.stream, toxic.toxicity) == ("latency", "downstream", 1.0)
    assert toxic.attributes == {"latency": 120, "jitter": 0}
    with connect(address_of(proxy.listen)) as sock:
        started = time.perf_counter()
        sock.sendall(b"lag")
        assert recv_exactly(sock, 3) == b"lag"
        assert time.perf_counter() - started >= 0.117
    assert proxy.destroy_toxic("latency_downstream") is True
    assert proxy.get_toxic("latency_downstream") is None
    with pytest.raises(NotFound):
        proxy.destroy_toxic("latency_downstream")
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="not_a_toxic")


def test_down_disables_and_reenables(toxiproxy_python: Any, echo_server: EchoServer) -> None:
    proxy = toxiproxy_python.create(upstream=echo_server.address, name=unique("tp_down"))
    address = address_of(proxy.listen)
    with proxy.down():
        assert toxiproxy_python.get_proxy(proxy.name).enabled is False
        with pytest.raises(ConnectionRefusedError):
            connect(address)
    assert toxiproxy_python.get_proxy(proxy.name).enabled is True
    with connect(address) as sock:
        sock.sendall(b"up")
        assert recv_exactly(sock, 2) == b"up"


def test_populate_is_done_client_side(toxiproxy_python: Any, echo_server: EchoServer) -> None:
    first, second = unique("tp_pop"), unique("tp_pop")
    created = toxiproxy_python.populate(
        [
            {"name": first, "upstream": echo_server.address, "listen": "127.0.0.1:0"},
            {"name": second, "upstream": echo_server.address, "listen": "127.0.0.1:0"},
        ]
    )
    assert sorted(p.name for p in created) == sorted([first, second])
    assert {first, second} <= set(toxiproxy_python.proxies())


def test_reset_reenables_and_clears(
    toxiproxy_python: Any, echo_server: EchoServer, toxiproxy_server: Any
) -> None:
    if not toxiproxy_server.embedded:
        pytest.skip("reset would touch every proxy of a shared real server")
    proxy = toxiproxy_python.create(upstream=echo_server.address, name=unique("tp_reset"))
    proxy.add_toxic(type="timeout", attributes={"timeout": 0})
    proxy.disable()
    assert toxiproxy_python.reset() is True
    after = toxiproxy_python.get_proxy(proxy.name)
    assert after.enabled is True
    assert after.toxics() == {}
