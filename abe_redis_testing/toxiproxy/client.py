"""A typed client for the Toxiproxy 2.x HTTP API (stdlib only, thread-safe).

It drives the embedded server (:class:`~abe_redis_testing.toxiproxy.EmbeddedToxiproxy`) and a real
Toxiproxy alike. Fault helpers that read like the failure they cause are in
:mod:`abe_redis_testing.faults`.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from abe_redis_testing.faults import ProxyScope

__all__ = ["ProxyInfo", "ToxicInfo", "ToxiproxyClient", "ToxiproxyEndpoint", "ToxiproxyError"]


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


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
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


@dataclass(frozen=True)
class ToxiproxyEndpoint:
    """The Toxiproxy server a test session uses: a real one found at the configured URL, or the
    embedded one (``embedded=True``). ``note`` says why the choice was made."""

    url: str
    client: ToxiproxyClient
    embedded: bool
    version: str
    note: str = ""
    seed: int | None = None
    """The embedded server's seed for its toxics' randomness (None: random, or a real server)."""

    def scope(self) -> ProxyScope:
        from abe_redis_testing.faults import ProxyScope

        return ProxyScope(self.client)
