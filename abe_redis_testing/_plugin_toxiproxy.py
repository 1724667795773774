"""pytest options and fixtures for network chaos through Toxiproxy.

A real Toxiproxy is used when one answers ``GET /version`` at the configured URL
(``--abe-redis-toxiproxy-url``, ini ``abe_redis_toxiproxy_url``, or env ``TOXIPROXY_URL``, in that
order); otherwise the session starts the embedded, API-compatible server in a background thread.
Under pytest-xdist every worker has its own session and so its own embedded server; on a shared
real server each test deletes only the proxies it created.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from abe_redis_testing._options import add_option, get_option
from abe_redis_testing.faults import ProxyScope
from abe_redis_testing.toxiproxy import EmbeddedToxiproxy, ToxiproxyClient, ToxiproxyEndpoint, ToxiproxyError

URL_ENV = "TOXIPROXY_URL"
# Probing a configured URL must not stall the session when nothing listens there.
PROBE_TIMEOUT = 2.0


def pytest_addoption(parser: pytest.Parser) -> None:
    add_option(
        parser,
        "toxiproxy-url",
        f"Toxiproxy API URL for the chaos fixtures (also env {URL_ENV}). If nothing answers "
        "GET /version there, the embedded Toxiproxy-compatible server is started instead.",
    )
    add_option(
        parser,
        "toxiproxy-seed",
        "Seed for the embedded Toxiproxy's randomness (latency jitter, toxicity draws, slicer "
        "sizes), to replay a run's choices. Default: random. A real Toxiproxy ignores it.",
        kind="int",
    )


def pytest_configure(config: pytest.Config) -> None:
    # A bad value is a usage error at start-up, not a traceback in the first test that needs it.
    get_option(config, "toxiproxy-seed")


def configured_toxiproxy_url(config: pytest.Config) -> str | None:
    """The Toxiproxy URL from flag, ini or ``TOXIPROXY_URL`` (first set wins), if any."""
    value = get_option(config, "toxiproxy-url") or os.environ.get(URL_ENV, "")
    return value.strip() or None


def _probe(url: str) -> tuple[ToxiproxyClient | None, str]:
    try:
        client = ToxiproxyClient(url, timeout=PROBE_TIMEOUT)
    except ValueError as exc:
        return None, str(exc)
    try:
        version = client.version()
    except Exception as exc:
        return None, f"{client.url} did not answer GET /version ({exc})"
    client.timeout = 10.0
    return client, version


@pytest.fixture(scope="session")
def toxiproxy_server(pytestconfig: pytest.Config) -> Iterator[ToxiproxyEndpoint]:
    """The session's Toxiproxy: a real server at the configured URL if it answers ``GET
    /version``, otherwise the embedded server started for this session (and stopped after it).

    ``.embedded`` tells which; ``.note`` says why; ``.client`` is a :class:`ToxiproxyClient`.
    ``--abe-redis-toxiproxy-seed`` fixes the embedded server's randomness.
    """
    url = configured_toxiproxy_url(pytestconfig)
    note = "no Toxiproxy URL configured"
    if url is not None:
        client, detail = _probe(url)
        if client is not None:
            yield ToxiproxyEndpoint(
                client.url, client, embedded=False, version=detail, note=f"found at {url}"
            )
            return
        note = detail
    seed = get_option(pytestconfig, "toxiproxy-seed")
    with EmbeddedToxiproxy(seed=seed) as server:
        client = ToxiproxyClient(server.url)
        yield ToxiproxyEndpoint(
            server.url, client, embedded=True, version=client.version(), note=note, seed=seed
        )


@pytest.fixture
def toxiproxy(toxiproxy_server: ToxiproxyEndpoint) -> Iterator[ProxyScope]:
    """Creates proxies for this test (``toxiproxy.proxy("127.0.0.1:6390")`` returns a
    :class:`~abe_redis_testing.faults.FaultProxy` on a free port) and deletes them after the test,
    which also ends their faults and connections. Other proxies on the server are left alone."""
    scope = ProxyScope(toxiproxy_server.client)
    try:
        yield scope
    finally:
        scope.close()


@pytest.fixture
def toxiproxy_python(toxiproxy_server: ToxiproxyEndpoint) -> Iterator[Any]:
    """A ``toxiproxy.Toxiproxy`` (toxiproxy-python) pointed at the session's server.

    toxiproxy-python keeps host and port as class attributes shared by the whole process, so
    they are restored after the test; proxies the test created through it are destroyed.
    """
    toxiproxy = pytest.importorskip("toxiproxy", reason="toxiproxy-python is not installed")
    from toxiproxy.api import APIConsumer

    created: list[str] = []

    base: Any = toxiproxy.Toxiproxy

    class TrackingToxiproxy(base):  # type: ignore[misc]
        def create(self, upstream: str, name: str, listen: Any = None, enabled: Any = None) -> Any:
            proxy = super().create(upstream, name, listen=listen, enabled=enabled)
            created.append(name)
            return proxy

    classes = (APIConsumer, toxiproxy.Toxiproxy)
    saved = [{attr: vars(cls)[attr] for attr in ("host", "port") if attr in vars(cls)} for cls in classes]
    client = toxiproxy_server.client
    server = TrackingToxiproxy()
    server.update_api_consumer(client.host, client.port)
    try:
        yield server
    finally:
        for cls, attrs in zip(classes, saved, strict=True):
            for attr in ("host", "port"):
                if attr in attrs:
                    setattr(cls, attr, attrs[attr])
                elif attr in vars(cls):
                    delattr(cls, attr)
        for name in created:
            with contextlib.suppress(ToxiproxyError):
                client.delete_proxy(name)
