"""Consuming from a Redis Cluster: 3 masters + 3 replicas of redis-server, started on loopback.

Streams and the backend's own keys are spread over partitions pinned to hash slots (see
``abe_redis._partitions``); each partition runs the single-server engine. These tests check that
the spread is real, that no command is refused as cross-slot, that delivery stays at-least-once
with the prefetch bound, across a failed-over master, and that the idle cost does not grow with
the number of streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from redis.crc import key_slot

from abe_redis import ReceivedMessage, RedisStreamsBackend
from abe_redis._partitions import Partitions, partition_of, partition_tags
from abe_redis._topology import CLUSTER_SLOTS
from abe_redis_testing.servers import RedisClusterHandle, RedisServer

from .helpers import own_keys, take, taken_by_a_task_then_cancelled

FAST = {
    "block_ms": 200,
    "discovery_interval_ms": 100,
    "claim_idle_ms": 1000,
    "claim_interval_ms": 200,
}


@contextlib.asynccontextmanager
async def _backend(url: str, **overrides: Any) -> AsyncIterator[RedisStreamsBackend]:
    backend = RedisStreamsBackend.from_url(url, **{**FAST, **overrides})
    try:
        yield backend
    finally:
        await backend.aclose()


@contextlib.asynccontextmanager
async def _one_job_two_peers(
    url: str,
) -> AsyncIterator[tuple[RedisStreamsBackend, AsyncGenerator[ReceivedMessage], RedisStreamsBackend]]:
    """One job published; two backends of group ``g``, the first's consume stream open (and
    closed afterwards): the job and a peer that may take it over if the first lets it go."""
    async with _backend(url) as publisher:
        await publisher.publish("jobs", {"job": 1})
    async with _backend(url) as first, _backend(url) as second:
        stream = first.consume(group="g")
        try:
            yield first, stream, second
        finally:
            await stream.aclose()


async def _drain(stream: AsyncGenerator[Any], into: list[Any], stop: asyncio.Event) -> None:
    while not stop.is_set():
        into.append(await anext(stream))


# -- key placement, no server ------------------------------------------------------------------


def test_partition_tags_spread_evenly_over_the_slots() -> None:
    for count in (1, 3, 16, 64):
        tags = partition_tags(count)
        slots = [key_slot(tag.encode()) for tag in tags]
        for index, slot in enumerate(slots):
            assert index * CLUSTER_SLOTS // count <= slot < (index + 1) * CLUSTER_SLOTS // count
        assert len(set(tags)) == count


def test_a_stream_and_its_partition_keys_share_one_slot() -> None:
    from abe_redis import RedisConfig

    config = RedisConfig(url="redis+cluster://127.0.0.1:7000", key_prefix="app:abe:")
    layout = Partitions(config)
    for key in ("orders", "app:payments", "k-17", "ünïcode"):
        stream = layout.stream(key)
        assert stream.startswith(key), "the user's name stays in front, for ACL key patterns"
        partition = layout.partition(stream)
        assert partition.index == partition_of(key, 16)
        own = [*own_keys(partition.config.keys), partition.config.dead_letter_stream(stream)]
        assert {key_slot(k.encode()) for k in [stream, *own]} == {key_slot(stream.encode())}
        assert all(k.startswith("app:abe:") for k in own[:-1]), "every own key under the prefix"
        assert layout.stream(stream) == stream and layout.key(stream) == key


def test_keys_with_braces_are_refused_in_a_cluster() -> None:
    from abe_redis import InvalidKeyError, RedisConfig

    layout = Partitions(RedisConfig(url="redis+cluster://127.0.0.1:7000"))
    with pytest.raises(InvalidKeyError, match="hash tag"):
        layout.stream("orders{eu}")


def test_cluster_settings_that_would_break_key_placement_are_refused() -> None:
    from abe_redis import ConfigurationError, RedisConfig, RedisStreamsBackend

    url = "redis+cluster://127.0.0.1:7000"
    with pytest.raises(ConfigurationError, match=r"REDIS_KEY_PREFIX.*may not contain '\{'"):
        RedisConfig(url=url, key_prefix="app:{x}:")
    with pytest.raises(ConfigurationError, match=r"REDIS_CLUSTER_PARTITIONS.*1 to 1024"):
        RedisConfig.from_env({"REDIS_URL": url, "REDIS_CLUSTER_PARTITIONS": "0"})
    with pytest.raises(ConfigurationError, match=r"REDIS_STREAMS.*hash tag"):
        RedisStreamsBackend.from_url(url, streams=("orders{eu}",))
    assert RedisConfig(url="redis://h:6379", key_prefix="app:{x}:").key_prefix == "app:{x}:"


def test_configured_streams_are_read_in_their_own_partitions() -> None:
    from abe_redis import RedisConfig

    config = RedisConfig(url="redis+cluster://127.0.0.1:7000", streams=("a", "b", "c"), cluster_partitions=4)
    layout = Partitions(config)
    spread = {name: p.index for p in layout.partitions for name in p.config.streams}
    assert spread == {layout.stream(k): partition_of(k, 4) for k in ("a", "b", "c")}
    assert sum(p.config.sweep_streams for p in layout.partitions) == config.sweep_streams


# -- on a real cluster ---------------------------------------------------------------------------


async def test_streams_spread_over_every_master_and_two_consumers_share_them(
    redis_cluster: RedisClusterHandle,
) -> None:
    keys = [f"orders:{i}" for i in range(40)]
    async with _backend(redis_cluster.url) as publisher:
        for round_ in range(5):
            for key in keys:
                await publisher.publish(key, {"key": key, "n": round_})
        streams = [publisher.stream_name(k) for k in keys]
        owners = Counter(redis_cluster.master_for(s).port for s in streams)
        print(f"streams per master: {dict(owners)}")
        assert len(owners) == 3, "the streams must land on every master"
        assert min(owners.values()) >= 5

        async with _backend(redis_cluster.url) as a, _backend(redis_cluster.url) as b:
            got_a: list[Any] = []
            got_b: list[Any] = []
            stop = asyncio.Event()
            ca, cb = a.consume(group="g"), b.consume(group="g")
            tasks = [
                asyncio.create_task(_drain(ca, got_a, stop)),
                asyncio.create_task(_drain(cb, got_b, stop)),
            ]
            try:
                for _ in range(200):
                    if len(got_a) + len(got_b) >= 200:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # anything extra would be a duplicate
            finally:
                stop.set()
                for task in tasks:
                    task.cancel()
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
                failures = [o for o in outcomes if not isinstance(o, asyncio.CancelledError | None)]
                assert not failures, f"a consumer failed: {failures!r}"
                await ca.aclose()
                await cb.aclose()
    seen = Counter((m["key"], m["n"]) for m in got_a + got_b)
    assert len(seen) == 200, f"lost {200 - len(seen)}"
    assert max(seen.values()) == 1, "no duplicates"
    assert got_a and got_b, "both consumers got a share"
    assert {m.stream for m in got_a + got_b} == set(streams)


async def test_a_message_on_a_new_stream_ends_a_waiting_consumers_wait(
    redis_cluster: RedisClusterHandle,
) -> None:
    # A long blocking wait and a slow registry poll: only the partition's notification stream,
    # read inside the blocking XREADGROUP, can bring the message in quickly.
    settings = {"block_ms": 20_000, "discovery_interval_ms": 60_000}
    async with _backend(redis_cluster.url, **settings) as consumer, _backend(redis_cluster.url) as publisher:
        stream = consumer.consume(group="g")
        pulling = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(1.0)  # every partition's reader is now blocked
        assert not pulling.done()
        started = time.monotonic()
        await publisher.publish("brand-new", {"hello": 1})
        message = await asyncio.wait_for(pulling, 10)
        waited = time.monotonic() - started
        print(f"a new stream reached the waiting consumer in {waited:.3f} s (block_ms=20000)")
        assert dict(message) == {"hello": 1} and message.stream == publisher.stream_name("brand-new")
        assert waited < 10
        await consumer.ack(message)
        await stream.aclose()
        pending = await publisher.client.xpending(message.stream, "g")
        assert pending["pending"] == 0, "ack() acknowledged it in its own slot"


async def test_a_message_left_unacknowledged_by_a_closed_consumer_goes_to_another(
    redis_cluster: RedisClusterHandle,
) -> None:
    async with _backend(redis_cluster.url) as publisher:
        await publisher.publish("jobs", {"job": "abandoned"})
        async with _backend(redis_cluster.url) as first:
            stream = first.consume(group="g")
            message = await asyncio.wait_for(anext(stream), 10)
            await stream.aclose()  # the handler "crashed": released, unacknowledged
        async with _backend(redis_cluster.url) as second:
            again_stream = second.consume(group="g")
            again = await asyncio.wait_for(anext(again_stream), 10)
            await again_stream.aclose()
    assert dict(again) == dict(message) == {"job": "abandoned"}
    assert again.message_id == message.message_id and again.delivery_count == 2


async def test_one_consumer_holds_at_most_prefetch_entries_over_all_partitions(
    redis_cluster: RedisClusterHandle,
) -> None:
    prefetch = 20
    async with _backend(redis_cluster.url, prefetch=prefetch) as backend:
        keys = [f"bulk:{i}" for i in range(30)]
        for key in keys:
            await backend.publish_many(key, [{"key": key, "n": n} for n in range(10)])
        stream = backend.consume(group="g")
        first = await asyncio.wait_for(anext(stream), 10)  # held; the next is not asked for
        await asyncio.sleep(1.5)  # every partition had time to fill its share
        client: Any = backend.client
        held = 0
        for key in keys:
            held += (await client.xpending(backend.stream_name(key), "g"))["pending"]
        print(f"held with prefetch={prefetch}: {held} of 300 published")
        assert 0 < held <= prefetch
        assert first["n"] == 0
        await stream.aclose()


def _commands(masters: list[RedisServer]) -> int:
    """Commands the masters ran, without what the servers and this test send themselves."""
    import redis

    total = 0
    for node in masters:
        with redis.Redis(host=node.host, port=node.port) as client:
            stats = client.info("commandstats")
        for name, row in stats.items():
            command = name.removeprefix("cmdstat_")
            # COMMAND is counted: redis-py would ask COMMAND GETKEYS for every stream read.
            if command.split("|")[0] not in {"info", "replconf", "cluster", "ping", "psync"}:
                total += int(row["calls"])
    return total


def _getkeys_calls(masters: list[RedisServer]) -> int:
    import redis

    total = 0
    for node in masters:
        with redis.Redis(host=node.host, port=node.port) as client:
            total += int(client.info("commandstats").get("cmdstat_command|getkeys", {}).get("calls", 0))
    return total


async def _idle_rate(redis_cluster: RedisClusterHandle, window: float) -> float:
    masters = redis_cluster.masters
    before = _commands(masters)
    await asyncio.sleep(window)
    return (_commands(masters) - before) / window


async def test_idle_cost_does_not_grow_with_the_number_of_streams(redis_cluster: RedisClusterHandle) -> None:
    # Frequent sweeps, so that the one cost that depends on the streams (the sweep's XPENDING,
    # capped at REDIS_SWEEP_STREAMS per interval for the whole consumer) shows in a short window.
    settings = {
        "block_ms": 1000,
        "discovery_interval_ms": 1000,
        "claim_idle_ms": 30_000,
        "claim_interval_ms": 1000,
    }
    rates = {}
    async with (
        _backend(redis_cluster.url, **settings) as publisher,
        _backend(redis_cluster.url, **settings) as consumer,
    ):
        stream = consumer.consume(group="g")
        published = 0
        pulling: asyncio.Future[Any] | None = None
        for count in (10, 500):
            for i in range(published, count):
                await publisher.publish(f"quiet:{i}", {"i": i})
            wanted = count - published
            if pulling is not None:  # the wait left open by the last measurement
                await asyncio.wait_for(pulling, 30)
                wanted -= 1
            await take(stream, wanted, wait_s=30)
            published = count
            # Cancelling a pending anext() would close the generator: the wait stays open.
            pulling = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(2.5)  # discovery, first sweeps, the blocking waits
            rates[count] = await _idle_rate(redis_cluster, 4.0)
            assert not pulling.done()
        assert pulling is not None
        pulling.cancel()  # ends the generator, which closes the consumer
        with contextlib.suppress(asyncio.CancelledError):
            await pulling
    config = consumer.config
    partitions = config.cluster_partitions
    # Per second, the whole consumer: a blocking read and a registry poll per partition, a sweep
    # (ZRANGEBYSCORE) per partition and at most sweep_streams XPENDING per claim interval, the
    # heartbeat (4 commands per partition per lease refresh); twice that as headroom.
    bound = 2 * (
        partitions / (config.block_ms / 1000)
        + partitions / (config.discovery_interval_ms / 1000)
        + (partitions + config.sweep_streams) / (config.effective_claim_interval_ms / 1000)
        + 4 * partitions / (config.lease_refresh_ms / 1000)
    )
    print(f"idle commands/s: 10 streams {rates[10]:.1f}, 500 streams {rates[500]:.1f}, bound {bound:.0f}")
    # Reads are routed by their STREAMS keys here, not by asking a node for their keys each time.
    assert _getkeys_calls(redis_cluster.masters) == 0
    assert rates[10] <= bound and rates[500] <= bound
    # 50 times the streams: only the capped sweep may add anything.
    assert rates[500] <= rates[10] + 2 * config.sweep_streams / (config.effective_claim_interval_ms / 1000)


def _wait_replicated(master: RedisServer, replicas: list[RedisServer]) -> None:
    """Until every replica has processed the master's whole replication stream."""
    import redis

    with redis.Redis(host=master.host, port=master.port) as client:
        offset = int(client.info("replication")["master_repl_offset"])
    for replica in replicas:
        with redis.Redis(host=replica.host, port=replica.port) as client:
            for _ in range(100):
                if int(client.info("replication").get("slave_repl_offset", -1)) >= offset:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"replica {replica.port} did not catch up with {master.port}")


