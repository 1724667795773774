"""abe_redis_testing: the pytest toolkit for abstract-backend queue backends.

Load it explicitly (it never autoloads)::

    pytest -p abe_redis_testing

or ``pytest_plugins = ["abe_redis_testing"]`` in a conftest, or ``addopts = -p abe_redis_testing``.
``pytest --fixtures`` lists what it provides; options are in the ``abe-redis`` group of
``pytest --help`` (``--abe-redis-*`` flags, ``abe_redis_*`` ini keys).
"""

from __future__ import annotations

from ._plugin_backends import RedisBackendFactory
from ._timings import FAST_SETTINGS
from .containers import docker_available
from .fake import FakeRedisStreamsBackend, make_fake_redis, new_fake_server
from .servers import RedisEndpoint, RedisServer, ServerBinaryNotFound, ServerStartError

# Each fixture family lives in its own module and registers its own options; pytest imports
# these when this module is registered as a plugin.
pytest_plugins: list[str] = [
    "abe_redis_testing._plugin_servers",
    "abe_redis_testing._plugin_backends",
    "abe_redis_testing._plugin_toxiproxy",
    "abe_redis_testing._plugin_proxied_redis",
    "abe_redis_testing.contract._plugin",
]

__all__ = [
    "FAST_SETTINGS",
    "FakeRedisStreamsBackend",
    "RedisBackendFactory",
    "RedisEndpoint",
    "RedisServer",
    "ServerBinaryNotFound",
    "ServerStartError",
    "docker_available",
    "make_fake_redis",
    "new_fake_server",
]
