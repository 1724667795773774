"""A pure-Python, Toxiproxy-2.x-API-compatible server, embedded in the test process.

No toxiproxy binary is installable here, so tests get this one by default; any client of the
real Toxiproxy HTTP API (toxiproxy-python, :mod:`abe_redis_testing.chaos`, curl) drives it the
same way. Run it standalone with ``abe-redis-toxiproxy --host 127.0.0.1 --port 8474``.
"""

from __future__ import annotations

from ._api import API_VERSION
from ._toxics import TOXIC_TYPES
from .server import EmbeddedToxiproxy

__all__ = ["API_VERSION", "TOXIC_TYPES", "EmbeddedToxiproxy"]
