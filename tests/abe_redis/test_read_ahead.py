"""Reading ahead: while a backlog lasts, the next XREADGROUP goes out before the buffer runs dry,
within the prefetch bound; what it brings is the consumer's (leased) the moment it answers, so a
close, a cancellation or a lost reply meanwhile loses nothing and hands nothing out twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import pytest

from abe_redis import RedisStreamsBackend
from abe_redis._delivery import GroupReader
from abe_redis_testing import RedisBackendFactory

from .helpers import take


@dataclass
class Read:
    """One XREADGROUP the taker sent, and the reader's state as it went out."""

    count: int
    blocking: bool
    buffered: int
    """Entries buffered or brought by an earlier read and not yet buffered."""
    unacked: int
    """Entries the reader held, handled ones whose XACK was not sent yet or goes in this write
    left out."""


def _commands(chunks: Any) -> list[list[bytes]]:
    """The commands in a write of packed RESP (bytes, or a list of chunks), as argument lists."""
    data = chunks if isinstance(chunks, bytes) else b"".join(bytes(c) for c in chunks)
    commands: list[list[bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        count, pos = int(data[pos + 1 : end]), end + 2
        args = []
        for _ in range(count):
            end = data.index(b"\r\n", pos)
            size = int(data[pos + 1 : end])
            args.append(data[end + 2 : end + 2 + size])
            pos = end + 2 + size + 2
        commands.append(args)
    return commands


class Recorder:
    """Makes consumers' taker clients record each XREADGROUP with the state of ``reader``; can
    lose the reply of the first read sent while entries were still buffered (a read ahead)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, lose_first_ahead: bool = False) -> None:
        import abe_redis._delivery as delivery

        self.reads: list[Read] = []
        self.reader: GroupReader | None = None
        self.lost = False
        self._lose = lose_first_ahead
        real_dedicated = delivery.dedicated_client

        def recording(client: Any) -> Any:
            taker = real_dedicated(client)
            pool = taker.connection_pool
            real_get = pool.get_connection
            real_parse = taker.parse_response
            losing: list[bool] = []

            async def get_connection(*args: Any, **kwargs: Any) -> Any:
                connection = await real_get(*args, **kwargs)
                if getattr(connection, "_recorded", False):
                    return connection
                real_send = connection.send_packed_command

                async def send(command: Any, *args: Any, **kwargs: Any) -> Any:
                    written = _commands(command)
                    acked = sum(len(w) - 3 for w in written if w[0].upper() == b"XACK")
                    for words in written:
                        if words[0].upper() == b"XREADGROUP":
                            self._record(words, acked)
                            ahead = self.reads[-1].buffered > 0
                            losing.append(self._lose and ahead and not self.lost)
                    return await real_send(command, *args, **kwargs)

                connection.send_packed_command = send
                connection._recorded = True
                return connection

            async def parse(connection: Any, command_name: Any, **options: Any) -> Any:
                from redis.exceptions import ConnectionError as RedisConnectionError

                reply = await real_parse(connection, command_name, **options)
                if command_name == "XREADGROUP" and losing and losing.pop(0):
                    self.lost = True
                    await connection.disconnect()
                    raise RedisConnectionError("connection reset while reading the reply")
                return reply

            pool.get_connection = get_connection
            taker.parse_response = parse
            return taker

        monkeypatch.setattr(delivery, "dedicated_client", recording)

    def _record(self, words: list[bytes], acked: int) -> None:
        reader = self.reader
        assert reader is not None
        upper = [w.upper() for w in words]
        count = int(words[upper.index(b"COUNT") + 1])
        leases, acks = reader._leases, reader._acks
        assert leases is not None and acks is not None
        self.reads.append(
            Read(
                count=count,
                blocking=b"BLOCK" in upper,
                buffered=len(reader._buffer) + len(reader._arrived),
                unacked=len(leases) - len(acks) - acked,
            )
        )


async def _backlog(
    factory: RedisBackendFactory, key: str, count: int, **overrides: Any
) -> RedisStreamsBackend:
    backend = factory(**overrides)
    client: Any = factory.client()
    await backend.publish(key, {"n": 0})  # registers the stream
    async with client.pipeline(transaction=False) as pipe:
        for n in range(1, count):
            pipe.xadd(key, {"payload": b'{"n": %d}' % n})
        await pipe.execute()
    return backend


def _consumer(backend: RedisStreamsBackend, recorder: Recorder) -> AsyncGenerator[Any]:
    reader = backend.group_reader("g")
    assert isinstance(reader, GroupReader)
    recorder.reader = reader
    return reader.messages()


async def test_reads_ahead_within_the_prefetch_bound(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(monkeypatch)
    # Sweeps and discovery are due rarely, so that most reads may go ahead.
    backend = await _backlog(
        queue_backend_factory,
        "ahead",
        300,
        batch_size=20,
        claim_interval_ms=60_000,
        discovery_interval_ms=60_000,
    )
    stream = _consumer(backend, recorder)
    try:
        got = await take(stream, 300)
    finally:
        await stream.aclose()
    assert [m["n"] for m in got] == list(range(300))
    assert all(m.delivery_count == 1 for m in got)
    # A read of one stream blocks unless it goes ahead: a backlog answers at once, and an idle
    # consumer must not send more than its blocking reads.
    ahead = [r for r in recorder.reads if not r.blocking]
    assert len(ahead) >= len(recorder.reads) // 2, recorder.reads
    # Some went out while the caller still had messages to handle (others as the previous read
    # ahead was collected, before its entries were decoded).
    assert any(r.buffered for r in ahead), recorder.reads
    for read in recorder.reads:
        # What it asks for fits in the room left by what the consumer holds (buffered, brought
        # by the previous read, in hand): together they never exceed the prefetch (20).
        assert read.unacked + read.count <= 20, read
        assert read.buffered + read.count <= 20, read


async def test_no_read_ahead_without_a_backlog(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer of a trickle (each read brings less than it asked for) reads only when its
    buffer is empty, and waiting it sends only its blocking reads: no added commands."""
    recorder = Recorder(monkeypatch)
    backend = queue_backend_factory(batch_size=20)
    stream = _consumer(backend, recorder)
    try:
        pulling = asyncio.ensure_future(take(stream, 30))
        for n in range(30):
            # Three at a time: every read brings fewer than its COUNT.
            await backend.publish("trickle", {"n": n})
            if n % 3 == 2:
                await asyncio.sleep(0.05)
        got = await pulling
        assert [m["n"] for m in got] == list(range(30))
        idle_from = len(recorder.reads)
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.5)  # idle: block_ms is 100 ms in the test settings
        idle = recorder.reads[idle_from:]
        assert not waiting.done()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    finally:
        await stream.aclose()
    assert not any(r.buffered for r in recorder.reads), recorder.reads
    assert idle and all(r.blocking for r in idle), idle


async def test_a_backlog_read_ahead_ends_with_the_backlog(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the backlog is drained, at most one read ahead finds less than it asked for; then the
    consumer waits with blocking reads only."""
    recorder = Recorder(monkeypatch)
    backend = await _backlog(
        queue_backend_factory,
        "drain",
        100,
        batch_size=20,
        claim_interval_ms=60_000,
        discovery_interval_ms=60_000,
    )
    stream = _consumer(backend, recorder)
    try:
        got = await take(stream, 100)
        drained_at = len(recorder.reads)
        pulling = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.5)
        assert not pulling.done()
        pulling.cancel()
        await asyncio.gather(pulling, return_exceptions=True)
    finally:
        await stream.aclose()
    assert [m["n"] for m in got] == list(range(100))
    assert any(r.buffered for r in recorder.reads[:drained_at])
    after = recorder.reads[drained_at:]
    assert sum(not r.blocking for r in after) <= 1, after
    assert sum(r.blocking for r in after) >= 2, after


@pytest.mark.parametrize("leaving", ["aclose", "cancel"])
async def test_leaving_with_a_read_ahead_in_flight_loses_nothing_and_hands_nothing_twice(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch, leaving: str
) -> None:
    """The caller leaves (closes the generator, or its task is cancelled) right after a message
    whose hand-out sent a read ahead: what that read brings is released with the buffer, never
    counted as a delivery, and a peer gets every message not handled, each once."""
    recorder = Recorder(monkeypatch)
    backend = await _backlog(
        queue_backend_factory,
        "leave",
        60,
        batch_size=10,
        claim_interval_ms=60_000,
        discovery_interval_ms=60_000,
    )
    stream = _consumer(backend, recorder)
    reader = recorder.reader
    assert reader is not None
    handled: list[Any] = []
    in_flight = asyncio.Event()

    async def worker() -> None:
        async for message in stream:
            handled.append(message)
            # Sent and not yet collected: in flight, or answered and its entries leased but not
            # buffered (a fake answers at once).
            if reader._ahead is not None:
                in_flight.set()
                await asyncio.sleep(3600)  # the handler of the message in hand; the caller leaves

    task = asyncio.create_task(worker())
    await asyncio.wait_for(in_flight.wait(), 10)
    if leaving == "aclose":
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stream.aclose()
    else:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        del task
        await stream.aclose()  # what the generator's finalizer does once it is collected
    assert reader._ahead is None and not reader._arrived

    peer = queue_backend_factory().consume(group="g")
    try:
        rest = await take(peer, 60 - len(handled) + 1)
    finally:
        await peer.aclose()
    in_hand = handled[-1]
    # Handled ones were acknowledged; the one in hand is released and comes again, counted once
    # more; everything else, the read ahead's entries included, comes once, uncounted.
    assert sorted(m["n"] for m in rest) == [in_hand["n"], *range(len(handled), 60)]
    for message in rest:
        expected = 2 if message["n"] == in_hand["n"] else 1
        assert message.delivery_count == expected, (message, message.delivery_count)


async def test_a_read_ahead_whose_reply_is_lost_is_taken_back_uncounted(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read ran on the server, so its entries are pending under this consumer; the reply
    never came. They are taken back as orphans (no delivery counted), not resent blindly, and
    every message is handed out once, in order."""
    recorder = Recorder(monkeypatch, lose_first_ahead=True)
    backend = await _backlog(
        queue_backend_factory,
        "lost-ahead",
        60,
        batch_size=10,
        claim_idle_ms=60_000,
        claim_interval_ms=60_000,
        discovery_interval_ms=60_000,
    )
    stream = _consumer(backend, recorder)
    try:
        got = await take(stream, 60)
    finally:
        await stream.aclose()
    assert recorder.lost
    assert [m["n"] for m in got] == list(range(60))
    assert all(m.delivery_count == 1 for m in got)


async def test_a_read_ahead_starts_at_once_and_falls_back_to_a_plain_task() -> None:
    """The read must be on the wire before the caller gets its message (a caller of quick
    handlers never awaits while its buffer lasts); a loop whose task factory takes no
    ``eager_start`` still gets a task, started at the caller's next await."""
    from abe_redis._delivery import _eager_task

    steps: list[str] = []

    async def read() -> None:
        steps.append("sent")
        await asyncio.sleep(0)
        steps.append("answered")

    task = _eager_task(read())
    assert steps == ["sent"]
    await task
    assert steps == ["sent", "answered"]

    loop = asyncio.get_running_loop()
    made: list[asyncio.Task[Any]] = []

    def plain_factory(
        loop: asyncio.AbstractEventLoop, coro: Any, *, context: Any = None
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, context=context)
        made.append(task)
        return task

    loop.set_task_factory(plain_factory)
    try:
        steps.clear()
        task = _eager_task(read())
        assert steps == [] and made == [task]
        await task
        assert steps == ["sent", "answered"]
    finally:
        loop.set_task_factory(None)