async def test_consumption_continues_after_a_master_fails_over(redis_cluster: RedisClusterHandle) -> None:
    keys = [f"orders:{i}" for i in range(30)]
    # Replication is asynchronous: the test waits until the replica has everything published
    # before the kill, so that a failover cannot lose it. Acknowledgements are not waited for:
    # one lost with the master means a redelivery, counted below, never a loss.
    async with _backend(redis_cluster.url) as publisher:
        for n in range(4):
            for key in keys:
                await publisher.publish(key, {"key": key, "n": n})
        victim_stream = publisher.stream_name(keys[0])
        on_victim = {
            k
            for k in keys
            if redis_cluster.master_for(publisher.stream_name(k)) is redis_cluster.master_for(victim_stream)
        }
        seen: Counter[tuple[str, int]] = Counter()
        async with _backend(redis_cluster.url) as consumer:
            stream = consumer.consume(group="g")
            for message in await take(stream, 60):
                seen[message["key"], message["n"]] += 1
            master = redis_cluster.master_for(victim_stream)
            for _ in range(100):  # a freshly booted cluster may not list the replica yet
                if redis_cluster.replicas_of(master):
                    break
                await asyncio.sleep(0.1)
            await asyncio.to_thread(_wait_replicated, master, redis_cluster.replicas_of(master))
            # Meanwhile, publishes that nothing waits to replicate: counted, not guaranteed.
            during: list[tuple[str, int]] = []
            refused = 0
            killed = asyncio.Event()

            async def publish_through_the_kill() -> None:
                nonlocal refused
                n = 100
                while not killed.is_set():
                    key = keys[n % len(keys)]
                    try:
                        await publisher.publish(key, {"key": key, "n": n})
                        during.append((key, n))
                    except Exception:
                        refused += 1  # not acknowledged: the caller knows to retry
                    n += 1
                    await asyncio.sleep(0.005)

            publishing = asyncio.create_task(publish_through_the_kill())
            started = time.monotonic()
            await asyncio.to_thread(redis_cluster.kill_master, victim_stream)
            failover_s = time.monotonic() - started
            killed.set()
            await publishing
            for key in keys:  # publishing goes on, to the promoted replica too
                await publisher.publish(key, {"key": key, "n": 4})
            guaranteed = {(k, n) for k in keys for n in range(5)}
            deadline = time.monotonic() + 30
            # Until everything guaranteed is in, and then a while longer for the rest. (One pull
            # stays open: a timed-out wait_for(anext(...)) would close the generator.)
            pull = asyncio.ensure_future(anext(stream))
            while time.monotonic() < deadline and not set(seen) >= guaranteed | set(during):
                if set(seen) >= guaranteed:
                    deadline = min(deadline, time.monotonic() + 3)
                await asyncio.wait({pull}, timeout=max(0.0, deadline - time.monotonic()))
                if pull.done():
                    message = pull.result()
                    seen[message["key"], message["n"]] += 1
                    pull = asyncio.ensure_future(anext(stream))
            pull.cancel()  # ends the generator, which closes the consumer
            with contextlib.suppress(asyncio.CancelledError):
                await pull
    duplicates = sum(seen.values()) - len(seen)
    lost_during = [p for p in during if p not in seen]
    print(
        f"failover of the master of {len(on_victim)} of {len(keys)} keys took {failover_s:.1f} s; "
        f"{len(guaranteed & set(seen))} of {len(guaranteed)} replicated messages delivered, "
        f"{duplicates} delivered twice; during the kill {len(during)} publishes acknowledged "
        f"({len(lost_during)} of them lost with the master, unreplicated), {refused} refused"
    )
    assert guaranteed <= set(seen), f"lost: {sorted(guaranteed - set(seen))}"


