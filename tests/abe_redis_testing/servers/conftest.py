"""Test setup for the server fixtures.

``pytest_plugins`` is not allowed in a non-root conftest once the whole ``tests`` tree is
collected, so the plugins are registered from ``pytest_configure`` instead (and only if the
package plugin has not registered them already).
"""

from __future__ import annotations

import pytest

_PLUGINS = ("pytester", "abe_redis_testing._plugin_servers")


def pytest_configure(config: pytest.Config) -> None:
    for name in _PLUGINS:
        if not config.pluginmanager.has_plugin(name):
            config.pluginmanager.import_plugin(name)
