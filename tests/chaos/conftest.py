"""Fixtures for the chaos runner's tests; loads the chaos fixtures plugin until the lead lists it
in ``abe_redis_testing``."""

from __future__ import annotations

import pytest

_PLUGINS = ("pytester", "abe_redis_testing._plugin_proxied_redis")


def pytest_configure(config: pytest.Config) -> None:
    for name in _PLUGINS:
        if not config.pluginmanager.has_plugin(name):
            config.pluginmanager.import_plugin(name)