async def test_verify_streams_and_dead_letters_commands_work_on_a_cluster(
    redis_cluster: RedisClusterHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    from abe_redis import DeadLetters
    from abe_redis._verify import run_verify
    from abe_redis.cli import main

    report = await run_verify(url=redis_cluster.url, count=200, keys=8, consumers=2, wait_s=20, environ={})
    assert report.ok, report.checks

    url = redis_cluster.url
    async with _backend(url) as backend:
        await backend.publish("keep", {"n": 1})
        await backend.publish("old", {"n": 1})
        assert await asyncio.to_thread(main, ["streams", "retire", "old", "--url", url]) == 0
        assert await asyncio.to_thread(main, ["streams", "list", "--url", url]) == 0
        out = capsys.readouterr().out
        assert f"{backend.stream_name('keep')}\n" in out and f"{backend.stream_name('old')} (retired)" in out
        assert await asyncio.to_thread(main, ["info", "--json", "--url", url]) == 0
        assert [s["name"] for s in json.loads(capsys.readouterr().out)["streams"]] == [
            backend.stream_name("keep")
        ]
        tail = ["tail", "keep", "--from", "0", "--count", "1", "--url", url]
        assert await asyncio.wait_for(asyncio.to_thread(main, tail), 10) == 0
        assert '"n": 1' in capsys.readouterr().out

        # A poison entry, dead-lettered by a consumer, then replayed by its user key.
        client: Any = backend.client
        await client.xadd(backend.stream_name("keep"), {"payload": b"{not json"})
        await backend.publish("keep", {"n": 2})
        stream = backend.consume(group="g")
        assert [dict(m) for m in await take(stream, 2)] == [{"n": 1}, {"n": 2}]
        await stream.aclose()
        letters = DeadLetters(backend)
        assert await letters.keys() == [backend.stream_name("keep")]
        assert await letters.count("keep") == 1
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["dlq", "keys", "--url", url]) == 0
        assert await asyncio.to_thread(main, ["dlq", "count", "keep", "--url", url]) == 0
        assert capsys.readouterr().out.split() == [backend.stream_name("keep"), "1", "1"]
        assert await letters.replay("keep") == 1
        assert await client.xlen(backend.stream_name("keep")) == 4


