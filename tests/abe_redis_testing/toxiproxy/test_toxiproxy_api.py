"""HTTP API conformance with Toxiproxy 2.x, checked with raw HTTP requests.

Runs against the session's server: the embedded one by default, a real Toxiproxy when
``TOXIPROXY_URL`` points at one, so the same assertions pin both down.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
from collections.abc import Iterator

import pytest
from toxiproxy_helpers import EchoServer, RawApi, connect, recv_exactly

_ids = itertools.count()


@pytest.fixture
def names(api: RawApi) -> Iterator[list[str]]:
    """Unique proxy names for this test; whatever exists of them afterwards is deleted."""
    created: list[str] = []
    yield created
    for name in created:
        api("DELETE", f"/proxies/{name}")


def new_name(names: list[str]) -> str:
    name = f"api_test_{os.getpid()}_{next(_ids)}"
    names.append(name)
    return name


def create(api: RawApi, names: list[str], upstream: str, **extra: object) -> dict[str, object]:
    name = new_name(names)
    reply = api("POST", "/proxies", {"name": name, "upstream": upstream, "listen": "127.0.0.1:0", **extra})
    assert reply.status == 201, reply.body
    body: dict[str, object] = reply.json
    return body


def port_of(listen: object) -> int:
    assert isinstance(listen, str)
    return int(listen.rpartition(":")[2])


def assert_error(reply_status: int, body: object, status: int, message: str) -> None:
    assert reply_status == status
    assert body == {"error": message, "status": status}


def test_version_answers_json(api: RawApi) -> None:
    reply = api("GET", "/version")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json["version"].startswith("2.")


def test_create_proxy_returns_201_and_echoes_the_bound_port(
    api: RawApi, names: list[str], echo_server: EchoServer
) -> None:
    body = create(api, names, echo_server.address)
    assert set(body) == {"name", "listen", "upstream", "enabled", "toxics"}
    assert body["upstream"] == echo_server.address
    assert body["enabled"] is True
    assert body["toxics"] == []
    port = port_of(body["listen"])
    assert port > 0
    with connect(("127.0.0.1", port)) as sock:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"


def test_show_and_index_list_the_proxy(api: RawApi, names: list[str], echo_server: EchoServer) -> None:
    body = create(api, names, echo_server.address)
    name = body["name"]
    shown = api("GET", f"/proxies/{name}")
    assert shown.status == 200
    assert shown.json == body
    index = api("GET", "/proxies")
    assert index.status == 200
    assert index.json[name] == body


def test_duplicate_proxy_is_409(api: RawApi, names: list[str], echo_server: EchoServer) -> None:
    body = create(api, names, echo_server.address)
    reply = api("POST", "/proxies", {"name": body["name"], "upstream": echo_server.address})
    assert_error(reply.status, reply.json, 409, "proxy already exists")


def test_missing_fields_and_bad_bodies_are_400(api: RawApi, echo_server: EchoServer) -> None:
    reply = api("POST", "/proxies", {"upstream": echo_server.address})
    assert_error(reply.status, reply.json, 400, "missing required field: name")
    reply = api("POST", "/proxies", {"name": "no_upstream"})
    assert_error(reply.status, reply.json, 400, "missing required field: upstream")
    reply = api("POST", "/proxies", raw=b"{not json")
    assert reply.status == 400
    assert reply.json["status"] == 400
    assert reply.json["error"].startswith("bad request body: ")
    reply = api("POST", "/proxies", {"name": "typed", "upstream": echo_server.address, "enabled": "yes"})
    assert reply.status == 400
    assert reply.json["error"].startswith("bad request body: ")


def test_unknown_proxy_and_toxic_are_404(api: RawApi, names: list[str], echo_server: EchoServer) -> None:
    for method, path in [
        ("GET", "/proxies/does_not_exist"),
        ("DELETE", "/proxies/does_not_exist"),
        ("PATCH", "/proxies/does_not_exist"),
        ("GET", "/proxies/does_not_exist/toxics"),
        ("POST", "/proxies/does_not_exist/toxics"),
    ]:
        reply = api(method, path, {} if method in ("PATCH", "POST") else None)
        assert_error(reply.status, reply.json, 404, "proxy not found")
    name = create(api, names, echo_server.address)["name"]
    for method in ("GET", "DELETE", "PATCH"):
        reply = api(method, f"/proxies/{name}/toxics/nope", {} if method == "PATCH" else None)
        assert_error(reply.status, reply.json, 404, "toxic not found")


def test_unknown_route_and_wrong_method(api: RawApi) -> None:
    reply = api("GET", "/nothing/here")
    assert reply.status == 404
    assert reply.body == b"404 page not found\n"
    reply = api("DELETE", "/version")
    assert reply.status == 405


def test_toxic_create_applies_toxiproxy_defaults(
    api: RawApi, names: list[str], echo_server: EchoServer
) -> None:
    name = create(api, names, echo_server.address)["name"]
    reply = api("POST", f"/proxies/{name}/toxics", {"type": "latency", "attributes": {"latency": 50}})
    assert reply.status == 200
    assert reply.json == {
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"latency": 50, "jitter": 0},
    }
    listed = api("GET", f"/proxies/{name}/toxics")
    assert listed.status == 200
    assert listed.json == [reply.json]
    assert api("GET", f"/proxies/{name}").json["toxics"] == [reply.json]
    shown = api("GET", f"/proxies/{name}/toxics/latency_downstream")
    assert shown.json == reply.json


def test_toxic_errors(api: RawApi, names: list[str], echo_server: EchoServer) -> None:
    name = create(api, names, echo_server.address)["name"]
    path = f"/proxies/{name}/toxics"
    assert api("POST", path, {"type": "latency", "name": "lag"}).status == 200
    reply = api("POST", path, {"type": "latency", "name": "lag"})
    assert_error(reply.status, reply.json, 409, "toxic already exists")
    reply = api("POST", path, {"type": "no_such_toxic"})
    assert_error(reply.status, reply.json, 400, "invalid toxic type")
    reply = api("POST", path, {"type": "latency", "stream": "sideways"})
    assert_error(reply.status, reply.json, 400, "stream was invalid, can be either upstream or downstream")
    reply = api("POST", path, {"type": "latency", "name": "bad", "attributes": {"latency": "slow"}})
    assert reply.status == 400
    assert reply.json["error"].startswith("bad request body: ")
    reply = api("POST", path, raw=b"")
    assert reply.status == 400
    assert reply.json["error"].startswith("bad request body")


def test_toxic_update_with_patch_and_post(api: RawApi, names: list[str], echo_server: EchoServer) -> None:
    name = create(api, names, echo_server.address)["name"]
    api(
        "POST",
        f"/proxies/{name}/toxics",
        {"type": "latency", "stream": "upstream", "attributes": {"latency": 5}},
    )
    path = f"/proxies/{name}/toxics/latency_upstream"
    reply = api("PATCH", path, {"attributes": {"jitter": 3}})
    assert reply.status == 200
    assert reply.json["attributes"] == {"latency": 5, "jitter": 3}
    assert reply.json["stream"] == "upstream"
    reply = api("POST", path, {"attributes": {"latency": 7}, "toxicity": 0.5})
    assert reply.status == 200
    assert reply.json["attributes"] == {"latency": 7, "jitter": 3}
    assert reply.json["toxicity"] == 0.5


def test_delete_toxic_and_proxy(api: RawApi, names: list[str], echo_server: EchoServer) -> None:
    body = create(api, names, echo_server.address)
    name = body["name"]
    api("POST", f"/proxies/{name}/toxics", {"type": "slow_close", "attributes": {"delay": 10}})
    reply = api("DELETE", f"/proxies/{name}/toxics/slow_close_downstream")
    assert reply.status == 204
    assert reply.body == b""
    assert api("GET", f"/proxies/{name}/toxics").json == []
    reply = api("DELETE", f"/proxies/{name}")
    assert reply.status == 204
    assert api("GET", f"/proxies/{name}").status == 404
    with pytest.raises(ConnectionRefusedError):
        connect(("127.0.0.1", port_of(body["listen"])))


def test_disable_closes_connections_and_refuses_new_ones(
    api: RawApi, names: list[str], echo_server: EchoServer
) -> None:
    body = create(api, names, echo_server.address)
    name, port = body["name"], port_of(body["listen"])
    with connect(("127.0.0.1", port)) as sock:
        sock.sendall(b"a")
        assert recv_exactly(sock, 1) == b"a"
        reply = api("PATCH", f"/proxies/{name}", {"enabled": False})
        assert reply.status == 200
        assert reply.json["enabled"] is False
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""
    with pytest.raises(ConnectionRefusedError):
        connect(("127.0.0.1", port))
    # Toxiproxy 2.x still accepts POST (deprecated) for updates.
    reply = api("POST", f"/proxies/{name}", {"enabled": True})
    assert reply.status == 200
    assert reply.json["enabled"] is True
    assert port_of(reply.json["listen"]) == port
    with connect(("127.0.0.1", port)) as sock:
        sock.sendall(b"b")
        assert recv_exactly(sock, 1) == b"b"


def test_create_disabled_proxy(api: RawApi, names: list[str], echo_server: EchoServer) -> None:
    body = create(api, names, echo_server.address, enabled=False)
    assert body["enabled"] is False


def test_reset_enables_proxies_and_removes_toxics(
    api: RawApi, names: list[str], echo_server: EchoServer, toxiproxy_server: object
) -> None:
    if not getattr(toxiproxy_server, "embedded", True):
        pytest.skip("POST /reset would touch every proxy of a shared real server")
    body = create(api, names, echo_server.address)
    name = body["name"]
    api("POST", f"/proxies/{name}/toxics", {"type": "latency", "attributes": {"latency": 1000}})
    api("PATCH", f"/proxies/{name}", {"enabled": False})
    reply = api("POST", "/reset")
    assert reply.status == 204
    shown = api("GET", f"/proxies/{name}").json
    assert shown["enabled"] is True
    assert shown["toxics"] == []
    with connect(("127.0.0.1", port_of(body["listen"])), timeout=0.9) as sock:
        sock.sendall(b"fast")
        assert recv_exactly(sock, 4) == b"fast"


def test_populate_creates_and_is_idempotent(api: RawApi, names: list[str], echo_server: EchoServer) -> None:
    first, second = new_name(names), new_name(names)
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        fixed_port = placeholder.getsockname()[1]
    config = [
        {"name": first, "upstream": echo_server.address, "listen": f"127.0.0.1:{fixed_port}"},
        {"name": second, "upstream": echo_server.address, "listen": "127.0.0.1:0", "enabled": False},
    ]
    reply = api("POST", "/populate", config)
    assert reply.status == 201
    proxies = {p["name"]: p for p in reply.json["proxies"]}
    assert proxies[first]["listen"] == f"127.0.0.1:{fixed_port}"
    assert proxies[first]["enabled"] is True
    assert proxies[second]["enabled"] is False
    again = api("POST", "/populate", config[:1])
    assert again.status == 201
    assert again.json["proxies"] == [proxies[first]]


def test_populate_errors_use_the_populate_envelope(api: RawApi, echo_server: EchoServer) -> None:
    reply = api("POST", "/populate", [{"upstream": echo_server.address}])
    assert reply.status == 400
    assert reply.json == {"error": "missing required field: name at proxy 1", "status": 400, "proxies": None}
