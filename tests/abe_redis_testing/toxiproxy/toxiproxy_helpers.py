"""Test helpers shared by the toxiproxy tests: an echo upstream, raw HTTP, bounded socket reads.

(A plain module rather than a package: see conftest.py for why this directory has no __init__.)
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from dataclasses import dataclass
from typing import Any

from abe_redis_testing.toxiproxy import ToxiproxyClient


class EchoServer:
    """A threaded TCP echo server on a free port: the upstream behind the proxies under test.
    It closes a connection once the peer has closed its sending side."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._sock.getsockname()[:2]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._sock.close()
        with self._lock:
            for conn in self._conns:
                conn.close()


@dataclass
class ApiReply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class RawApi:
    """Plain http.client requests, to check status codes and bodies byte for byte."""

    def __init__(self, client: ToxiproxyClient) -> None:
        self.host = client.host
        self.port = client.port

    def __call__(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> ApiReply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return ApiReply(
                response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            )
        finally:
            conn.close()


def connect(address: tuple[str, int] | str, timeout: float = 5.0) -> socket.socket:
    """A client socket to the proxy; every blocking call on it is bounded by ``timeout``."""
    if isinstance(address, str):
        host, _, port = address.rpartition(":")
        address = (host, int(port))
    return socket.create_connection(address, timeout=timeout)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def recv_until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def recv_up_to(sock: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes: fewer only if the connection closes first."""
    data = bytearray()
    while len(data) < size and (chunk := sock.recv(size - len(data))):
        data += chunk
    return bytes(data)