def _reshard(cluster: RedisClusterHandle, slot: int, target: RedisServer, pause_s: float) -> int:
    """Move ``slot`` to ``target`` the way redis-cli does, one key at a time, so that readers meet
    the slot half-moved (ASK, TRYAGAIN); returns how many keys moved."""
    import redis

    def node(server: RedisServer) -> redis.Redis:
        return redis.Redis(host=server.host, port=server.port, decode_responses=True)

    source = cluster.master_for(slot)
    with node(source) as src, node(target) as dst:
        source_id, target_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1):
            src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause_s)
    for master in cluster.masters:
        with node(master) as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    for _ in range(100):
        if cluster.master_for(slot) is target:
            break
        time.sleep(0.05)
    return moved


async def test_consumption_continues_while_a_partitions_slot_moves_to_another_master(
    redis_cluster: RedisClusterHandle,
) -> None:
    keys = [f"orders:{i}" for i in range(40)]
    async with _backend(redis_cluster.url) as publisher, _backend(redis_cluster.url) as consumer:
        for key in keys:
            await publisher.publish(key, {"key": key, "n": 0})
        partition = publisher._partitions.partition(publisher.stream_name(keys[0]))  # type: ignore[union-attr]
        slot = key_slot(partition.tag.encode())
        source = redis_cluster.master_for(slot)
        target = next(m for m in redis_cluster.masters if m is not source)
        in_partition = [k for k in keys if publisher.stream_name(k).endswith(f"{{{partition.tag}}}")]
        stream = consumer.consume(group="g")
        seen: Counter[tuple[str, int]] = Counter()
        for message in await take(stream, 20):
            seen[message["key"], message["n"]] += 1
        moving = asyncio.create_task(asyncio.to_thread(_reshard, redis_cluster, slot, target, 0.1))
        n = 1
        # (A timed-out wait_for(anext(...)) would close the generator: one pull stays open.)
        pulling = asyncio.ensure_future(anext(stream))
        while not moving.done():  # publishing and consuming go on while the slot moves
            for key in in_partition:
                await publisher.publish(key, {"key": key, "n": n})
            n += 1
            await asyncio.wait({pulling}, timeout=0.2)
            if pulling.done():
                message = pulling.result()
                seen[message["key"], message["n"]] += 1
                pulling = asyncio.ensure_future(anext(stream))
        moved = await moving
        message = await asyncio.wait_for(pulling, 10)
        seen[message["key"], message["n"]] += 1
        for key in keys:
            await publisher.publish(key, {"key": key, "n": n})
        expected = (
            {(k, 0) for k in keys}
            | {(k, i) for k in in_partition for i in range(1, n)}
            | {(k, n) for k in keys}
        )
        deadline = time.monotonic() + 20
        while set(seen) < expected and time.monotonic() < deadline:
            message = await asyncio.wait_for(anext(stream), deadline - time.monotonic())
            seen[message["key"], message["n"]] += 1
        await stream.aclose()
    print(
        f"moved slot {slot} ({moved} keys, {len(in_partition)} streams of the partition) from "
        f"{source.port} to {target.port}; {len(seen)} of {len(expected)} delivered, "
        f"{sum(seen.values()) - len(seen)} twice"
    )
    assert moved >= len(in_partition) and redis_cluster.master_for(slot) is target
    assert set(seen) == expected


