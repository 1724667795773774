"""The HTTP side of the embedded Toxiproxy: the standard library's ``ThreadingHTTPServer`` parses
requests; each request thread hands the call to the API on the proxies' asyncio loop.

Every malformed request gets a 4xx reply: framing errors from ``http.server`` (400, 414, 431),
a bad or conflicting ``Content-Length`` or chunk size (400), a body over the limit (413), a body
that never arrives (408). The connection is closed after such a reply, never before it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._api import TEXT_TYPE, Response, ToxiproxyApi

log = logging.getLogger("abe_redis_testing.toxiproxy")

MAX_BODY_BYTES = 8 * 1024 * 1024
# How long a declared body may take to arrive, and how long an idle keep-alive connection lives.
BODY_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
# An API call waits on the proxies' loop at most this long (a proxy lock held by a slow change).
CALL_TIMEOUT = 60.0


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: ToxiproxyApi, loop: asyncio.AbstractEventLoop) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.api = api
        self.loop = loop
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def close_connections(self) -> None:
        """Wake every request thread blocked on an idle keep-alive connection."""
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Not HTTP/0.9: an unparsable request line must still get a status line in its reply.
    default_request_version = "HTTP/1.0"
    timeout = IDLE_TIMEOUT
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        with self.server.sockets_lock:
            self.server.open_sockets.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.headers.defects:
            # The email parser tolerates header lines without a colon; HTTP does not.
            self.send_error(400, "Malformed header line")
            return False
        return True

    def version_string(self) -> str:
        return "abe-redis-toxiproxy"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # Any method reaches the API, which answers 405 for a known route and 404 for an unknown one.
    def do_GET(self) -> None:
        self._call()

    do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _call(self) -> None:
        try:
            body = self._read_body()
        except RequestError as exc:
            self.close_connection = True
            self._reply(Response(exc.status, f"{exc.status} {exc.message}\n".encode(), TEXT_TYPE))
            return
        headers = {key.lower(): value for key, value in self.headers.items()}
        call = self.server.api.dispatch(self.command.upper(), self.path, headers, body)
        future = asyncio.run_coroutine_threadsafe(call, self.server.loop)
        try:
            response = future.result(CALL_TIMEOUT)
        except (concurrent.futures.CancelledError, TimeoutError, RuntimeError):
            # The server is stopping (its loop cancelled the call) or the call is stuck.
            future.cancel()
            self.close_connection = True
            response = Response(503, b"503 server unavailable\n", TEXT_TYPE)
        self._reply(response)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._with_deadline(self._read_chunked)
        values = self.headers.get_all("Content-Length") or []
        if len(set(values)) > 1:
            raise RequestError(400, "conflicting Content-Length headers")
        raw = values[0].strip() if values else "0"
        if not raw.isdigit():
            raise RequestError(400, f"invalid Content-Length {raw[:40]!r}")
        length = int(raw)
        if length > MAX_BODY_BYTES:
            raise RequestError(413, f"request body over {MAX_BODY_BYTES} bytes")
        return self._with_deadline(lambda: self._read_exactly(length)) if length else b""

    def _with_deadline(self, read: Any) -> bytes:
        self.connection.settimeout(BODY_TIMEOUT)
        try:
            data: bytes = read()
        except TimeoutError:
            raise RequestError(408, f"request body not received within {BODY_TIMEOUT:g}s") from None
        finally:
            self.connection.settimeout(IDLE_TIMEOUT)
        return data

    def _read_exactly(self, length: int) -> bytes:
        data = self.rfile.read(length)
        if len(data) != length:
            raise RequestError(400, f"request body ended after {len(data)} of {length} bytes")
        return data

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            size_text = line.split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise RequestError(400, "invalid chunk size") from None
            if size < 0 or len(body) + size > MAX_BODY_BYTES:
                raise RequestError(413 if size > 0 else 400, "invalid or oversized chunk")
            if size == 0:
                # Trailers end with an empty line.
                for _ in range(100):
                    if self.rfile.readline(1024) in (b"\r\n", b"\n", b""):
                        return bytes(body)
                raise RequestError(400, "too many trailers")
            body += self._read_exactly(size)
            if self.rfile.read(2) != b"\r\n":
                raise RequestError(400, "chunk not terminated by CRLF")

    def _reply(self, response: Response) -> None:
        self.send_response(response.status)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        if response.status != 204:
            self.send_header("Content-Length", str(len(response.body)))
        for key, value in response.headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if response.status != 204 and self.command != "HEAD":
            self.wfile.write(response.body)


class HttpServer:
    """Serves :class:`ToxiproxyApi` from request threads; the API itself runs on the caller's loop."""

    def __init__(self, api: ToxiproxyApi) -> None:
        self.api = api
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._httpd = _Server((host, port), self.api, asyncio.get_running_loop())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="abe-redis-toxiproxy-http",
            daemon=True,
        )
        self._thread.start()
        bound = self._httpd.server_address
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        # shutdown() waits for serve_forever to return; off the loop, which request threads
        # may be waiting on.
        await asyncio.get_running_loop().run_in_executor(None, httpd.shutdown)
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
