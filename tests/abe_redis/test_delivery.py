"""At-least-once delivery: acknowledgement timing, redelivery, dead letters, recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from abe_redis import RedisStreamsBackend
from abe_redis._acks import ACK_FLUSH_S
from abe_redis_testing import RedisBackendFactory
from abe_redis_testing.servers import RedisServer

from .helpers import take, taken_by_a_task_then_cancelled


async def _pending(client: Any, stream: str, group: str) -> int:
    summary = await client.xpending(stream, group)
    return int(summary["pending"])


async def _rescued(factory: RedisBackendFactory) -> tuple[Any, float]:
    """The message a new consumer in group ``workers`` gets first, and how long it waited."""
    started = time.monotonic()
    rescuer = factory().consume(group="workers")
    try:
        [again] = await take(rescuer, 1)
    finally:
        await rescuer.aclose()
    return again, time.monotonic() - started


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

    again, waited = await _rescued(queue_backend_factory)
    assert again == {"job": "crashy"}
    assert again.delivery_count == 2
    # Ending the task closed its consumer, which released the message: no claim timeout to wait.
    assert waited < 0.4


async def test_consumer_whose_task_ended_without_closing_lets_its_leases_lapse(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """A consumer kept referenced after its task ended is dead, not healthy: its messages must
    become claimable after claim_idle_ms, not be held forever by the lease heartbeat."""
    publisher = queue_backend_factory()
    await publisher.publish("jobs", {"job": "stuck"})
    stream = queue_backend_factory().consume(group="workers")  # referenced: never garbage-collected
    await taken_by_a_task_then_cancelled(stream)
    try:
        again, waited = await _rescued(queue_backend_factory)
    finally:
        await stream.aclose()
    assert again == {"job": "stuck"}
    assert again.delivery_count == 2
    # Claimed once idle for claim_idle_ms (500 ms in the test settings), not before.
    assert waited >= 0.4


async def test_a_message_taken_by_a_task_of_its_own_stays_leased_while_in_hand(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """Each ``anext`` in a task of its own (a driver, ``create_task(anext(...))``): the task
    ends once it has handed the message on, but the message is still being handled, so a peer
    must not get it. (Lapsing on a finished task gave it to the peer, and both handled it.)"""
    publisher = queue_backend_factory()
    await publisher.publish("handoff", {"job": 1})
    holder = queue_backend_factory().consume(group="workers")
    peer = queue_backend_factory().consume(group="workers")
    try:
        taken = await asyncio.create_task(anext(holder))
        waiting = asyncio.ensure_future(anext(peer))
        # Three claim timeouts (claim_idle_ms is 500 ms in the test settings) in hand.
        done, _ = await asyncio.wait({waiting}, timeout=1.5)
        assert not done, f"a peer got the message in hand: {waiting.result()!r}"
        # Asking for the next one acknowledges message 1; whoever gets message 2, nobody may
        # get message 1 again.
        following = asyncio.ensure_future(anext(holder))
        await publisher.publish("handoff", {"job": 2})
        done, _ = await asyncio.wait({waiting, following}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert (taken["job"], taken.delivery_count) == (1, 1)
        assert [task.result()["job"] for task in done] == [2]
        following.cancel()
        waiting.cancel()
        await asyncio.gather(following, waiting, return_exceptions=True)
    finally:
        await holder.aclose()
        await peer.aclose()


async def test_consumer_whose_task_died_of_an_error_lets_its_leases_lapse(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """A worker killed by an exception keeps its generator alive through the traceback; it is
    dead, so its message goes to a peer after ``claim_idle_ms``."""
    publisher = queue_backend_factory()
    await publisher.publish("crash", {"job": "crashed"})
    stream = queue_backend_factory().consume(group="workers")

    async def worker() -> None:
        async for _ in stream:
            raise RuntimeError("handler crashed")

    task = asyncio.create_task(worker())
    await asyncio.gather(task, return_exceptions=True)
    try:
        again, _ = await _rescued(queue_backend_factory)
    finally:
        await stream.aclose()
    assert (again["job"], again.delivery_count) == ("crashed", 2)


async def test_unyielded_batch_is_released_at_once_on_close(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory(claim_idle_ms=60_000, claim_interval_ms=100)
    for i in range(5):
        await backend.publish("batch", {"i": i})
    first = backend.consume(group="g")
    [message] = await take(first, 1)  # the batch of 5 is read; 1 yielded
    await first.aclose()
    # With a 60 s claim timeout, only released entries can be claimable now: all five, the one
    # in hand included (closing cannot tell whether its handler finished).
    second = queue_backend_factory(claim_idle_ms=60_000, claim_interval_ms=100).consume(group="g")
    try:
        again = await take(second, 5)
    finally:
        await second.aclose()
    assert message["i"] == 0
    counts = {m["i"]: m.delivery_count for m in again}
    # Releasing counts no delivery: the four never handed out are on their first delivery.
    assert counts == {0: 2, 1: 1, 2: 1, 3: 1, 4: 1}


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


async def _consumer_names(client: Any, stream: str, group: str) -> list[str]:
    return sorted(
        (c.get(b"name") or c["name"]).decode()
        if isinstance(c.get(b"name") or c["name"], bytes)
        else c["name"]
        for c in await client.xinfo_consumers(stream, group)
    )


async def test_live_consumers_never_share_a_name(queue_backend_factory: RedisBackendFactory) -> None:
    """Consumers w, w-2, w-3 live; w-2 closes; the next one must not become a second w-3."""
    backend = queue_backend_factory(consumer_name="w", claim_idle_ms=60_000, batch_size=1)
    client: Any = queue_backend_factory.client()
    for i in range(4):
        await backend.publish("named", {"i": i})
    consumers = [backend.consume(group="g") for _ in range(3)]
    try:
        held = [(await take(c, 1))[0] for c in consumers]
        assert await _consumer_names(client, "named", "g") == ["w", "w-2", "w-3"]
        await consumers[1].aclose()  # w-2 leaves, releasing its message
        fourth = backend.consume(group="g")
        consumers.append(fourth)
        [got] = await take(fourth, 1)
        # It took the free name w-2 and the message w-2 released, never the one w-3 holds.
        owners = {
            p["message_id"]: p["consumer"] for p in await client.xpending_range("named", "g", "-", "+", 10)
        }
        assert b"w-2" in owners.values()
        assert got["i"] in {held[1]["i"], 3}
        assert got["i"] != held[2]["i"]
    finally:
        for c in consumers:
            await c.aclose()


async def test_second_process_with_the_same_configured_name_is_reported(
    queue_backend_factory: RedisBackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process's live consumer holds the name: this one says so loudly and takes w-2."""
    client: Any = queue_backend_factory.client()
    backend = queue_backend_factory(consumer_name="w")
    await backend.publish("dup", {"n": 1})
    # What another live process leaves in Redis: its name lock, held under its own token.
    await client.set(f"{backend.config.key_prefix}group:g:consumer:w", "otherhost:4242:abc:def", px=60_000)
    stream = backend.consume(group="g")
    try:
        with caplog.at_level("WARNING", logger="abe_redis"):
            await take(stream, 1)
    finally:
        await stream.aclose()
    assert "held by another live process" in caplog.text
    assert "otherhost:4242" in caplog.text
    assert await _consumer_names(client, "dup", "g") == ["w-2"]


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
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An XREADGROUP that ran on the server but whose reply was lost leaves entries in a *live*
    consumer's pending list; they must come back long before claim_idle_ms."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    import abe_redis._delivery as delivery

    real_dedicated = delivery.dedicated_client
    lost = asyncio.Event()
    armed = asyncio.Event()

    def lossy_dedicated(client: Any) -> Any:
        reader = real_dedicated(client)
        real_parse = reader.parse_response

        # Every XREADGROUP reply is parsed here, whether the read went alone or behind the
        # acknowledgements that ride in its round trip: lose the first one that carries entries.
        async def parse(connection: Any, command_name: Any, **options: Any) -> Any:
            reply = await real_parse(connection, command_name, **options)
            if command_name == "XREADGROUP" and reply and armed.is_set() and not lost.is_set():
                lost.set()
                await connection.disconnect()
                raise RedisConnectionError("connection reset while reading the reply")
            return reply

        reader.parse_response = parse
        return reader

    monkeypatch.setattr(delivery, "dedicated_client", lossy_dedicated)
    backend = queue_backend_factory(consumer_name="worker", claim_idle_ms=60_000, claim_interval_ms=100)
    client: Any = queue_backend_factory.client()
    await backend.publish("lossy", {"n": 0})
    stream = backend.consume(group="g")
    try:
        assert await take(stream, 1) == [{"n": 0}]
        armed.set()
        await backend.publish("lossy", {"n": 1})
        [recovered] = await take(stream, 1, wait_s=5)
        assert lost.is_set()
    finally:
        await stream.aclose()
    assert recovered == {"n": 1}
    # The lost read never reached a handler, so taking it back does not count as another
    # delivery: transport trouble alone must not push a message towards max_deliveries.
    assert recovered.delivery_count == 1
    assert int((await client.xpending_range("lossy", "g", "-", "+", 10))[0]["times_delivered"]) == 1