async def test_the_consumer_runner_retries_dead_letters_and_drains_on_a_cluster(
    redis_cluster: RedisClusterHandle,
) -> None:
    from abe_redis import DeadLetters, RedisConsumer

    async with _backend(redis_cluster.url, max_deliveries=3) as backend:
        keys = [f"jobs:{i}" for i in range(12)]
        for key in keys:
            for n in range(5):
                await backend.publish(key, {"key": key, "n": n})
        handled: Counter[tuple[str, int]] = Counter()
        attempts: list[int] = []

        async def handler(message: ReceivedMessage) -> None:
            if message["key"] == "jobs:0" and message["n"] == 0:
                attempts.append(message.delivery_count)
                raise RuntimeError("always fails")
            handled[message["key"], message["n"]] += 1

        consumer = RedisConsumer(backend, group="g", concurrency=4, retry_delay_s=0.05, jitter=0)
        running = asyncio.create_task(consumer.run(handler))
        letters = DeadLetters(backend)
        for _ in range(400):  # up to 20 s
            if len(handled) == 59 and await letters.count("jobs:0") == 1:
                break
            await asyncio.sleep(0.05)
        await asyncio.wait_for(consumer.shutdown(), 10)
        await asyncio.wait_for(running, 10)
        [letter] = await letters.entries("jobs:0")
    assert len(handled) == 59 and max(handled.values()) == 1
    assert attempts == [1, 2, 3], "the delivery count is the attempt number, kept in the partition"
    assert letter.payload == {"key": "jobs:0", "n": 0} and letter.stream == backend.config.dead_letter_stream(
        backend.stream_name("jobs:0")
    )


