"""Auto-batching publishes on a Redis Cluster (3 masters + 3 replicas of redis-server): every call
gets its own result, entries land exactly once, and redirections, a resharded slot or a killed
master never turn into a success for an unwritten entry or a silent second write."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.backoff import EqualJitterBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from abe_redis import InvalidKeyError, RedisConfig, RedisStreamsBackend
from abe_redis._cluster_publisher import ClusterPublisher
from abe_redis._codec import PAYLOAD_FIELD
from abe_redis._connection import build_client, close_client
from abe_redis._publisher import PublishOutcomeUnknownError
from abe_redis_testing.servers import RedisClusterHandle

from .test_cluster import _reshard


@pytest.fixture
async def cluster_client(redis_cluster: RedisClusterHandle) -> AsyncIterator[RedisCluster]:
    client = cast(RedisCluster, build_client(RedisConfig.from_url(redis_cluster.url)))
    try:
        yield client
    finally:
        await close_client(cast(Any, client))


class _Redirected(ClusterPublisher):
    """Counts the entries sent to a slot's importing node after ``ASK``."""

    asked = 0

    async def _xadd_asking(self, *args: Any, **kwargs: Any) -> str | None:
        self.asked += 1
        return await super()._xadd_asking(*args, **kwargs)


def _publisher(client: RedisCluster, attempts: int = 5) -> ClusterPublisher:
    return ClusterPublisher(client, attempts=attempts, backoff=EqualJitterBackoff(cap=0.5, base=0.05))


def _fields(key: str, n: int) -> dict[str, str | int]:
    return {"k": key, "n": n}