def test_acknowledgements_packed_by_hand_are_what_redis_py_would_send() -> None:
    """AckQueue.packed writes the XACKs of a read's round trip itself; byte for byte they must be
    the commands redis-py packs (non-ASCII names, several streams, ids of every length)."""
    from redis.asyncio.connection import Connection

    from abe_redis._acks import AckQueue
    from abe_redis._lease import LeaseTable
    from abe_redis._message import received

    leases = LeaseTable(None, group="grüppe", consumer="c", claim_idle_ms=1000, refresh_ms=300)
    acks = AckQueue(None, group="grüppe", leases=leases, batch_size=10)
    due = {
        "straße": [received({}, "straße", i, "grüppe", 1) for i in ("1-0", "1700000000000-12345")],
        "s2": [received({"n": 1}, "s2", "18446744073709551615-18446744073709551615", "grüppe", 2)],
    }
    connection = Connection()
    expected = b"".join(
        b"".join(connection.pack_command("XACK", stream, "grüppe", *(m.message_id for m in messages)))
        for stream, messages in due.items()
    )
    assert acks.packed(due, connection.encoder.encode) == expected


def _command_names(chunks: Any) -> list[str]:
    """The command names in a write of packed RESP commands (bytes, or a list of chunks)."""
    data = chunks if isinstance(chunks, bytes) else b"".join(bytes(c) for c in chunks)
    names: list[str] = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        count, pos = int(data[pos + 1 : end]), end + 2
        for index in range(count):
            end = data.index(b"\r\n", pos)
            size = int(data[pos + 1 : end])
            if index == 0:
                names.append(data[end + 2 : end + 2 + size].decode().upper())
            pos = end + 2 + size + 2
    return names