async def test_a_consumer_whose_task_ended_without_closing_it_lets_its_message_go(
    redis_cluster: RedisClusterHandle,
) -> None:
    async with _one_job_two_peers(redis_cluster.url) as (_, stream, second):
        # The task handling it is cancelled; the generator stays referenced, never closed: the
        # message's lease must lapse (claim_idle_ms=1000) although the partitions' pumps live on.
        taken = await taken_by_a_task_then_cancelled(stream)
        other = second.consume(group="g")
        again = await asyncio.wait_for(anext(other), 15)
        assert (again.message_id, again.delivery_count) == (taken.message_id, 2)
        await other.aclose()


async def test_broadcast_consumers_each_get_every_message_of_every_partition(
    redis_cluster: RedisClusterHandle,
) -> None:
    url = redis_cluster.url
    async with _backend(url, mode="broadcast") as a, _backend(url, mode="broadcast") as b:
        async with _backend(url) as publisher:
            await publisher.publish("old", {"before": True})  # before the consumers started
        streams = [a.consume(), b.consume()]
        pulls = [asyncio.ensure_future(anext(s)) for s in streams]
        await asyncio.sleep(1.0)  # both are waiting on every partition
        async with _backend(url) as publisher:
            keys = [f"news:{i}" for i in range(20)]  # new streams, over most partitions
            for key in keys:
                await publisher.publish(key, {"key": key})
        for stream, pull in zip(streams, pulls, strict=True):
            got = [await asyncio.wait_for(pull, 10), *await take(stream, len(keys) - 1)]
            assert sorted(m["key"] for m in got) == sorted(keys)
            assert {m.stream for m in got} == {publisher.stream_name(k) for k in keys}
            assert all(m.group is None for m in got)
            await stream.aclose()