async def _entries(client: RedisCluster, stream: str) -> dict[str, tuple[str, int]]:
    """Entry id -> (key, n) of every entry of ``stream``."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(stream)  # type: ignore[assignment]
    return {entry_id.decode(): (fields[b"k"].decode(), int(fields[b"n"])) for entry_id, fields in entries}


async def test_concurrent_publishes_over_many_keys_land_once_with_their_ids_in_few_round_trips(
    redis_cluster: RedisClusterHandle, cluster_client: RedisCluster
) -> None:
    keys = [f"orders:{i}" for i in range(40)]
    assert len({redis_cluster.master_for(k).port for k in keys}) == 3, "the keys must span every master"
    publisher = _publisher(cluster_client)
    sent = [(keys[n % len(keys)], n) for n in range(500)]
    try:
        ids = await asyncio.gather(
            *(publisher.xadd(k, _fields(k, n), maxlen=None, nomkstream=False) for k, n in sent)
        )
        trips = sum(p.round_trips for p in publisher.publishers.values())
        assert len(publisher.publishers) == 3
    finally:
        await publisher.aclose()
    stored: dict[tuple[str, int], str] = {}
    for key in keys:
        stored |= {sent: entry_id for entry_id, sent in (await _entries(cluster_client, key)).items()}
    assert len(stored) == 500
    assert dict(zip(sent, ids, strict=True)) == stored
    print(f"500 publishes over {len(keys)} keys on 3 masters in {trips} round trips")
    assert trips < 100, f"{trips} round trips for 500 concurrent publishes: not batched"


async def test_the_backend_publishes_concurrently_on_a_cluster_exactly_once(
    redis_cluster: RedisClusterHandle,
) -> None:
    keys = [f"k{i}" for i in range(25)]
    async with RedisStreamsBackend.from_url(redis_cluster.url) as backend:
        await asyncio.gather(*(backend.publish(keys[n % 25], {"n": n}) for n in range(500)))
        await backend.publish_many("batch", [{"n": n} for n in range(300)])
        client: Any = backend.client
        seen: Counter[int] = Counter()
        for key in keys:
            for _, fields in await client.xrange(backend.stream_name(key)):
                seen[json.loads(fields[PAYLOAD_FIELD.encode()])["n"]] += 1
        assert seen == Counter(range(500))
        batch = await client.xrange(backend.stream_name("batch"))
        assert [json.loads(f[PAYLOAD_FIELD.encode()])["n"] for _, f in batch] == list(range(300))


async def test_a_wrong_type_key_fails_only_its_own_call(
    redis_cluster: RedisClusterHandle, cluster_client: RedisCluster
) -> None:
    # One hash tag: every key on one master, so the bad entry shares round trips with the good.
    good = [f"s{i}{{t}}" for i in range(20)]
    await cluster_client.set("bad{t}", "a string")
    publisher = _publisher(cluster_client)
    try:
        calls = [publisher.xadd(k, _fields(k, n), maxlen=None, nomkstream=False) for n, k in enumerate(good)]
        calls.insert(7, publisher.xadd("bad{t}", _fields("bad", 0), maxlen=None, nomkstream=False))
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await publisher.aclose()
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and results[7] is failed[0]
    assert isinstance(failed[0], ResponseError) and "WRONGTYPE" in str(failed[0])
    for n, key in enumerate(good):
        assert list((await _entries(cluster_client, key)).values()) == [(key, n)]
    assert await cluster_client.get("bad{t}") == b"a string"

    async with RedisStreamsBackend.from_url(redis_cluster.url) as backend:
        await cluster_client.set(backend.stream_name("bad"), "a string")
        outcomes = await asyncio.gather(
            *(backend.publish(k, {"n": 1}) for k in ("a", "bad", "b")), return_exceptions=True
        )
        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], InvalidKeyError)


async def test_a_master_killed_mid_burst_leaves_every_call_written_once_or_failed(
    redis_cluster: RedisClusterHandle, cluster_client: RedisCluster
) -> None:
    keys = [f"pay:{i}" for i in range(30)]
    victim = redis_cluster.master_for(keys[0])
    on_victim = {k for k in keys if redis_cluster.master_for(k) is victim}
    for _ in range(100):  # a freshly booted cluster may not list the replica yet
        if redis_cluster.replicas_of(victim):
            break
        await asyncio.sleep(0.1)
    publisher = _publisher(cluster_client)
    written: dict[tuple[str, int], tuple[str, float]] = {}  # -> (entry id, acknowledged at)
    failed: dict[tuple[str, int], BaseException] = {}
    stop = asyncio.Event()
    serial = iter(range(10**9))

    async def burst(task: int) -> None:
        while not stop.is_set():
            n = next(serial)
            key = keys[n % len(keys)]
            try:
                entry_id = await publisher.xadd(key, _fields(key, n), maxlen=None, nomkstream=False)
            except Exception as exc:
                failed[key, n] = exc
            else:
                assert entry_id is not None
                written[key, n] = (entry_id, time.monotonic())
            await asyncio.sleep(0.002)

    tasks = [asyncio.create_task(burst(t)) for t in range(16)]
    try:
        await asyncio.sleep(0.3)
        killed_at = time.monotonic()
        await asyncio.to_thread(redis_cluster.kill_master, keys[0])
        promoted_at = time.monotonic()
        await asyncio.sleep(0.5)  # publishing goes on, to the promoted replica too
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        await publisher.aclose()
    stored: dict[tuple[str, int], list[str]] = {}
    for key in keys:
        for entry_id, sent in (await _entries(cluster_client, key)).items():
            stored.setdefault(sent, []).append(entry_id)
    errors = Counter(type(exc).__name__ for exc in failed.values())
    lost = {sent for sent in written if sent not in stored}
    print(
        f"{len(written)} publishes acknowledged, {len(failed)} raised {dict(errors)}; "
        f"{len(lost)} acknowledged ones lost with the killed master (unreplicated); failover "
        f"{promoted_at - killed_at:.1f} s"
    )
    assert written and any(k in on_victim for k, _ in written), "nothing reached the victim"
    assert not [sent for sent, ids in stored.items() if len(ids) > 1], "written twice"
    for sent, (entry_id, _) in written.items():
        if sent in stored:
            assert stored[sent] == [entry_id], f"{sent} acknowledged as {entry_id}, stored as {stored[sent]}"
    # Replication is asynchronous: what the killed master acknowledged just before it died may
    # be gone. Nothing else may be.
    for key, n in lost:
        assert key in on_victim and written[key, n][1] <= promoted_at, f"{(key, n)} lost"
    assert not [sent for sent in written if written[sent][1] > promoted_at + 0.2 and sent not in stored]
    # Each failure says which it was: PublishOutcomeUnknownError when the entry may be in the
    # stream, the plain redis-py error only when it certainly is not.
    for sent, exc in failed.items():
        assert isinstance(exc, RedisConnectionError | RedisTimeoutError) or (
            "CLUSTERDOWN" in str(exc) or "TRYAGAIN" in str(exc)
        ), repr(exc)
        if not isinstance(exc, PublishOutcomeUnknownError):
            assert sent not in stored, f"{sent} failed with {exc!r} yet was written"
        assert sent[0] in on_victim, f"{sent} failed with {exc!r}, though its master lived"


async def test_publishes_follow_a_slot_moved_to_another_master_and_land_once(
    redis_cluster: RedisClusterHandle, cluster_client: RedisCluster
) -> None:
    # Every key in one slot, by hash tag: the slot moves key by key while publishing goes on
    # (ASK for the keys gone already), then a publisher whose slot map predates the move sends
    # to the old owner (MOVED).
    keys = [f"m{i}{{moving}}" for i in range(12)]
    slot = key_slot(b"moving")
    source = redis_cluster.master_for(slot)
    target = next(m for m in redis_cluster.masters if m is not source)
    target_name = f"{target.host}:{target.port}"
    publisher = _Redirected(cluster_client, attempts=5, backoff=EqualJitterBackoff(cap=0.5, base=0.05))
    stale_client = cast(RedisCluster, build_client(RedisConfig.from_url(redis_cluster.url)))
    stale = _publisher(stale_client)
    written: dict[tuple[str, int], str] = {}
    try:
        await stale_client.initialize()
        for n, key in enumerate(keys):
            entry_id = await publisher.xadd(key, _fields(key, n), maxlen=None, nomkstream=False)
            assert entry_id is not None
            written[key, n] = entry_id
        moving = asyncio.create_task(asyncio.to_thread(_reshard, redis_cluster, slot, target, 0.05))
        n = len(keys)
        while not moving.done():
            batch = [(keys[i % len(keys)], n + i) for i in range(24)]
            n += len(batch)
            ids = await asyncio.gather(
                *(publisher.xadd(k, _fields(k, i), maxlen=None, nomkstream=False) for k, i in batch)
            )
            for sent, entry_id in zip(batch, ids, strict=True):
                assert entry_id is not None
                written[sent] = entry_id
            await asyncio.sleep(0.01)
        moved = await moving
        stale_node = stale_client.get_node_from_key(keys[0])
        assert stale_node is not None and stale_node.name == f"{source.host}:{source.port}"
        batch = [(keys[i % len(keys)], n + i) for i in range(100)]
        ids = await asyncio.gather(
            *(stale.xadd(k, _fields(k, i), maxlen=None, nomkstream=False) for k, i in batch)
        )
        written |= dict(zip(batch, cast(list[str], ids), strict=True))
        # Every entry was answered MOVED, then sent to the new owner, which the map now names.
        stale_node = stale_client.get_node_from_key(keys[0])
        assert stale_node is not None and stale_node.name == target_name
        assert stale.publishers[target_name].entries_sent == 100
    finally:
        await publisher.aclose()
        await stale.aclose()
        await close_client(cast(Any, stale_client))
    assert moved == len(keys) and redis_cluster.master_for(slot) is target
    assert publisher.asked, "no publish met the slot half-moved (ASK)"
    stored: dict[tuple[str, int], str] = {}
    for key in keys:
        stored |= {sent: entry_id for entry_id, sent in (await _entries(cluster_client, key)).items()}
    print(
        f"{len(written)} publishes while slot {slot} moved {source.port} -> {target.port}; "
        f"{publisher.asked} sent after ASK"
    )
    assert stored == written