def _recording_taker(
    monkeypatch: pytest.MonkeyPatch, *, fail_first_ack_trip: bool = False
) -> list[list[str]]:
    """Make consumers' taker clients record the commands of each write to their connection (one
    round trip); optionally the first round trip carrying XACKs fails before it is sent (a reset
    connection)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    import abe_redis._delivery as delivery

    real_dedicated = delivery.dedicated_client
    trips: list[list[str]] = []

    def recording(client: Any) -> Any:
        taker = real_dedicated(client)
        pool = taker.connection_pool
        real_get = pool.get_connection

        async def get_connection(*args: Any, **kwargs: Any) -> Any:
            connection = await real_get(*args, **kwargs)
            if getattr(connection, "_recorded", False):
                return connection
            real_send = connection.send_packed_command

            async def send(command: Any, *args: Any, **kwargs: Any) -> Any:
                names = _command_names(command)
                if fail_first_ack_trip and "XACK" in names and not any("XACK" in t for t in trips):
                    trips.append(["failed", *names])
                    raise RedisConnectionError("simulated: connection reset before sending")
                trips.append(names)
                return await real_send(command, *args, **kwargs)

            connection.send_packed_command = send
            connection._recorded = True
            return connection

        pool.get_connection = get_connection
        return taker

    monkeypatch.setattr(delivery, "dedicated_client", recording)
    return trips


async def _numbered(
    factory: RedisBackendFactory, key: str, count: int, *, batch_size: int
) -> tuple[Any, AsyncGenerator[Any]]:
    """A client to inspect ``key``, and a consumer in group ``g`` reading ``batch_size`` at a
    time, of a stream holding ``{"n": 0}`` … ``{"n": count - 1}``."""
    backend = factory(batch_size=batch_size)
    for n in range(count):
        await backend.publish(key, {"n": n})
    return factory.client(), backend.consume(group="g")


async def test_a_handled_batch_is_acknowledged_in_the_round_trip_of_the_next_read(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = _recording_taker(monkeypatch)
    client, stream = await _numbered(queue_backend_factory, "ride", 30, batch_size=10)
    try:
        got = await take(stream, 25)
        assert [m["n"] for m in got] == list(range(25))
        # Two full batches were handled and acknowledged, each with the read that followed it;
        # of the third, the one in the handler and those still buffered are pending.
        ack_trips = [t for t in trips if "XACK" in t]
        assert len(ack_trips) >= 2 and all(t[-1] == "XREADGROUP" for t in ack_trips)
        assert await _pending(client, "ride", "g") <= 10
        assert not got[-1].acked and all(m.acked for m in got[:20])
    finally:
        await stream.aclose()


async def test_acknowledgements_of_a_read_round_trip_that_failed_are_sent_again(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = _recording_taker(monkeypatch, fail_first_ack_trip=True)
    client, stream = await _numbered(queue_backend_factory, "retry-acks", 12, batch_size=5)
    try:
        got = await take(stream, 12)
        assert [m["n"] for m in got] == list(range(12))  # each once, in order, none lost
        assert next(t for t in trips if "XACK" in t)[0] == "failed"
        # The handled ones are acknowledged after all (the retry or the background flush).
        await asyncio.sleep(ACK_FLUSH_S * 3)  # the background flush sends whatever is left
        assert await _pending(client, "retry-acks", "g") == 1  # only the one in the handler
        assert all(m.acked for m in got[:11])
    finally:
        await stream.aclose()


async def test_a_close_keeps_trying_to_give_back_its_counts_over_a_lossy_link(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate seed 868: on a lossy link a close's release (a verification, then the release)
    failed three times in 0.15 s and was abandoned, so entries never handed out kept the count of
    their take; the peer that claimed one after claim_idle_ms counted again, and it was
    dead-lettered at count 5 after three handler deliveries. The release is tried for half the
    close's time."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from abe_redis._lease import LeaseTable

    publisher = queue_backend_factory()
    for n in range(3):
        await publisher.publish("lossy-close", {"n": n})
    consumer = queue_backend_factory(batch_size=3, claim_idle_ms=1000).consume(group="g")
    await take(consumer, 1)  # the other two wait in the buffer, never handed out
    release = LeaseTable.release
    failed: list[str] = []

    async def lossy(self: LeaseTable, entries: Any = None) -> None:
        if len(failed) < 4:
            failed.append("lost")
            raise RedisConnectionError("simulated: reply lost")
        await release(self, entries)

    monkeypatch.setattr(LeaseTable, "release", lossy)
    await consumer.aclose()
    assert failed == ["lost"] * 4
    client: Any = queue_backend_factory.client()
    pending = await client.xpending_range("lossy-close", "g", min="-", max="+", count=10)
    # Handed out once (the first), never (the two buffered ones): claimable at once, as counted.
    assert sorted(p["times_delivered"] for p in pending) == [0, 0, 1]
    assert all(p["time_since_delivered"] >= 1000 for p in pending)
