"""abe_redis_testing: the pytest toolkit for abstract-backend queue backends.

Load it explicitly (it never autoloads)::

    pytest -p abe_redis_testing

or ``pytest_plugins = ["abe_redis_testing"]`` in a conftest, or ``addopts = -p abe_redis_testing``.
``pytest --fixtures`` lists what it provides; options are in the ``abe-redis`` group of
``pytest --help`` (``--abe-redis-*`` flags, ``abe_redis_*`` ini keys).
"""

from __future__ import annotations

# Each fixture family lives in its own module and registers its own options; pytest imports
# these when this module is registered as a plugin.
pytest_plugins: list[str] = [
    "abe_redis_testing._plugin_servers",
    "abe_redis_testing._plugin_backends",
]

__all__: list[str] = []
