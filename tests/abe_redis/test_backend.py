"""Publish/consume behaviour, once per target (fake, redis-server, valkey-server)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from abe.types import MessageQueueBackendProtocol

from abe_redis import InvalidKeyError, InvalidPayloadError, ReceivedMessage, RedisStreamsBackend
from abe_redis_testing import RedisBackendFactory

from .helpers import take


async def test_round_trip_is_exact(queue_backend: RedisStreamsBackend) -> None:
    payload = {
        "nested": {"list": [1, {"deep": [None, True, False]}], "empty": {}},
        "unicode": "ünïcødé ✓ 日本",
        "big": 2**70,
        "neg": -(2**65),
        "float": 3.141592653589793,
        "one_float": 1.0,
        "null": None,
    }
    await queue_backend.publish("round-trip", payload)
    stream = queue_backend.consume()
    try:
        [message] = await take(stream, 1)
    finally:
        await stream.aclose()
    assert message == payload
    assert type(message["one_float"]) is float and type(message["big"]) is int
    assert isinstance(message, ReceivedMessage)
    assert (message.stream, message.key, message.delivery_count) == ("round-trip", "round-trip", 1)
    assert isinstance(queue_backend, MessageQueueBackendProtocol)


async def test_invalid_publish_writes_nothing(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory()
    with pytest.raises(InvalidPayloadError, match=r"payload\['when'\]"):
        await backend.publish("k", {"when": {1, 2}})
    with pytest.raises(InvalidPayloadError):
        await backend.publish("k", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        await backend.publish("", {"a": 1})
    with pytest.raises(InvalidKeyError):
        await backend.publish(42, {"a": 1})  # type: ignore[arg-type]
    client: Any = queue_backend_factory.client()
    assert await client.exists("k", "") == 0
    assert await client.scard(backend.config.registry_key) == 0


async def test_message_published_before_consumer_starts_is_delivered(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    await queue_backend_factory().publish("early", {"n": 1})
    stream = queue_backend_factory().consume()
    try:
        assert await take(stream, 1) == [{"n": 1}]
    finally:
        await stream.aclose()


async def test_streams_created_after_consumer_start_are_discovered(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    consumer = queue_backend_factory().consume()
    publisher = queue_backend_factory()
    pending = asyncio.ensure_future(take(consumer, 3))
    await asyncio.sleep(0.3)  # the consumer is now blocked on an empty set of streams
    for key in ("brand-new:a", "brand-new:b", "another.one"):
        await publisher.publish(key, {"key": key})
    try:
        got = await pending
    finally:
        await consumer.aclose()
    assert sorted(m["key"] for m in got) == ["another.one", "brand-new:a", "brand-new:b"]


async def test_competing_consumers_get_each_message_exactly_once(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    publisher = queue_backend_factory()
    total = 300
    await asyncio.gather(*(publisher.publish(f"work:{i % 3}", {"i": i}) for i in range(total)))
    seen: Counter[int] = Counter()
    done = asyncio.Event()
    sentinel_seen = asyncio.Event()

    async def worker() -> None:
        stream = queue_backend_factory().consume(group="workers")
        try:
            async for message in stream:
                seen[message["i"]] += 1
                if sum(seen.values()) >= total:
                    done.set()
                if message["i"] == -1:
                    sentinel_seen.set()
        finally:
            await stream.aclose()

    tasks = [asyncio.create_task(worker()) for _ in range(3)]
    try:
        await asyncio.wait_for(done.wait(), 15)
        # Prove "no duplicates" positively: a sentinel after everything arrives exactly once too.
        await publisher.publish("work:0", {"i": -1})
        await asyncio.wait_for(sentinel_seen.wait(), 10)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert set(seen) == set(range(total)) | {-1}
    assert max(seen.values()) == 1


async def test_separate_groups_each_get_everything(queue_backend_factory: RedisBackendFactory) -> None:
    publisher = queue_backend_factory()
    for i in range(20):
        await publisher.publish("fan", {"i": i})
    billing = queue_backend_factory().consume(group="billing")
    audit = queue_backend_factory().consume(group="audit")
    try:
        got_billing = await take(billing, 20)
        got_audit = await take(audit, 20)
    finally:
        await billing.aclose()
        await audit.aclose()
    assert [m["i"] for m in got_billing] == list(range(20))
    assert [m["i"] for m in got_audit] == list(range(20))


async def test_order_is_kept_per_key(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory()
    for i in range(50):
        await backend.publish(f"ordered:{i % 2}", {"i": i, "key": i % 2})
    stream = backend.consume()
    try:
        got = await take(stream, 50)
    finally:
        await stream.aclose()
    for key in (0, 1):
        sequence = [m["i"] for m in got if m["key"] == key]
        assert sequence == sorted(sequence) and len(sequence) == 25


async def test_thousand_concurrent_publishes_on_a_pool_of_ten(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory(max_connections=10)
    await asyncio.gather(*(backend.publish("burst", {"i": i}) for i in range(1000)))
    client: Any = queue_backend_factory.client()
    assert await client.xlen("burst") == 1000
    entries = await client.xrange("burst")
    assert sorted(int(fields[b"payload"].split(b":")[1].rstrip(b"}")) for _, fields in entries) == list(
        range(1000)
    )


async def test_stream_maxlen_trims_approximately(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory(stream_maxlen=100)
    for i in range(1000):
        await backend.publish("capped", {"i": i})
    client: Any = queue_backend_factory.client()
    length = await client.xlen("capped")
    assert 100 <= length < 1000


async def test_explicit_stream_list_and_pattern_find_foreign_streams(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    client: Any = queue_backend_factory.client()
    # Written by "another program": not in our registry.
    await client.xadd("listed", {"payload": b'{"via": "list"}'})
    await client.xadd("ext:one", {"payload": b'{"via": "pattern"}'})
    await client.set("ext:not-a-stream", "x")
    backend = queue_backend_factory(streams=("listed",), stream_pattern="ext:*")
    stream = backend.consume()
    try:
        got = await take(stream, 2)
    finally:
        await stream.aclose()
    assert sorted(m["via"] for m in got) == ["list", "pattern"]


async def test_broadcast_mode_gives_every_consumer_every_new_message(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    publisher = queue_backend_factory()
    await publisher.publish("news", {"old": True})  # before the consumers started: not delivered
    first = queue_backend_factory(mode="broadcast").consume()
    second = queue_backend_factory(mode="broadcast").consume()
    got_first = asyncio.ensure_future(take(first, 3))
    got_second = asyncio.ensure_future(take(second, 3))
    await asyncio.sleep(0.3)
    for i in range(3):
        await publisher.publish("news", {"i": i})
    try:
        assert [m.get("i") for m in await got_first] == [0, 1, 2]
        assert [m.get("i") for m in await got_second] == [0, 1, 2]
    finally:
        await first.aclose()
        await second.aclose()
    client: Any = queue_backend_factory.client()
    assert await client.xinfo_groups("news") == []


async def test_closed_backend_refuses_to_consume(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory()
    await backend.aclose()
    await backend.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        backend.consume()


async def test_publish_many_writes_in_order_or_nothing(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    ids = await backend.publish_many("bulk", [{"n": n} for n in range(50)])
    as_numbers = [tuple(int(part) for part in entry_id.split("-")) for entry_id in ids]
    assert len(ids) == 50 and as_numbers == sorted(as_numbers)
    with pytest.raises(InvalidPayloadError, match=r"payloads\[2\]"):
        await backend.publish_many("bulk", [{"n": 1}, {"n": 2}, {"bad": float("nan")}])
    assert await client.xlen("bulk") == 50  # the invalid batch wrote nothing
    stream = backend.consume(group="g")
    try:
        assert [m["n"] for m in await take(stream, 50)] == list(range(50))
    finally:
        await stream.aclose()


@pytest.mark.abe_redis_targets("redis", "valkey")
async def test_concurrent_publishes_share_round_trips(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory()
    await backend.publish("coalesced", {"n": -1})  # registers the stream: later ones take one command
    publisher = backend._publisher
    assert publisher is not None
    before = publisher.round_trips
    await asyncio.gather(*(backend.publish("coalesced", {"n": n}) for n in range(256)))
    trips = publisher.round_trips - before
    assert trips < 256 / 4, trips  # batched, not one round trip per publish
    client: Any = queue_backend_factory.client()
    assert await client.xlen("coalesced") == 257
