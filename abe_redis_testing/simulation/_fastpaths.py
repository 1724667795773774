"""redis-py's bookkeeping that does nothing in a simulation, switched off while one runs.

A simulated command goes through redis-py's client, pool and connection code as a real one
does; the simulation keeps all of it (retries, pools, pipelines, the handshake) because that is
what the faults exercise. Two things in that path are pure overhead here and a fifth of the
client's cost per command:

* the observability hooks (``record_connection_count``, ``record_operation_duration``, …) and
  the pool name they compute, which do nothing unless OpenTelemetry metrics were enabled for
  redis-py, and a simulation enables none;
* the ``deprecated_args`` wrapper around the pools' ``get_connection``, which inspects its
  arguments on every call to warn about ones nobody passes.

Neither suspends a task, so switching them off leaves every trace byte for byte as it was.
If redis-py's metrics are enabled in the process, nothing is switched off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis.asyncio.client as redis_client
import redis.asyncio.connection as redis_connection
from redis.asyncio.observability import recorder

__all__ = ["lean_redis_py"]

_HOOKS = {
    redis_connection: (
        "record_connection_closed",
        "record_connection_count",
        "record_connection_create_time",
        "record_connection_wait_time",
        "record_error_count",
    ),
    redis_client: ("record_error_count", "record_operation_duration"),
}


async def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _pool_name(pool: Any) -> str:
    return ""


@contextlib.contextmanager
def lean_redis_py() -> Iterator[None]:
    if recorder._get_or_create_collector() is not None:
        yield  # metrics enabled: keep them
        return
    saved: list[tuple[Any, str, Any]] = []

    def swap(owner: Any, name: str, value: Any) -> None:
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    try:
        for module, names in _HOOKS.items():
            for name in names:
                if hasattr(module, name):
                    swap(module, name, _nothing)
        swap(redis_connection, "get_pool_name", _pool_name)
        for pool in (redis_connection.ConnectionPool, redis_connection.BlockingConnectionPool):
            method = pool.__dict__.get("get_connection")
            unwrapped = getattr(method, "__wrapped__", None)
            if unwrapped is not None:
                swap(pool, "get_connection", unwrapped)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