async def test_a_stream_pattern_finds_unregistered_streams_in_every_partition(
    redis_cluster: RedisClusterHandle,
) -> None:
    async with _backend(redis_cluster.url, stream_pattern="pat:*") as backend:
        client: Any = backend.client
        keys = [f"pat:{i}" for i in range(12)]
        for key in keys:  # written by something else: never registered
            await client.xadd(backend.stream_name(key), {"payload": b'{"k": "%s"}' % key.encode()})
        await client.xadd("pat:untagged", {"payload": b'{"k": "elsewhere"}'})  # not of this layout
        stream = backend.consume(group="g")
        got = await take(stream, len(keys))
        await stream.aclose()
        listed, _ = await backend.registry.listed()
    assert sorted(m["k"] for m in got) == sorted(keys)
    assert listed == {backend.stream_name(k) for k in keys}


async def test_a_message_returned_to_a_task_that_ended_normally_stays_leased(
    redis_cluster: RedisClusterHandle,
) -> None:
    async with _one_job_two_peers(redis_cluster.url) as (first, stream, second):
        # A driver running each anext() in a task of its own: the task returns, the message is
        # still being handled, and must not lapse to a peer (claim_idle_ms=1000).
        taken = await asyncio.create_task(anext(stream))
        other = second.consume(group="g")
        pulling = asyncio.ensure_future(anext(other))
        await asyncio.sleep(2.5)
        assert not pulling.done(), "a peer took a message still in hand"
        await first.ack(taken)
        pulling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pulling


async def test_a_user_confined_to_its_prefix_publishes_and_consumes_on_a_cluster(
    redis_cluster: RedisClusterHandle,
) -> None:
    import redis

    from abe_redis_testing.servers import create_acl_user

    for node in redis_cluster.nodes:  # ACL users are per node
        create_acl_user(node, "abe-app", "app:", password="app-secret")
    url = "redis+cluster://abe-app:app-secret@" + ",".join(f"{n.host}:{n.port}" for n in redis_cluster.nodes)
    try:
        async with _backend(url, key_prefix="app:abe:") as backend:
            for i in range(8):
                await backend.publish(f"app:orders:{i}", {"n": i})
            stream = backend.consume(group="app:g")
            got = await take(stream, 8)
            await backend.ack(got[-1])
            await stream.aclose()
        assert sorted(m["n"] for m in got) == list(range(8))
        written: set[str] = set()
        for master in redis_cluster.masters:
            with redis.Redis(host=master.host, port=master.port, decode_responses=True) as admin:
                written |= set(admin.scan_iter(count=1000))
        assert written and all(key.startswith("app:") for key in written), sorted(written)
    finally:
        for node in redis_cluster.nodes:
            with redis.Redis(host=node.host, port=node.port) as admin:
                admin.execute_command("ACL", "DELUSER", "abe-app")


