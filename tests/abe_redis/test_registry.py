"""The stream registry: register after success, skip non-streams, notify, retire."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import Any

import pytest

from abe_redis import InvalidKeyError, RedisStreamsBackend
from abe_redis._registry import StreamSet
from abe_redis_testing import RedisBackendFactory
from abe_redis_testing.servers import RedisServer

from .helpers import take


async def test_a_failed_publish_registers_nothing_and_a_non_stream_member_stops_no_one(
    queue_backend_factory: RedisBackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    registry_key = backend.config.registry_key
    await client.set("plain", "a string, not a stream")
    with pytest.raises(InvalidKeyError, match="'plain' holds another Redis type"):
        await backend.publish("plain", {"n": 0})
    assert not await client.sismember(registry_key, "plain")
    # Someone (an older version, a person) put it there anyway.
    await client.sadd(registry_key, "plain", "also-a-hash")
    await client.hset("also-a-hash", "f", "v")
    await backend.publish("good", {"n": 1})
    consumer_backend = queue_backend_factory()
    consumers = [consumer_backend.consume(group=g) for g in ("g1", "g2")]
    try:
        with caplog.at_level(logging.WARNING, logger="abe_redis"):
            got = [await take(c, 1) for c in consumers]
    finally:
        for c in consumers:
            await c.aclose()
    assert got == [[{"n": 1}], [{"n": 1}]]
    assert "skipping 'plain'" in caplog.text
    assert "skipping 'also-a-hash'" in caplog.text
    assert caplog.text.count("skipping 'plain'") == 1  # one warning per key and backend
    assert await client.type("plain") == b"string"  # the consumers left it alone


async def test_retired_stream_is_dropped_by_running_consumers(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory()
    await backend.publish("old", {"n": 0})
    await backend.publish("new", {"n": 0})
    stream = backend.consume(group="g")
    try:
        assert sorted(m.stream for m in await take(stream, 2)) == ["new", "old"]
        assert await backend.registry.retire("old")
        await asyncio.sleep(backend.config.discovery_interval_ms / 1000 * 3)
        await backend.publish("old", {"n": 1})  # still written, but nobody reads it
        await backend.publish("new", {"n": 1})
        [after] = await take(stream, 1)
        assert after.stream == "new"
        assert await backend.registry.unretire("old")
        [back] = await take(stream, 1)
    finally:
        await stream.aclose()
    assert (back.stream, back["n"]) == ("old", 1)


@pytest.mark.abe_redis_targets("redis", "valkey")
async def test_new_stream_reaches_a_waiting_consumer_at_once_on_defaults(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """Defaults: block_ms=1000, discovery_interval_ms=1000. The notification read inside the
    blocking wait must bring a brand-new stream's first message in well under 250 ms."""
    url = queue_backend_factory.url
    assert url is not None
    consumer_backend = RedisStreamsBackend.from_url(url)
    publisher = RedisStreamsBackend.from_url(url)
    latencies: list[float] = []
    stream = consumer_backend.consume(group="g")
    try:
        await publisher.publish("warm-up", {"n": 0})
        await take(stream, 1, wait_s=5)
        for trial in range(5):
            await asyncio.sleep(0.3)  # the consumer is now blocked in its wait
            started = time.monotonic()
            await publisher.publish(f"brand-new-{trial}", {"n": trial})
            [message] = await take(stream, 1, wait_s=5)
            latencies.append(time.monotonic() - started)
            assert message["n"] == trial
    finally:
        await stream.aclose()
        await consumer_backend.aclose()
        await publisher.aclose()
    print(f"brand-new stream to a waiting consumer: median {statistics.median(latencies) * 1000:.0f} ms")
    assert statistics.median(latencies) <= 0.25, latencies
    assert max(latencies) < 1.0, latencies


