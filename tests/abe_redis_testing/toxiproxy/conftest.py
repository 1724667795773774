"""Shared fixtures for the Toxiproxy-compatible server tests.

No ``__init__.py`` here on purpose: as a package this directory would be importable as
``toxiproxy`` (its parent is not a package) and shadow toxiproxy-python.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from toxiproxy_helpers import EchoServer, RawApi

from abe_redis_testing.toxiproxy import ToxiproxyClient, ToxiproxyEndpoint

_PLUGINS = ("pytester", "abe_redis_testing._plugin_toxiproxy")


def pytest_configure(config: pytest.Config) -> None:
    for name in _PLUGINS:
        if not config.pluginmanager.has_plugin(name):
            config.pluginmanager.import_plugin(name)


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    """A TCP echo server on 127.0.0.1 and a free port."""
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def api(toxiproxy_server: ToxiproxyEndpoint) -> RawApi:
    """Raw HTTP access to the session's Toxiproxy."""
    return RawApi(toxiproxy_server.client)


@pytest.fixture
def client(toxiproxy_server: ToxiproxyEndpoint) -> ToxiproxyClient:
    """The typed client for the session's Toxiproxy."""
    return toxiproxy_server.client
