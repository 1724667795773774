"""Toxiproxy 2.x's HTTP API: routes and handlers, independent of the HTTP server (see ``_http``).

Routes, status codes and bodies follow Toxiproxy's ``api.go``: JSON success bodies, errors as
``{"error": ..., "status": ...}`` (sent, like Go's ``http.Error``, as ``text/plain`` with a
trailing newline), ``404 page not found`` for unknown routes and an empty 405 for a known route
with the wrong method.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from ._proxy import ApiError, ProxyCollection, bad_request, bool_field, string_field
from ._toxics import cannot_unmarshal

log = logging.getLogger("abe_redis_testing.toxiproxy")

# The Toxiproxy release whose API this server implements.
API_VERSION = "2.12.0"

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(payload).encode(), JSON_TYPE)


def error_response(error: ApiError) -> Response:
    return Response(error.status, json.dumps(error.to_json()).encode() + b"\n", TEXT_TYPE)


Handler = Callable[["ToxiproxyApi", dict[str, str], bytes], Awaitable[Response]]


def _refuse_constant(name: str) -> Any:
    # Go's JSON has no NaN or Infinity; accepting them would let NaN reach a toxicity.
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _decode(body: bytes) -> Any:
    if not body.strip():
        raise bad_request("EOF")
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(str(exc)) from None
    except RecursionError:
        raise bad_request("JSON nested too deeply") from None


class ToxiproxyApi:
    """Request handlers bound to one :class:`ProxyCollection`."""

    def __init__(self, collection: ProxyCollection) -> None:
        self.collection = collection
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (re.compile(r"/reset"), {"POST": ToxiproxyApi.reset}),
            (re.compile(r"/proxies"), {"GET": ToxiproxyApi.proxy_index, "POST": ToxiproxyApi.proxy_create}),
            (re.compile(r"/populate"), {"POST": ToxiproxyApi.populate}),
            (
                re.compile(r"/proxies/(?P<proxy>[^/]+)"),
                {
                    "GET": ToxiproxyApi.proxy_show,
                    "POST": ToxiproxyApi.proxy_update,
                    "PATCH": ToxiproxyApi.proxy_update,
                    "DELETE": ToxiproxyApi.proxy_delete,
                },
            ),
            (
                re.compile(r"/proxies/(?P<proxy>[^/]+)/toxics"),
                {"GET": ToxiproxyApi.toxic_index, "POST": ToxiproxyApi.toxic_create},
            ),
            (
                re.compile(r"/proxies/(?P<proxy>[^/]+)/toxics/(?P<toxic>[^/]+)"),
                {
                    "GET": ToxiproxyApi.toxic_show,
                    "POST": ToxiproxyApi.toxic_update,
                    "PATCH": ToxiproxyApi.toxic_update,
                    "DELETE": ToxiproxyApi.toxic_delete,
                },
            ),
            (re.compile(r"/version"), {"GET": ToxiproxyApi.version}),
        ]

    async def dispatch(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        if headers.get("user-agent", "").startswith("Mozilla/"):
            # Toxiproxy refuses browsers so a web page cannot drive it (CSRF protection).
            return Response(403, b"User agent not allowed\n", TEXT_TYPE)
        path = urlsplit(target).path
        for pattern, methods in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = methods.get(method)
            if handler is None:
                return Response(405)
            params = {key: unquote(value) for key, value in match.groupdict().items()}
            try:
                return await handler(self, params, body)
            except ApiError as exc:
                return error_response(exc)
            except Exception as exc:
                log.exception("toxiproxy API handler failed")
                return error_response(ApiError(str(exc), 500))
        return Response(404, b"404 page not found\n", TEXT_TYPE)

    # --- handlers -----------------------------------------------------------------------------

    async def reset(self, params: dict[str, str], body: bytes) -> Response:
        await self.collection.reset()
        return Response(204)

    async def proxy_index(self, params: dict[str, str], body: bytes) -> Response:
        return json_response({name: p.to_json() for name, p in self.collection.proxies.items()})

    async def proxy_create(self, params: dict[str, str], body: bytes) -> Response:
        proxy = await self.collection.add(_decode(body))
        return json_response(proxy.to_json(), 201)

    async def populate(self, params: dict[str, str], body: bytes) -> Response:
        try:
            proxies = await self.collection.populate(_decode(body))
        except ApiError as exc:
            # Populate reports errors in its own envelope, as JSON, with "proxies": null.
            return json_response({**exc.to_json(), "proxies": None}, exc.status)
        # Go marshals an empty result slice as null.
        return json_response({"proxies": [p.to_json() for p in proxies] or None}, 201)

    async def proxy_show(self, params: dict[str, str], body: bytes) -> Response:
        return json_response(self.collection.get(params["proxy"]).to_json())

    async def proxy_update(self, params: dict[str, str], body: bytes) -> Response:
        proxy = self.collection.get(params["proxy"])
        data = _decode(body)
        if not isinstance(data, dict):
            raise bad_request(cannot_unmarshal(data, "Go value of type toxiproxy.Proxy"))
        async with proxy.lock:
            await proxy.update(
                listen=string_field(data, "listen", proxy.listen),
                upstream=string_field(data, "upstream", proxy.upstream),
                enabled=bool_field(data, "enabled", proxy.enabled),
            )
        return json_response(proxy.to_json())

    async def proxy_delete(self, params: dict[str, str], body: bytes) -> Response:
        await self.collection.remove(params["proxy"])
        return Response(204)

    async def toxic_index(self, params: dict[str, str], body: bytes) -> Response:
        return json_response(self.collection.get(params["proxy"]).toxics_json())

    async def toxic_create(self, params: dict[str, str], body: bytes) -> Response:
        proxy = self.collection.get(params["proxy"])
        data = _decode(body)
        async with proxy.lock:
            spec = await proxy.add_toxic(data)
        return json_response(spec.to_json())

    async def toxic_show(self, params: dict[str, str], body: bytes) -> Response:
        proxy = self.collection.get(params["proxy"])
        return json_response(proxy.find_toxic(params["toxic"]).to_json())

    async def toxic_update(self, params: dict[str, str], body: bytes) -> Response:
        proxy = self.collection.get(params["proxy"])
        proxy.find_toxic(params["toxic"])
        data = _decode(body)
        async with proxy.lock:
            spec = await proxy.update_toxic(params["toxic"], data)
        return json_response(spec.to_json())

    async def toxic_delete(self, params: dict[str, str], body: bytes) -> Response:
        proxy = self.collection.get(params["proxy"])
        async with proxy.lock:
            await proxy.remove_toxic(params["toxic"])
        return Response(204)

    async def version(self, params: dict[str, str], body: bytes) -> Response:
        payload = json.dumps({"version": API_VERSION}) + "\n"
        return Response(200, payload.encode(), "application/json;charset=utf-8")
