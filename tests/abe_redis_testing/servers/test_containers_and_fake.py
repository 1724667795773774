"""The Docker check and container start (against the Engine API double), and the fakeredis helper."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import redis

from abe_redis_testing.containers import DEFAULT_IMAGE, docker_available, start_redis_container
from abe_redis_testing.fake import make_fake_redis, new_fake_server

from .docker_double import DockerDouble


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def double(monkeypatch: pytest.MonkeyPatch) -> Iterator[DockerDouble]:
    with DockerDouble() as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.docker_host)
        monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
        # testcontainers caches the Ryuk switch on first read; make this test independent of order.
        from testcontainers.core.config import testcontainers_config

        monkeypatch.setattr(testcontainers_config, "_ryuk_disabled", True)
        yield engine


def test_docker_check_is_quick_and_explains_itself_without_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    host = f"tcp://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("DOCKER_HOST", host)
    started = time.monotonic()
    check = docker_available(timeout=1.0)
    assert time.monotonic() - started < 3
    assert not check
    assert host in check.reason
    assert "not reachable" in check.reason


def test_docker_check_sees_the_double(double: DockerDouble) -> None:
    check = docker_available(timeout=1.0)
    assert check, check.reason
    assert ("GET", "/_ping") in double.requests


def test_container_start_through_the_double_yields_a_working_redis(double: DockerDouble) -> None:
    handle = start_redis_container()
    try:
        assert handle.image == DEFAULT_IMAGE
        client = redis.Redis.from_url(handle.url)
        assert client.set("through", "docker") is True
        assert client.get("through") == b"docker"
        client.close()
        endpoint = handle.endpoint()
        assert (endpoint.kind, endpoint.port, endpoint.details["image"]) == (
            "container",
            handle.port,
            DEFAULT_IMAGE,
        )
        (container,) = double.containers.values()
        assert container.image == DEFAULT_IMAGE
        assert container.server is not None and container.server.port == handle.port
    finally:
        handle.stop()
    assert double.containers == {}
    assert DEFAULT_IMAGE in double.pulled
    assert double.unhandled == []
    assert ("POST", "/containers/create") in double.requests


async def test_fake_clients_are_isolated_unless_they_share_a_server() -> None:
    first, second = make_fake_redis(), make_fake_redis()
    await first.set("k", "1")
    assert await second.get("k") is None
    shared = new_fake_server()
    a, b = make_fake_redis(server=shared, decode_responses=True), make_fake_redis(server=shared)
    await a.set("k", "v")
    assert await b.get("k") == b"v"
    assert await a.get("k") == "v"
    for client in (first, second, a, b):
        await client.aclose()
