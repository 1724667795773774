"""Network-fault scenarios that read like the failure they cause, over the Toxiproxy HTTP API.

Works against the embedded server (:mod:`abe_redis_testing.toxiproxy`) or a real Toxiproxy 2.x::

    client = ToxiproxyClient("http://127.0.0.1:8474")
    redis_proxy = proxy_to(client, "127.0.0.1:6390")
    url = f"redis://{redis_proxy.listen_host}:{redis_proxy.listen_port}/0"
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
import ipaddress
import itertools
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

__all__ = [
    "Proxy",
    "ProxyInfo",
    "ProxyScope",
    "Stream",
    "ToxicInfo",
    "ToxiproxyClient",
    "ToxiproxyEndpoint",
    "ToxiproxyError",
    "proxy_to",
]

Stream = Literal["upstream", "downstream", "both"]

_names = itertools.count(1)


class ToxiproxyError(Exception):
    """The Toxiproxy API answered with an error status (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str, *, method: str = "", path: str = "") -> None:
        where = f"{method} {path}: " if method else ""
        super().__init__(f"{where}HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ToxicInfo:
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: Mapping[str, int]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ToxicInfo:
        return cls(
            name=str(data["name"]),
            type=str(data["type"]),
            stream=str(data.get("stream", "downstream")),
            toxicity=float(data.get("toxicity", 1.0)),
            attributes=dict(data.get("attributes") or {}),
        )


@dataclass(frozen=True)
class ProxyInfo:
    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[ToxicInfo, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProxyInfo:
        return cls(
            name=str(data["name"]),
            listen=str(data["listen"]),
            upstream=str(data["upstream"]),
            enabled=bool(data["enabled"]),
            toxics=tuple(ToxicInfo.from_json(t) for t in data.get("toxics") or ()),
        )


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ToxiproxyClient:
    """A small typed client for the Toxiproxy 2.x HTTP API (stdlib only, thread-safe)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if not parsed.hostname:
            raise ValueError(f"not a Toxiproxy URL: {url!r}")
        self.host = parsed.hostname
        self.port = parsed.port or 8474
        self.url = f"{parsed.scheme}://{parsed.netloc.rpartition('@')[2]}".rstrip("/")
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ToxiproxyClient({self.url!r})"

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = str(json.loads(raw)["error"])
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or exc.reason
            raise ToxiproxyError(exc.code, message, method=method, path=path) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ToxiproxyError(0, f"cannot reach {self.url}: {reason}", method=method, path=path) from None
        return json.loads(payload) if payload.strip() else None

    # --- server -------------------------------------------------------------------------------

    def version(self) -> str:
        data = self._request("GET", "/version")
        return str(data["version"]) if isinstance(data, dict) else str(data)

    def is_available(self) -> bool:
        try:
            self.version()
        except ToxiproxyError:
            return False
        return True

    def reset(self) -> None:
        """Enable every proxy and remove every toxic (on the whole server)."""
        self._request("POST", "/reset")

    # --- proxies ------------------------------------------------------------------------------

    def proxies(self) -> dict[str, ProxyInfo]:
        data = self._request("GET", "/proxies")
        return {name: ProxyInfo.from_json(item) for name, item in data.items()}

    def get_proxy(self, name: str) -> ProxyInfo:
        return ProxyInfo.from_json(self._request("GET", f"/proxies/{_quote(name)}"))

    def create_proxy(
        self, name: str, upstream: str, *, listen: str = "127.0.0.1:0", enabled: bool = True
    ) -> ProxyInfo:
        body = {"name": name, "upstream": upstream, "listen": listen, "enabled": enabled}
        return ProxyInfo.from_json(self._request("POST", "/proxies", body))

    def update_proxy(
        self,
        name: str,
        *,
        enabled: bool | None = None,
        listen: str | None = None,
        upstream: str | None = None,
    ) -> ProxyInfo:
        body = {
            key: value
            for key, value in (("enabled", enabled), ("listen", listen), ("upstream", upstream))
            if value is not None
        }
        return ProxyInfo.from_json(self._request("PATCH", f"/proxies/{_quote(name)}", body))

    def delete_proxy(self, name: str) -> None:
        self._request("DELETE", f"/proxies/{_quote(name)}")

    def populate(self, proxies: list[Mapping[str, Any]]) -> list[ProxyInfo]:
        data = self._request("POST", "/populate", list(proxies))
        return [ProxyInfo.from_json(item) for item in data.get("proxies") or ()]

    # --- toxics -------------------------------------------------------------------------------

    def toxics(self, proxy: str) -> list[ToxicInfo]:
        return [ToxicInfo.from_json(t) for t in self._request("GET", f"/proxies/{_quote(proxy)}/toxics")]

    def get_toxic(self, proxy: str, toxic: str) -> ToxicInfo:
        return ToxicInfo.from_json(self._request("GET", f"/proxies/{_quote(proxy)}/toxics/{_quote(toxic)}"))

    def add_toxic(
        self,
        proxy: str,
        type: str,
        attributes: Mapping[str, int] | None = None,
        *,
        name: str | None = None,
        stream: Literal["upstream", "downstream"] = "downstream",
        toxicity: float = 1.0,
    ) -> ToxicInfo:
        body: dict[str, Any] = {
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": dict(attributes or {}),
        }
        if name is not None:
            body["name"] = name
        return ToxicInfo.from_json(self._request("POST", f"/proxies/{_quote(proxy)}/toxics", body))

    def update_toxic(
        self,
        proxy: str,
        toxic: str,
        attributes: Mapping[str, int] | None = None,
        *,
        toxicity: float | None = None,
    ) -> ToxicInfo:
        body: dict[str, Any] = {}
        if attributes is not None:
            body["attributes"] = dict(attributes)
        if toxicity is not None:
            body["toxicity"] = toxicity
        path = f"/proxies/{_quote(proxy)}/toxics/{_quote(toxic)}"
        return ToxicInfo.from_json(self._request("PATCH", path, body))

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        self._request("DELETE", f"/proxies/{_quote(proxy)}/toxics/{_quote(toxic)}")


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


@dataclass(eq=False)
class Proxy:
    """A proxy in front of one upstream, with fault scenarios as context managers.

    Connect clients to ``listen_host:listen_port`` instead of the upstream.
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
    if _is_loopback(client.host):
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
) -> Proxy:
    """Create a proxy in front of ``upstream`` (``"host:port"`` or ``(host, port)``), listening
    on a free port; connect to the returned handle's ``listen_host:listen_port``."""
    if isinstance(client, str):
        client = ToxiproxyClient(client)
    upstream_text = _upstream_text(upstream)
    requested, connect_host = _listen_for(client) if listen is None else (listen, "")
    if name is None:
        name = f"abe_redis_{os.getpid()}_{next(_names)}"
    info = client.create_proxy(name, upstream_text, listen=requested)
    bound_host, bound_port = _split(info.listen)
    if listen is not None:
        connect_host = client.host if bound_host in ("", "0.0.0.0", "::") else bound_host
    return Proxy(client, info.name, info.upstream, connect_host, bound_port)


@dataclass(frozen=True)
class ToxiproxyEndpoint:
    """The Toxiproxy server a test session uses: a real one found at the configured URL, or the
    embedded one (``embedded=True``). ``note`` says why the choice was made."""

    url: str
    client: ToxiproxyClient
    embedded: bool
    version: str
    note: str = ""

    def scope(self) -> ProxyScope:
        return ProxyScope(self.client)


class ProxyScope:
    """Creates proxies and deletes exactly those again on :meth:`close` (never touching proxies
    of other tests or processes that share the server)."""

    def __init__(self, client: ToxiproxyClient, *, prefix: str = "abe_redis") -> None:
        self.client = client
        self.prefix = prefix
        self._created: list[Proxy] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProxyScope({self.client.url!r}, proxies={len(self._created)})"

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def proxies(self) -> list[Proxy]:
        with self._lock:
            return list(self._created)

    def proxy(self, upstream: str | tuple[str, int], *, name: str | None = None) -> Proxy:
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