async def test_a_registry_lost_after_a_consumer_read_it_is_put_back_for_consumers_starting_later(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """Simulate seed 366: a consumer that knew a stream never noticed the registry was flushed,
    because the version counter, counted again from scratch, came back to the value it had
    cached; the stream stayed unregistered and a group that had not met it never read it."""
    publisher = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    registry_key = publisher.config.registry_key
    await publisher.publish("s1", {"n": 0})  # registers s1: one change of the version
    reader = queue_backend_factory()
    known = StreamSet(reader.registry, reader.config)
    assert await known.refresh() == ["s1"]
    await client.flushall()  # a restart without persistence
    # Another group's consumer recreates its group with MKSTREAM, so the publisher's
    # one-command path (XADD NOMKSTREAM) finds the stream and registers nothing.
    await client.xgroup_create("s1", "other", id="0", mkstream=True)
    await publisher.publish("s0", {"n": 0})  # one change of the version, as before the flush
    for n in range(1, 4):
        await publisher.publish("s1", {"n": n})
    assert not await client.sismember(registry_key, "s1")
    assert await known.refresh() == ["s0"]
    assert await client.sismember(registry_key, "s1")  # put back by the consumer that knew it
    later = queue_backend_factory().consume(group="g0")
    try:
        got = await take(later, 4)
    finally:
        await later.aclose()
    assert sorted(m.stream + str(m["n"]) for m in got) == ["s00", "s11", "s12", "s13"]


async def test_a_stream_a_consumer_recreates_after_a_flush_is_registered_again(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """Simulate seed 818: a consumer listed s0, the server restarted without persistence before
    it created its group, and its ``XGROUP CREATE ... MKSTREAM`` recreated s0 empty. The
    publisher's one-command path (``XADD NOMKSTREAM``) then found the stream and registered
    nothing, so a consumer starting later never read s0."""
    publisher = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    await publisher.publish("s0", {"n": 0})  # registered; the publisher remembers it is
    await client.flushall()  # the restart
    # The stale listing, played by a configured name: the consumer knows s0 though the
    # registry does not, and creates its group on the missing stream.
    knowing = queue_backend_factory(streams=("s0",)).consume(group="g1")
    try:
        taking = asyncio.ensure_future(take(knowing, 1))
        while not await client.exists("s0"):  # until its group (and so the stream) exists
            assert not taking.done()
            await asyncio.sleep(0.01)
        await publisher.publish("s0", {"n": 1})  # XADD NOMKSTREAM: the stream is there
        assert [m["n"] for m in await taking] == [1]
    finally:
        await knowing.aclose()
    assert await client.sismember(publisher.config.registry_key, "s0")
    later = queue_backend_factory().consume(group="g2")
    try:
        assert [m["n"] for m in await take(later, 1)] == [1]
    finally:
        await later.aclose()


async def test_registration_failure_after_a_written_message_does_not_raise(
    redis_server_handle: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The XADD succeeded: raising now would make the caller publish the message twice."""
    backend = RedisStreamsBackend.from_url(redis_server_handle.url)
    client: Any = backend.client
    await client.set(backend.config.registry_key, "not a set")
    try:
        with caplog.at_level(logging.WARNING, logger="abe_redis"):
            await backend.publish("orders", {"n": 1})
            await backend.publish("orders", {"n": 2})
        assert await client.xlen("orders") == 2
        assert caplog.text.count("could not add it to the stream registry") == 1
    finally:
        await backend.aclose()


async def test_a_backend_key_of_the_wrong_type_is_a_clear_error_not_a_retry_loop(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    from abe_redis import RedisSetupError

    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    await client.set(backend.config.keys.consumers("g"), "not a sorted set")
    stream = backend.consume(group="g")
    try:
        with pytest.raises(RedisSetupError, match="holds the wrong type"):
            await asyncio.wait_for(anext(stream), 10)
    finally:
        await stream.aclose()


async def test_a_registration_that_failed_after_a_stream_was_recreated_is_tried_again(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate seed 710: after a restart without persistence a publish found its stream gone
    (XADD NOMKSTREAM), wrote it again, and lost the registration to a partition; the stream was
    still remembered as registered, so every later publish took the one-command path, found
    the stream, and registered nothing: no consumer ever read it."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    publisher = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    registry = publisher.registry
    await publisher.publish("again", {"n": 0})
    await client.flushall()  # a restart without persistence
    register = registry.register
    failed: list[str] = []

    async def cut_off_once(stream: str) -> None:
        if not failed:
            failed.append(stream)
            raise RedisConnectionError("simulated: partition")
        await register(stream)

    monkeypatch.setattr(registry, "register", cut_off_once)
    await publisher.publish("again", {"n": 1})  # written; its registration fails (logged)
    assert failed == ["again"]
    assert not await client.sismember(publisher.config.registry_key, "again")
    await publisher.publish("again", {"n": 2})
    assert await client.sismember(publisher.config.registry_key, "again")
