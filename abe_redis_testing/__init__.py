"""abe_redis_testing: the pytest toolkit for abstract-backend queue backends.

Load it explicitly (it never autoloads)::

    pytest -p abe_redis_testing

or ``pytest_plugins = ["abe_redis_testing"]`` in a conftest, or ``addopts = -p abe_redis_testing``.
"""

from __future__ import annotations

# Each fixture family lives in its own module and registers its own options; pytest imports
# these when this module is registered as a plugin.
pytest_plugins: list[str] = []

__all__: list[str] = []
