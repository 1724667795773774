"""Network faults that read like the failure they cause: latency(), down(), black_hole(),
reset_peer(), bandwidth(), slicer(), limit_data(), slow_close(), on a :class:`FaultProxy`.

Works against the embedded server (:mod:`abe_redis_testing.toxiproxy`) or a real Toxiproxy 2.x::

    client = ToxiproxyClient("http://127.0.0.1:8474")
    redis_proxy = proxy_to(client, "127.0.0.1:6390")
    url = redis_proxy.url_for("redis://127.0.0.1:6390/0")   # the same URL, through the proxy
    with redis_proxy.latency(200, jitter=20):
        ...                      # every reply is 180-220 ms late
    with redis_proxy.down():
        ...                      # connections refused, open ones closed
    with redis_proxy.black_hole():
        ...                      # bytes vanish; the connection stays open

Every context manager removes its own fault on exit, even when the block fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from abe_redis_testing.toxiproxy.client import (
    ProxyInfo,
    ToxicInfo,
    ToxiproxyClient,
    ToxiproxyError,
    is_loopback,
    split_address,
)

__all__ = ["FaultProxy", "ProxyScope", "Stream", "proxy_to"]

Stream = Literal["upstream", "downstream", "both"]

_names = itertools.count(1)


@dataclass(eq=False)
class FaultProxy:
    """A Toxiproxy proxy in front of one upstream, with faults as context managers.

    Connect clients to ``listen_host:listen_port`` (or :meth:`url_for`) instead of the upstream.
    """

    client: ToxiproxyClient
    name: str
    upstream: str
    listen_host: str
    listen_port: int

    @property
    def address(self) -> tuple[str, int]:
        return self.listen_host, self.listen_port

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    def url_for(self, url: str) -> str:
        """``url`` (e.g. the upstream's ``redis://`` URL) pointing at this proxy instead, keeping
        scheme, credentials, path and query."""
        parts = urllib.parse.urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        netloc = (userinfo + "@" if userinfo else "") + f"{host}:{self.listen_port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def info(self) -> ProxyInfo:
        return self.client.get_proxy(self.name)

    @property
    def enabled(self) -> bool:
        return self.info().enabled

    def enable(self) -> None:
        self.client.update_proxy(self.name, enabled=True)

    def disable(self) -> None:
        """Refuse new connections and close the open ones."""
        self.client.update_proxy(self.name, enabled=False)

    def toxics(self) -> list[ToxicInfo]:
        return self.client.toxics(self.name)

    def clear(self) -> None:
        """Remove every toxic of this proxy and enable it."""
        for toxic in self.toxics():
            with contextlib.suppress(ToxiproxyError):
                self.client.remove_toxic(self.name, toxic.name)
        self.enable()

    def delete(self) -> None:
        with contextlib.suppress(ToxiproxyError):
            self.client.delete_proxy(self.name)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()

    # --- scenarios ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def toxic(
        self,
        type: str,
        attributes: Mapping[str, int] | None = None,
        *,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
    ) -> Iterator[list[ToxicInfo]]:
        """Any toxic for the duration of the block (``stream="both"`` adds one per direction)."""
        streams: tuple[Literal["upstream", "downstream"], ...] = (
            ("upstream", "downstream") if stream == "both" else (stream,)
        )
        added: list[ToxicInfo] = []
        try:
            for direction in streams:
                # Unique names let scenarios nest and let two tests share one server.
                name = f"{type}_{direction}_{next(_names)}"
                added.append(
                    self.client.add_toxic(
                        self.name, type, attributes, name=name, stream=direction, toxicity=toxicity
                    )
                )
            yield added
        finally:
            for toxic in reversed(added):
                with contextlib.suppress(ToxiproxyError):
                    self.client.remove_toxic(self.name, toxic.name)

    def latency(
        self, ms: int, jitter: int = 0, *, stream: Stream = "downstream", toxicity: float = 1.0
    ) -> contextlib.AbstractContextManager[list[ToxicInfo]]:
        """Delay data by ``ms`` +/- ``jitter`` milliseconds."""
        return self.toxic("latency", {"latency": ms, "jitter": jitter}, stream=stream, toxicity=toxicity)

    def bandwidth(
        self, kb_per_s: int, *, stream: Stream = "downstream", toxicity: float = 1.0
    ) -> contextlib.AbstractContextManager[list[ToxicInfo]]:
        """Limit throughput to ``kb_per_s`` kilobytes (1000 bytes) per second."""
        return self.toxic("bandwidth", {"rate": kb_per_s}, stream=stream, toxicity=toxicity)

    def black_hole(
        self, timeout_ms: int = 0, *, stream: Stream = "downstream", toxicity: float = 1.0
    ) -> contextlib.AbstractContextManager[list[ToxicInfo]]:
        """Swallow all data; close the connection after ``timeout_ms`` (0: keep it open).

        As with Toxiproxy's ``timeout`` toxic, connections that lived through the black hole
        are closed when it is removed: the swallowed bytes cannot be recovered.
        """
        return self.toxic("timeout", {"timeout": timeout_ms}, stream=stream, toxicity=toxicity)

    def reset_peer(
        self, timeout_ms: int = 0, *, stream: Stream = "downstream", toxicity: float = 1.0
    ) -> contextlib.AbstractContextManager[list[ToxicInfo]]:
        """Reset connections (TCP RST, "connection reset by peer") ``timeout_ms`` after the next
        data in ``stream`` arrives; that data is dropped."""
        return self.toxic("reset_peer", {"timeout": timeout_ms}, stream=stream, toxicity=toxicity)

    def slow_close(
        self, delay_ms: int, *, stream: Stream = "downstream", toxicity: float = 1.0
    ) -> contextlib.AbstractContextManager[list[ToxicInfo]]:
        """Delay the close of connections by ``delay_ms``."""
        return self.toxic("slow_close", {"delay": delay_ms}, stream=stream, toxicity=toxicity)

    def slicer(
        self,
        average_size: int,
        size_variation: int = 0,
        delay_us: int = 0,
        *,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
    ) -> contextlib.AbstractContextManager[list[ToxicInfo]]:
        """Cut data into pieces of ``average_size`` +/- ``size_variation`` bytes, ``delay_us``
        microseconds apart (exercises partial reads in protocol parsers)."""
        attributes = {"average_size": average_size, "size_variation": size_variation, "delay": delay_us}
        return self.toxic("slicer", attributes, stream=stream, toxicity=toxicity)

    def limit_data(
        self, bytes: int, *, stream: Stream = "downstream", toxicity: float = 1.0
    ) -> contextlib.AbstractContextManager[list[ToxicInfo]]:
        """Close each connection once ``bytes`` bytes have passed in ``stream``."""
        return self.toxic("limit_data", {"bytes": bytes}, stream=stream, toxicity=toxicity)

    @contextlib.contextmanager
    def down(self, seconds: float | None = None) -> Iterator[None]:
        """Take the proxy down: new connections are refused and open ones closed.

        With ``seconds``, the proxy comes back by itself after that long while the block keeps
        running (an outage of bounded length, e.g. to exercise reconnect back-off); it is up
        again on exit either way.
        """
        timer: threading.Timer | None = None
        self.disable()
        try:
            if seconds is not None:
                timer = threading.Timer(seconds, self._enable_quietly)
                timer.daemon = True
                timer.start()
            yield
        finally:
            if timer is not None:
                timer.cancel()
                timer.join()
            self.enable()

    def _enable_quietly(self) -> None:
        # Runs on the timer thread: a failure here must not kill the thread noisily; the
        # context exit enables the proxy again and reports errors there.
        with contextlib.suppress(ToxiproxyError):
            self.enable()


def _listen_for(client: ToxiproxyClient) -> tuple[str, str]:
    """The listen address to request and the host clients should connect to."""
    if is_loopback(client.host):
        return "127.0.0.1:0", "127.0.0.1"
    # A remote Toxiproxy must listen where the test process can reach it.
    return "0.0.0.0:0", client.host


def _upstream_text(upstream: str | tuple[str, int]) -> str:
    if isinstance(upstream, tuple):
        host, port = upstream
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return upstream


def proxy_to(
    client: ToxiproxyClient | str,
    upstream: str | tuple[str, int],
    *,
    name: str | None = None,
    listen: str | None = None,
) -> FaultProxy:
    """Create a proxy in front of ``upstream`` (``"host:port"`` or ``(host, port)``), listening
    on a free port; connect to the returned handle's ``listen_host:listen_port``."""
    if isinstance(client, str):
        client = ToxiproxyClient(client)
    upstream_text = _upstream_text(upstream)
    requested, connect_host = _listen_for(client) if listen is None else (listen, "")
    if name is None:
        name = f"abe_redis_{os.getpid()}_{next(_names)}"
    info = client.create_proxy(name, upstream_text, listen=requested)
    bound_host, bound_port = split_address(info.listen)
    if listen is not None:
        connect_host = client.host if bound_host in ("", "0.0.0.0", "::") else bound_host
    return FaultProxy(client, info.name, info.upstream, connect_host, bound_port)


class ProxyScope:
    """Creates proxies and deletes exactly those again on :meth:`close` (never touching proxies
    of other tests or processes that share the server)."""

    def __init__(self, client: ToxiproxyClient, *, prefix: str = "abe_redis") -> None:
        self.client = client
        self.prefix = prefix
        self._created: list[FaultProxy] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProxyScope({self.client.url!r}, proxies={len(self._created)})"

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def proxies(self) -> list[FaultProxy]:
        with self._lock:
            return list(self._created)

    def proxy(self, upstream: str | tuple[str, int], *, name: str | None = None) -> FaultProxy:
        """A new proxy in front of ``upstream`` on a free port, deleted when the scope closes."""
        if name is None:
            name = f"{self.prefix}_{os.getpid()}_{next(_names)}"
        proxy = proxy_to(self.client, upstream, name=name)
        with self._lock:
            self._created.append(proxy)
        return proxy

    def close(self) -> None:
        with self._lock:
            created, self._created = self._created, []
        for proxy in reversed(created):
            proxy.delete()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
