"""Fixtures for the chaos runner's tests; loads the chaos fixtures plugin until the lead lists it
in ``abe_redis_testing``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chaos import ChaosSetupError, Environment

_PLUGINS = ("pytester", "abe_redis_testing._plugin_proxied_redis")


def pytest_configure(config: pytest.Config) -> None:
    for name in _PLUGINS:
        if not config.pluginmanager.has_plugin(name):
            config.pluginmanager.import_plugin(name)


@pytest.fixture(scope="module")
def env() -> Iterator[Environment]:
    """The scenarios' Redis and Toxiproxy, one per test module; skips where they cannot start."""
    try:
        environment = Environment.create()
    except ChaosSetupError as exc:
        pytest.skip(str(exc))
    try:
        yield environment
    finally:
        environment.close()