async def test_a_message_queued_ahead_that_a_peer_took_during_a_stall_is_not_handed_out(
    redis_cluster: RedisClusterHandle,
) -> None:
    import redis

    async with _backend(redis_cluster.url) as publisher, _backend(redis_cluster.url) as backend:
        layout = publisher._partitions
        assert layout is not None
        candidates = [f"jobs:{i}" for i in range(20)]
        keys = [
            candidates[0],
            next(
                k
                for k in candidates
                if layout.partition(publisher.stream_name(k)).index
                != layout.partition(publisher.stream_name(candidates[0])).index
            ),
        ]
        for n, key in enumerate(keys, 1):
            await publisher.publish(key, {"job": n})
        reader = backend.group_reader("g")
        first = await asyncio.wait_for(reader.receive(), 10)
        ahead = keys[1] if first["job"] == 1 else keys[0]
        stream = publisher.stream_name(ahead)
        master = redis_cluster.master_for(stream)
        with redis.Redis(host=master.host, port=master.port, decode_responses=True) as peer:
            # The other partition's pump has read its job meanwhile: it waits, handed out by its
            # reader, until the caller asks for the next message.
            deadline = time.monotonic() + 10
            while not peer.xpending_range(stream, "g", "-", "+", 10):
                assert time.monotonic() < deadline, "the other job was never taken ahead of the caller"
                await asyncio.sleep(0.02)
            [[ahead_id, _]] = peer.xrange(stream)
            # The event loop stalls past claim_idle_ms (1000): nothing renews the leases, and a
            # consumer of another process takes the waiting job over, as its sweep would.
            time.sleep(1.5)  # noqa: ASYNC251 -- the stall is the point: the loop must not run
            assert peer.xclaim(stream, "g", "peer", 1000, [ahead_id], justid=True) == [ahead_id]
            await publisher.publish(ahead, {"job": 3})
            reader.done(first)
            after = await asyncio.wait_for(reader.receive(), 10)
            assert after["job"] == 3, "handed out a message a peer had taken over: handled twice"
            [owner] = peer.xpending_range(stream, "g", ahead_id, ahead_id, 1)
            assert owner["consumer"] == "peer", "the peer's message was taken back from it"
        await reader.aclose()


def _reads(masters: list[RedisServer]) -> int:
    import redis

    total = 0
    for node in masters:
        with redis.Redis(host=node.host, port=node.port) as client:
            total += int(client.info("commandstats").get("cmdstat_xreadgroup", {}).get("calls", 0))
    return total


async def test_a_busy_partition_does_not_hold_up_another_and_backlogs_are_read_in_large_batches(
    redis_cluster: RedisClusterHandle,
) -> None:
    async with _backend(redis_cluster.url) as backend:
        layout = backend._partitions
        assert layout is not None
        # One stream per partition, 16 partitions (prefetch 100, the default): the equal split
        # read six entries at a time; turns read about a quarter of the bound.
        keys: dict[int, str] = {}
        for i in range(2000):
            keys.setdefault(layout.partition(backend.stream_name(f"bulk:{i}")).index, f"bulk:{i}")
            if len(keys) == layout.count:
                break
        per_stream = 300
        for key in keys.values():
            for start in range(0, per_stream, 100):
                await backend.publish_many(key, [{"key": key, "n": n} for n in range(start, start + 100)])
        before = _reads(redis_cluster.masters)
        stream = backend.consume(group="g")
        got = await take(stream, per_stream * len(keys), wait_s=60)
        reads = _reads(redis_cluster.masters) - before
        await stream.aclose()
    by_key = Counter(m["key"] for m in got)
    assert set(by_key.values()) == {per_stream}
    # Fairness: every partition's stream shows up early, not after the others' backlogs.
    first = {m["key"] for m in got[: len(got) // 4]}
    assert first == set(keys.values()), f"held up: {sorted(set(keys.values()) - first)}"
    # Idle waits count too (none here: every partition has a backlog until the end).
    print(f"{len(got)} messages in {reads} XREADGROUPs: {len(got) / reads:.1f} per read")
    assert len(got) / reads >= 12
