"""Toxiproxy in one place: a pure-Python, Toxiproxy-2.x-API-compatible server embedded in the test
process (:class:`EmbeddedToxiproxy`, console script ``abe-redis-toxiproxy``), and a typed client
for that API (:class:`ToxiproxyClient`) that drives it or a real Toxiproxy alike.

No toxiproxy binary is needed: tests get the embedded server by default, and any client of the
real HTTP API (toxiproxy-python, :mod:`abe_redis_testing.faults`, curl) drives it the same way.
``abe-redis-toxiproxy --host 127.0.0.1 --port 8474 --seed 42`` runs it standalone.
"""

from __future__ import annotations

from ._api import API_VERSION
from ._toxics import TOXIC_TYPES
from .client import ProxyInfo, ToxicInfo, ToxiproxyClient, ToxiproxyEndpoint, ToxiproxyError
from .server import EmbeddedToxiproxy

__all__ = [
    "API_VERSION",
    "TOXIC_TYPES",
    "EmbeddedToxiproxy",
    "ProxyInfo",
    "ToxicInfo",
    "ToxiproxyClient",
    "ToxiproxyEndpoint",
    "ToxiproxyError",
]
