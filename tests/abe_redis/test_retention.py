"""Retention: trimming never removes an entry some group has not acknowledged; the hard cap's
unread losses are counted and logged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from abe_redis import InMemoryMetrics, ReceivedMessage, RedisConsumer
from abe_redis._retention import Retention
from abe_redis_testing import RedisBackendFactory


async def _read(client: Any, stream: str, group: str, count: int) -> list[str]:
    reply = await client.xreadgroup(group, "c", {stream: ">"}, count=count)
    return [entry_id.decode() for entry_id, _ in reply[0][1]] if reply else []


async def _ids(client: Any, stream: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await client.xrange(stream)]


async def test_trim_removes_only_what_every_group_acknowledged(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    client: Any = queue_backend_factory.client()
    ids = [(await client.xadd("s", {"payload": f'{{"n": {n}}}'})).decode() for n in range(10)]
    await client.xgroup_create("s", "ahead", id="0")
    await client.xgroup_create("s", "behind", id="0")
    assert await _read(client, "s", "ahead", 10) == ids
    await client.xack("s", "ahead", *ids[:6], ids[7])  # 6 is still pending: a hole
    assert await _read(client, "s", "behind", 3) == ids[:3]
    await client.xack("s", "behind", *ids[:3])

    metrics = InMemoryMetrics()
    retention = Retention(client, queue_backend_factory.config(), metrics=metrics)
    result = await retention.trim("s")
    # "behind" acknowledged 0-2 and never read the rest; "ahead" still holds 6.
    assert result.trimmed == 3
    assert await _ids(client, "s") == ids[3:]
    assert metrics.total("trimmed", stream="s") == 3
    assert metrics.gauge("pending", stream="s", group="ahead") == 3  # 6, 8, 9
    assert metrics.gauge("pending", stream="s", group="behind") == 0

    # "behind" catches up completely; "ahead"'s lowest pending entry (6) is now the limit.
    assert await _read(client, "s", "behind", 10) == ids[3:]
    await client.xack("s", "behind", *ids[3:])
    assert (await retention.trim("s")).trimmed == 3
    assert await _ids(client, "s") == ids[6:]
    # Every entry some group has not acknowledged is still there.
    await client.xack("s", "ahead", ids[6], ids[8], ids[9])
    await retention.trim("s")
    assert await _ids(client, "s") == []
    assert retention.server_acked_trim in (True, False)  # detected once, remembered


async def test_a_stream_no_group_has_read_is_never_trimmed(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    client: Any = queue_backend_factory.client()
    for n in range(5):
        await client.xadd("fresh", {"payload": f'{{"n": {n}}}'})
    retention = Retention(client, queue_backend_factory.config())
    assert (await retention.trim("fresh")).trimmed == 0
    await client.xgroup_create("fresh", "g", id="0")
    assert (await retention.trim("fresh")).trimmed == 0
    assert await client.xlen("fresh") == 5


@pytest.mark.abe_redis_targets("redis", "valkey")
async def test_hard_cap_counts_and_logs_every_unread_entry_it_drops(
    queue_backend_factory: RedisBackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client: Any = queue_backend_factory.client()
    await client.xgroup_create("capped", "idle", id="0", mkstream=True)
    await client.xgroup_create("capped", "busy", id="0")
    async with client.pipeline(transaction=False) as pipe:
        for n in range(1000):
            pipe.xadd("capped", {"payload": f'{{"n": {n}}}'})
        await pipe.execute()
    read = await _read(client, "capped", "busy", 300)
    await client.xack("capped", "busy", *read)

    metrics = InMemoryMetrics()
    retention = Retention(client, queue_backend_factory.config(), metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="abe_redis"):
        result = await retention.cap("capped", 100)
    assert result.trimmed == 900
    assert result.unread == {"idle": 900, "busy": 600}
    assert await client.xlen("capped") == 100
    assert metrics.total("trimmed_unread", stream="capped", group="idle") == 900
    assert metrics.total("trimmed_unread", stream="capped", group="busy") == 600
    warnings = [r for r in caplog.records if "had not read" in r.getMessage()]
    assert {(r.group, r.unread_trimmed) for r in warnings} == {("idle", 900), ("busy", 600)}  # type: ignore[attr-defined]
    # A second cap after the groups read what is left drops nothing unread.
    assert (await retention.cap("capped", 100)).unread == {}


async def test_a_running_consumer_trims_what_it_acknowledged(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory(retention_interval_ms=100)
    for n in range(20):
        await backend.publish("r", {"n": n})
    handled: list[int] = []

    async def handler(message: ReceivedMessage) -> None:
        handled.append(message["n"])

    consumer = RedisConsumer(backend, group="g")
    task = asyncio.create_task(consumer.run(handler))
    client: Any = queue_backend_factory.client()
    for _ in range(200):  # up to 10 s for the trimming pass that follows the acks
        if not await client.xlen("r"):
            break
        await asyncio.sleep(0.05)
    await consumer.shutdown()
    await task
    assert sorted(handled) == list(range(20))
    assert await client.xlen("r") == 0


async def test_publishing_with_a_hard_cap_counts_what_it_drops_unread(
    queue_backend_factory: RedisBackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's repro: 1,000 publishes with REDIS_STREAM_MAXLEN=100 and a group that reads
    nothing. The stream stays near the cap, and every dropped entry is counted and logged."""
    backend = queue_backend_factory(stream_maxlen=100)
    metrics = InMemoryMetrics()
    backend.metrics = metrics
    client: Any = queue_backend_factory.client()
    await client.xgroup_create("orders", "billing", id="0", mkstream=True)
    with caplog.at_level(logging.WARNING, logger="abe_redis"):
        for n in range(1000):
            await backend.publish("orders", {"n": n})
    length = await client.xlen("orders")
    assert 100 <= length <= 110
    dropped = 1000 - length
    assert metrics.total("published", stream="orders") == 1000
    assert metrics.total("trimmed", stream="orders") == dropped
    assert metrics.total("trimmed_unread", stream="orders", group="billing") == dropped
    logged = sum(r.unread_trimmed for r in caplog.records if hasattr(r, "unread_trimmed"))
    assert logged == dropped


async def test_a_pass_reads_streams_in_pipelined_chunks_and_skips_what_cannot_be_trimmed(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    client: Any = queue_backend_factory.client()
    streams = [f"many:{n}" for n in range(250)]
    for stream in streams:
        entry_id = await client.xadd(stream, {"payload": "{}"})
        await client.xgroup_create(stream, "g", id="0")
        await client.xreadgroup("g", "c", {stream: ">"})
        await client.xack(stream, "g", entry_id)
    await client.set("many:not-a-stream", "x")
    retention = Retention(client, queue_backend_factory.config())
    trimmed, unread = await retention.pass_over([*streams, "many:not-a-stream", "many:missing"])
    assert (trimmed, unread) == (250, 0)
    assert all([await client.xlen(stream) == 0 for stream in streams])
    assert await retention.pass_over(streams) == (0, 0)  # nothing new: no XTRIM sent
