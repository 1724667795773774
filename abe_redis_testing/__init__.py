"""abe_redis_testing: the pytest toolkit for abstract-backend queue backends.

Load it explicitly (it never autoloads)::

    pytest -p abe_redis_testing

or ``pytest_plugins = ["abe_redis_testing"]`` in a conftest, or ``addopts = -p abe_redis_testing``.
``pytest --fixtures`` lists what it provides; options are in the ``abe-redis`` group of
``pytest --help`` (``--abe-redis-*`` flags, ``abe_redis_*`` ini keys).

Beyond the names below, the toolkit's modules are: :mod:`abe_redis_testing.contract` (the
contract suite), :mod:`abe_redis_testing.faults` (network faults through Toxiproxy),
:mod:`abe_redis_testing.toxiproxy` (the embedded Toxiproxy server and its client),
:mod:`abe_redis_testing.servers` and :mod:`abe_redis_testing.fake` (servers and fakes).
"""

from __future__ import annotations

from ._plugin_backends import RedisBackendFactory
from ._timings import FAST_SETTINGS
from .fake import FakeRedisStreamsBackend
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
]
