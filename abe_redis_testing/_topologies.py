"""What the Redis Cluster and Sentinel handles share: talking to one node, waiting for state.

The handles (``_cluster``, ``_sentinel``) and the ACL helpers (``_acl``) are re-exported by
:mod:`abe_redis_testing.servers`. Every node is a :class:`~abe_redis_testing.servers.RedisServer`
on a free loopback port, so a test can SIGKILL or restart any one of them. The handles wait
for *server state* (``CLUSTER INFO``, ``CLUSTER NODES``, ``INFO replication``,
``SENTINEL MASTER``), never for a fixed time, and every wait that gives up says what it saw last.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis
from redis.crc import key_slot

from .servers import (
    BinaryKind,
    RedisServer,
    ServerStartError,
    redact_url,
)

CLUSTER_SLOTS = 16384
DEFAULT_READY_TIMEOUT = 30.0
DEFAULT_MASTER_NAME = "abe-master"
_POLL_S = 0.05
# A replica's first sync starts at once instead of after the default 5 s diskless-sync delay,
# which would otherwise dominate every boot and every restart.
_FAST_SYNC = ("repl-diskless-sync-delay 0",)
_SENTINEL_PERIODS = ("INFO-PERIOD", "500", "PUBLISH-PERIOD", "500")


NodeFactory = Callable[..., RedisServer]
"""Builds one node from :class:`RedisServer`'s arguments: ``RedisServer`` itself for a local
process, or e.g. ``functools.partial(ContainerRedisServer, image=…)`` for a container."""


class TopologyNotReady(ServerStartError):
    """A cluster or sentinel deployment did not reach the awaited state; the message says what
    was still missing at the deadline."""


# ---------------------------------------------------------------------------------------------
# Talking to one node
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _admin(server: RedisServer, timeout: float = 2.0) -> Iterator[redis.Redis]:
    """A plain client on one node, without reply parsing: ``CLUSTER NODES``, ``INFO`` and
    ``SENTINEL`` replies are read as the server sends them."""
    client = redis.Redis(
        host=server.host,
        port=server.port,
        password=server.password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        protocol=2,
    )
    client.response_callbacks.clear()
    try:
        yield client
    finally:
        client.close()


def _command(server: RedisServer, *args: Any) -> Any:
    with _admin(server) as client:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _fields(text: str) -> dict[str, str]:
    """``key:value`` lines of ``INFO`` / ``CLUSTER INFO``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def _pairs(reply: Sequence[Any]) -> dict[str, Any]:
    """A flat ``[key, value, key, value, …]`` reply (``SENTINEL MASTER``) as a dict."""
    return {str(reply[i]): reply[i + 1] for i in range(0, len(reply) - 1, 2)}


def _wait(what: str, problem: Callable[[], str | None], timeout: float) -> float:
    """Poll ``problem`` until it returns None; returns the seconds waited."""
    start = time.monotonic()
    deadline = start + timeout
    last = "not checked yet"
    while True:
        try:
            found = problem()
        except (redis.RedisError, OSError) as exc:
            found = f"{type(exc).__name__}: {redact_url(str(exc))}"
        if found is None:
            return time.monotonic() - start
        last = found
        if time.monotonic() > deadline:
            raise TopologyNotReady(f"{what} not reached within {timeout:.1f}s; last seen: {last}")
        time.sleep(_POLL_S)


def _slot_of(slot_or_key: int | str | bytes) -> int:
    if isinstance(slot_or_key, int):
        if not 0 <= slot_or_key < CLUSTER_SLOTS:
            raise ValueError(f"a cluster slot is in 0..{CLUSTER_SLOTS - 1}, not {slot_or_key}")
        return slot_or_key
    key = slot_or_key.encode() if isinstance(slot_or_key, str) else slot_or_key
    return int(key_slot(key))


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _lookup_problem(check: Callable[[], str | None]) -> str | None:
    try:
        return check()
    except LookupError as exc:
        return str(exc)


def _timed[R](timings: dict[str, list[float]], label: str, action: Callable[[], R]) -> R:
    began = time.monotonic()
    result = action()
    timings.setdefault(label, []).append(time.monotonic() - began)
    return result


def measure(binary_kinds: Sequence[str] = ("redis-server",), runs: int = 3) -> dict[str, dict[str, float]]:
    """Boot, kill, restart and failover times of both topologies, median of ``runs``, in seconds."""
    import statistics

    from ._cluster import RedisClusterHandle
    from ._sentinel import RedisSentinelHandle
    from .servers import find_binary

    out: dict[str, dict[str, float]] = {}
    for kind in binary_kinds:
        binary_kind: BinaryKind = "valkey" if kind == "valkey" else "redis-server"
        binary = str(find_binary(binary_kind))
        timings: dict[str, list[float]] = {}
        for _ in range(runs):
            with RedisClusterHandle(binary, kind=binary_kind) as cluster:
                timings.setdefault("cluster boot", []).append(cluster.boot_seconds or 0.0)
                killed = _timed(timings, "cluster kill_master", functools.partial(cluster.kill_master, "k"))
                _timed(timings, "cluster restart", functools.partial(cluster.restart, killed))
                _timed(timings, "cluster failover", functools.partial(cluster.failover, "k"))
            with RedisSentinelHandle(binary, kind=binary_kind) as sentinel:
                timings.setdefault("sentinel boot", []).append(sentinel.boot_seconds or 0.0)
                _timed(timings, "sentinel failover", sentinel.failover)
                _timed(timings, "sentinel kill_master", sentinel.kill_master)
        out[kind] = {label: statistics.median(values) for label, values in timings.items()}
    return out


__all__ = [
    "CLUSTER_SLOTS",
    "DEFAULT_MASTER_NAME",
    "DEFAULT_READY_TIMEOUT",
    "NodeFactory",
    "TopologyNotReady",
    "measure",
]
