"""The embedded server under bad input: every malformed request is answered with a 4xx (never a
dropped connection or a 500), out-of-range toxic attributes are refused, no toxic can wedge it,
and its randomness follows the seed it was started with."""

from __future__ import annotations

import itertools
import json
import random
import socket
from collections.abc import Iterator

import pytest
from toxiproxy_helpers import EchoServer, connect, recv_exactly

from abe_redis_testing.toxiproxy import EmbeddedToxiproxy, _http
from abe_redis_testing.toxiproxy._proxy import ProxyCollection
from abe_redis_testing.toxiproxy._toxics import slice_offsets


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedToxiproxy]:
    with EmbeddedToxiproxy() as embedded:
        yield embedded


def exchange(server: EmbeddedToxiproxy, raw: bytes, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send ``raw`` on a fresh connection; the reply's status and everything until the server
    closes (each of these requests must end with a reply and a close)."""
    with socket.create_connection((server.host, server.api_port), timeout=timeout) as sock:
        sock.sendall(raw)
        reply = bytearray()
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply, "the server closed the connection without answering"
    status_line = bytes(reply).split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), bytes(reply)


def post(path: str, body: bytes, *, length: str | None = None, extra: bytes = b"") -> bytes:
    declared = str(len(body)) if length is None else length
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\nConnection: close\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/9.9 extra\r\n\r\n", 400),
        (b"GET /version HTTP/1.1\r\nBad Header Line\r\n\r\n", 400),
        (post("/proxies", b"{}", length="abc"), 400),
        (post("/proxies", b"{}", length="-5"), 400),
        (post("/proxies", b"{}", extra=b"Content-Length: 7\r\n"), 400),
        (post("/proxies", b"", length=str(_http.MAX_BODY_BYTES + 1)), 413),
        (b"GET /version HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET /version HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(150)) + b"\r\n", 431),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (post("/proxies", b"[" * 100_000), 400),
        (post("/proxies", b"{" * 5000), 400),
        (
            b"POST /proxies HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n",
            400,
        ),
    ],
)
def test_malformed_requests_get_a_4xx_reply(server: EmbeddedToxiproxy, raw: bytes, status: int) -> None:
    assert exchange(server, raw)[0] == status


def test_a_body_that_never_arrives_gets_408(
    server: EmbeddedToxiproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_http, "BODY_TIMEOUT", 0.3)
    assert exchange(server, post("/proxies", b"{}", length="50"))[0] == 408


def test_the_server_still_serves_after_bad_requests(server: EmbeddedToxiproxy) -> None:
    exchange(server, b"GARBAGE\r\n\r\n")
    status, reply = exchange(server, b"GET /version HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == 200 and b'"version"' in reply


@pytest.fixture
def proxy(server: EmbeddedToxiproxy, echo_server: EchoServer) -> Iterator[str]:
    body = json.dumps({"name": "robust", "upstream": echo_server.address, "listen": "127.0.0.1:0"})
    status, _ = exchange(server, post("/proxies", body.encode()))
    assert status == 201
    yield "robust"
    exchange(server, b"DELETE /proxies/robust HTTP/1.1\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize(
    "toxic",
    [
        {"type": "latency", "attributes": {"latency": -1}},
        {"type": "latency", "attributes": {"jitter": -5}},
        {"type": "latency", "attributes": {"latency": 10**15}},
        {"type": "slicer", "attributes": {"average_size": 1, "size_variation": -5}},
        {"type": "slicer", "attributes": {"average_size": 2**40}},
        {"type": "bandwidth", "attributes": {"rate": -1}},
        {"type": "limit_data", "attributes": {"bytes": -1}},
        {"type": "timeout", "attributes": {"timeout": 2**62}},
        {"type": "latency", "toxicity": 1.5},
        {"type": "latency", "toxicity": -0.1},
    ],
)
def test_out_of_range_toxics_are_400(server: EmbeddedToxiproxy, proxy: str, toxic: dict[str, object]) -> None:
    status, reply = exchange(server, post(f"/proxies/{proxy}/toxics", json.dumps(toxic).encode()))
    assert status == 400, reply
    assert b"bad request body" in reply


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinite_toxicity_are_400(server: EmbeddedToxiproxy, proxy: str, constant: bytes) -> None:
    body = b'{"type": "latency", "toxicity": ' + constant + b"}"
    assert exchange(server, post(f"/proxies/{proxy}/toxics", body))[0] == 400


def test_an_update_out_of_range_is_400_and_keeps_the_toxic(server: EmbeddedToxiproxy, proxy: str) -> None:
    create = {"name": "lag", "type": "latency", "attributes": {"latency": 5}}
    assert exchange(server, post(f"/proxies/{proxy}/toxics", json.dumps(create).encode()))[0] == 200
    update = json.dumps({"attributes": {"latency": -3}}).encode()
    assert exchange(server, post(f"/proxies/{proxy}/toxics/lag", update))[0] == 400
    status, reply = exchange(server, b"GET /proxies/robust/toxics/lag HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == 200 and b'"latency": 5' in reply


@pytest.mark.parametrize(("average", "variation"), [(1, 0), (1, 5), (3, 10), (100, 99), (0, 0), (7, 7)])
def test_slice_offsets_always_end_and_cover_the_buffer(average: int, variation: int) -> None:
    cuts = slice_offsets(5000, average, variation, random.Random(1))
    assert cuts[0] == 0 and cuts[-1] == 5000
    assert all(b > a for a, b in itertools.pairwise(cuts))


def test_slicer_with_variation_above_average_still_passes_data(server: EmbeddedToxiproxy, proxy: str) -> None:
    toxic = {"type": "slicer", "attributes": {"average_size": 2, "size_variation": 9, "delay": 0}}
    assert exchange(server, post(f"/proxies/{proxy}/toxics", json.dumps(toxic).encode()))[0] == 200
    _status, reply = exchange(server, b"GET /proxies/robust HTTP/1.1\r\nConnection: close\r\n\r\n")
    listen = json.loads(reply.split(b"\r\n\r\n", 1)[1])["listen"]
    with connect(listen) as sock:
        sock.sendall(b"x" * 1000)
        assert recv_exactly(sock, 1000) == b"x" * 1000


# -- seeded randomness ---------------------------------------------------------------------------


def _draws(seed: int | None) -> list[float]:
    collection = ProxyCollection(seed)
    proxies = [collection._new_proxy(f"p{n}", "127.0.0.1:0", "127.0.0.1:1") for n in range(3)]
    return [proxy.rng.random() for proxy in proxies]


def test_the_seed_fixes_every_proxys_randomness() -> None:
    assert _draws(42) == _draws(42)
    assert _draws(42) != _draws(43)


def test_toxicity_draws_follow_the_seed_end_to_end(echo_server: EchoServer) -> None:
    """Which connections a 50% toxic hits is the same for the same seed."""

    def pattern(seed: int) -> list[bool]:
        with EmbeddedToxiproxy(seed=seed) as embedded:
            body = json.dumps({"name": "seeded", "upstream": echo_server.address, "listen": "127.0.0.1:0"})
            status, reply = exchange(embedded, post("/proxies", body.encode()))
            assert status == 201
            listen = json.loads(reply.split(b"\r\n\r\n", 1)[1])["listen"]
            # limit_data with bytes=0 closes a hit connection at once; a spared one echoes.
            toxic = {"type": "limit_data", "toxicity": 0.5, "attributes": {"bytes": 0}}
            assert exchange(embedded, post("/proxies/seeded/toxics", json.dumps(toxic).encode()))[0] == 200
            hits = []
            for _ in range(12):
                with connect(listen) as sock:
                    sock.sendall(b"ping")
                    hits.append(sock.recv(4) == b"")
            return hits

    first = pattern(7)
    assert first == pattern(7)
    assert any(first) and not all(first)
