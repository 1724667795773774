"""At-least-once delivery: acknowledgement timing, redelivery, dead letters, recovery."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from abe_redis import RedisStreamsBackend
from abe_redis._delivery import ACK_FLUSH_S
from abe_redis_testing import RedisBackendFactory
from abe_redis_testing.servers import RedisServer

from .helpers import take


async def _pending(client: Any, stream: str, group: str) -> int:
    summary = await client.xpending(stream, group)
    return int(summary["pending"])


async def test_message_is_acknowledged_only_after_the_next_is_requested(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    for n in (1, 2, 3):
        await backend.publish("acks", {"n": n})
    stream = backend.consume(group="g")
    try:
        [first] = await take(stream, 1)
        assert first["n"] == 1
        assert await _pending(client, "acks", "g") == 3  # all read in one batch, none acked
        [second] = await take(stream, 1)
        assert await _pending(client, "acks", "g") >= 2  # the one in the handler is never acked
        # Acks of handled messages are batched, but sent within ACK_FLUSH_S even while the
        # next handler is still busy.
        await asyncio.sleep(ACK_FLUSH_S * 3)
        assert await _pending(client, "acks", "g") == 2
        assert first.acked and not second.acked
        await backend.ack(second)
        assert await _pending(client, "acks", "g") == 1
        [third] = await take(stream, 1)
        assert third["n"] == 3
    finally:
        await stream.aclose()
    # Leaving the loop left the third in flight: unacknowledged, to be redelivered.
    assert await _pending(client, "acks", "g") == 1


async def test_consumer_cancelled_mid_handler_message_goes_to_another_consumer(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    publisher = queue_backend_factory()
    await publisher.publish("jobs", {"job": "crashy"})
    handler_started = asyncio.Event()

    async def doomed_worker() -> None:
        async for message in queue_backend_factory().consume(group="workers"):
            assert message["job"] == "crashy"
            handler_started.set()
            await asyncio.sleep(3600)  # a long handler; cancelled below

    task = asyncio.create_task(doomed_worker())
    await asyncio.wait_for(handler_started.wait(), 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    started = time.monotonic()
    rescuer = queue_backend_factory().consume(group="workers")
    try:
        [again] = await take(rescuer, 1)
    finally:
        await rescuer.aclose()
    waited = time.monotonic() - started
    assert again == {"job": "crashy"}
    assert again.delivery_count == 2
    # Claimed only once idle for claim_idle_ms (500 ms in the test settings), not before.
    assert waited >= 0.4


async def test_unyielded_batch_is_released_at_once_on_close(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory(claim_idle_ms=60_000, claim_interval_ms=100)
    for i in range(5):
        await backend.publish("batch", {"i": i})
    first = backend.consume(group="g")
    [message] = await take(first, 1)  # the batch of 5 is read; 1 yielded
    await first.aclose()
    # With a 60 s claim timeout only the released (never yielded) entries are claimable now.
    second = queue_backend_factory(claim_idle_ms=60_000, claim_interval_ms=100).consume(group="g")
    try:
        rest = await take(second, 4)
    finally:
        await second.aclose()
    assert sorted(m["i"] for m in rest) == [1, 2, 3, 4]
    assert message["i"] == 0


async def test_stable_consumer_name_replays_own_pending_on_restart(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    settings = {"consumer_name": "worker-1", "claim_idle_ms": 60_000}
    await queue_backend_factory().publish("resume", {"n": 1})
    first = queue_backend_factory(**settings).consume(group="g")
    [message] = await take(first, 1)
    await first.aclose()  # "crashed" mid-handler: the message stays pending for worker-1
    restarted = queue_backend_factory(**settings).consume(group="g")
    try:
        [again] = await take(restarted, 1, wait_s=5)  # long before the 60 s claim timeout
    finally:
        await restarted.aclose()
    assert again == message
    assert again.delivery_count == 2


async def test_poison_message_is_dead_lettered_never_yielded(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    await client.xadd("mixed", {"payload": b"not json at all"})
    await client.xadd("mixed", {"payload": b"[1, 2, 3]"})
    await client.xadd("mixed", {"something": b"else"})
    await backend.publish("mixed", {"ok": True})
    stream = backend.consume(group="g")
    try:
        got = await take(stream, 1)
        await backend.publish("mixed", {"ok": "sentinel"})
        got += await take(stream, 1)
    finally:
        await stream.aclose()
    assert got == [{"ok": True}, {"ok": "sentinel"}]
    dead = await client.xrange("mixed:dead-letter")
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(dead) == 3
    assert "not valid JSON" in reasons[0]
    assert "JSON list, not an object" in reasons[1]
    assert "no 'payload' field" in reasons[2]
    assert dead[0][1][b"field:payload"] == b"not json at all"  # original bytes kept
    assert await _pending(client, "mixed", "g") <= 1  # the poison entries were acknowledged


async def test_message_redelivered_too_often_goes_to_dead_letters(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    settings = {"max_deliveries": 2, "claim_idle_ms": 100, "claim_interval_ms": 50}
    publisher = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    await publisher.publish("flaky", {"job": 1})
    for attempt in (1, 2):
        stream = queue_backend_factory(**settings).consume(group="g")
        [message] = await take(stream, 1)
        assert message.delivery_count == attempt
        await stream.aclose()  # abandoned each time
    await publisher.publish("flaky", {"job": "sentinel"})
    await asyncio.sleep(0.3)  # the abandoned entry is now idle past claim_idle_ms
    last = queue_backend_factory(**settings).consume(group="g")
    try:
        # A consumer claims idle entries before reading new ones, so by the time the sentinel
        # arrives the third delivery of job 1 has been dead-lettered instead of yielded.
        got = await take(last, 1)
    finally:
        await last.aclose()
    assert got == [{"job": "sentinel"}]
    [(_, dead)] = await client.xrange("flaky:dead-letter")
    assert b"max_deliveries=2" in dead[b"reason"]
    assert dead[b"delivery_count"] == b"3"


@pytest.mark.abe_redis_targets("redis", "valkey")
async def test_flushall_under_a_blocked_consumer_recovers(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory(block_ms=2000)
    client: Any = queue_backend_factory.client()
    await backend.publish("survivor", {"n": 0})
    stream = backend.consume(group="g")
    try:
        await take(stream, 1)
        blocked = asyncio.ensure_future(take(stream, 1))
        await asyncio.sleep(0.3)  # now inside XREADGROUP BLOCK 2000
        await client.flushall()  # Redis 7.0 answers the blocked read with UNBLOCKED
        await asyncio.sleep(0.2)
        await backend.publish("survivor", {"n": 1})
        [after] = await blocked
    finally:
        await stream.aclose()
    assert after == {"n": 1}


async def test_deleted_stream_and_group_are_recreated(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    await backend.publish("fragile", {"n": 0})
    stream = backend.consume(group="g")
    try:
        await take(stream, 1)
        await client.xgroup_destroy("fragile", "g")  # NOGROUP on the next read
        await backend.publish("fragile", {"n": 1})
        # The group's record of what was done is gone with it, so at-least-once means the
        # stream's whole history is delivered again: n=0 a second time, then n=1.
        after_group = await take(stream, 2)
        await client.delete("fragile")
        await backend.publish("fragile", {"n": 2})
        [after_delete] = await take(stream, 1)
    finally:
        await stream.aclose()
    assert [m["n"] for m in after_group] == [0, 1]
    assert after_delete == {"n": 2}


async def test_automatic_consumer_names_are_forgotten_when_idle(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    await backend.publish("tidy", {"n": 1})
    stream = backend.consume(group="g")
    [message] = await take(stream, 1)
    await backend.ack(message)
    await stream.aclose()
    assert await client.xinfo_consumers("tidy", "g") == []


async def test_two_consumers_of_one_backend_do_not_share_a_pending_list(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory(consumer_name="fixed")
    for i in range(2):
        await backend.publish("shared", {"i": i})
    a = backend.consume(group="g")
    b = backend.consume(group="g")
    try:
        [from_a] = await take(a, 1)
        client: Any = queue_backend_factory.client()
        names = {
            c[b"name"] if b"name" in c else c["name"] for c in await client.xinfo_consumers("shared", "g")
        }
        assert len(names) == 1
        assert from_a.delivery_count == 1
        assert b.__class__ is a.__class__
    finally:
        await a.aclose()
        await b.aclose()


async def test_consumer_survives_server_restart(redis_server_handle: RedisServer) -> None:
    """Connection loss: the consumer backs off, reconnects, and delivers what was published after."""
    backend = RedisStreamsBackend.from_url(redis_server_handle.url, block_ms=100, discovery_interval_ms=100)
    await backend.publish("restart", {"n": 0})
    stream = backend.consume(group="g")
    try:
        await take(stream, 1)
        redis_server_handle.restart()  # no persistence: stream, group and registry are gone
        await backend.publish("restart", {"n": 1})
        [after] = await take(stream, 1, wait_s=15)
    finally:
        await stream.aclose()
        await backend.aclose()
    assert after == {"n": 1}


async def test_entry_read_but_lost_in_transit_is_taken_back_without_waiting_for_claim(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """An XREADGROUP whose reply was lost (and whose retry then succeeded) leaves entries in a
    *live* consumer's pending list; they must come back long before claim_idle_ms."""
    backend = queue_backend_factory(consumer_name="worker", claim_idle_ms=60_000, claim_interval_ms=100)
    client: Any = queue_backend_factory.client()
    await backend.publish("lossy", {"n": 0})
    stream = backend.consume(group="g")
    try:
        assert await take(stream, 1) == [{"n": 0}]
        await backend.publish("lossy", {"n": 1})
        # What a lost reply leaves behind: read for "worker" on the server, never seen by it.
        await client.xreadgroup("g", "worker", {"lossy": ">"}, count=10)
        [recovered] = await take(stream, 1, wait_s=5)
    finally:
        await stream.aclose()
    assert recovered == {"n": 1}
    # The lost read never reached a handler, so taking it back does not count as another
    # delivery: transport trouble alone must not push a message towards max_deliveries.
    assert recovered.delivery_count == 1
    assert int((await client.xpending_range("lossy", "g", "-", "+", 10))[0]["times_delivered"]) == 1
