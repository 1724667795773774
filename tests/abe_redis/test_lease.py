"""Leases: a healthy consumer never loses what it holds; a dead one's messages are claimable."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from abe_redis_testing import RedisBackendFactory

from .helpers import WAIT_S, take


async def test_prefetched_messages_of_a_slow_healthy_consumer_are_never_claimed(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """The issue's repro: 2 consumers, claim_idle_ms=1000, 150 ms handlers, 30 messages. Whoever
    reads the batch works through it for ~4.5 s, far past the claim timeout; nothing may be
    handled twice."""
    settings = {"claim_idle_ms": 1000, "claim_interval_ms": 100}
    publisher = queue_backend_factory()
    for n in range(30):
        await publisher.publish("slow", {"n": n})
    handled: collections.Counter[int] = collections.Counter()
    done = asyncio.Event()

    async def worker() -> None:
        async for message in queue_backend_factory(**settings).consume(group="g"):
            handled[message["n"]] += 1
            if len(handled) == 30:
                done.set()
            await asyncio.sleep(0.15)

    workers = [asyncio.create_task(worker()) for _ in range(2)]
    try:
        await asyncio.wait_for(done.wait(), 30)
        await asyncio.sleep(1.5)  # past another claim timeout: a stolen entry would show up now
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    assert set(handled) == set(range(30))
    assert [n for n, times in handled.items() if times > 1] == []


async def test_a_new_consumer_never_receives_what_a_live_consumer_holds(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    settings = {"claim_idle_ms": 600, "claim_interval_ms": 50, "batch_size": 10}
    publisher = queue_backend_factory()
    for n in range(10):
        await publisher.publish("held", {"n": n})
    holder = queue_backend_factory(**settings).consume(group="g")
    newcomer = queue_backend_factory(**settings).consume(group="g")
    try:
        [first] = await take(holder, 1)  # the holder now holds all ten (one in hand)
        got: list[Any] = []

        async def pull() -> None:
            got.append(await anext(newcomer))

        # Three claim timeouts pass while the holder stays alive: nothing may move.
        pulling = asyncio.create_task(pull())
        await asyncio.sleep(1.8)
        assert got == []
        pulling.cancel()
        await asyncio.gather(pulling, return_exceptions=True)
        rest = await take(holder, 9, wait_s=WAIT_S)
    finally:
        await holder.aclose()
        await newcomer.aclose()
    assert sorted(m["n"] for m in [first, *rest]) == list(range(10))
    assert all(m.delivery_count == 1 for m in [first, *rest])


async def test_lease_refresh_is_one_command_per_stream_not_per_message(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """Ownership stays cheap: holding 200 messages on 2 streams costs 2 XCLAIMs per refresh."""
    from abe_redis._lease import LeaseTable

    backend = queue_backend_factory(claim_idle_ms=60_000, batch_size=200)
    client: Any = queue_backend_factory.client()
    for stream in ("a", "b"):
        for n in range(100):
            await backend.publish(stream, {"n": n})
    consumer = backend.consume(group="g")
    sent: list[tuple[Any, ...]] = []
    original = LeaseTable.refresh

    async def counting_refresh(self: LeaseTable) -> Any:
        real_pipeline = self._client.pipeline

        def spy(*args: Any, **kwargs: Any) -> Any:
            pipe = real_pipeline(*args, **kwargs)
            real_execute = pipe.execute

            async def execute(*a: Any, **k: Any) -> Any:
                sent.extend(tuple(c[0]) for c in pipe.command_stack)
                return await real_execute(*a, **k)

            pipe.execute = execute
            return pipe

        self._client.pipeline = spy
        try:
            return await original(self)
        finally:
            del self._client.pipeline

    try:
        await take(consumer, 1)
        reader = consumer.ag_frame.f_locals["self"]  # the GroupReader behind the generator
        leases = reader._leases
        assert len(leases) == 200
        LeaseTable.refresh = counting_refresh  # type: ignore[method-assign]
        await leases.refresh()
    finally:
        LeaseTable.refresh = original  # type: ignore[method-assign]
        await consumer.aclose()
    assert [c[0] for c in sent] == ["XCLAIM", "XCLAIM"]
    assert sorted(len(c) for c in sent) == [100 + 6, 100 + 6]  # XCLAIM s g c 0 <100 ids> JUSTID
    assert await client.xpending("a", "g") is not None


async def test_closing_the_backend_releases_what_an_open_consumer_holds(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """The README pattern: `async with backend: async for m in backend.consume(): ... break`.
    The generator is still open when the backend closes; its message must not wait out the
    claim timeout (60 s here)."""
    await queue_backend_factory().publish("open", {"n": 1})
    backend = queue_backend_factory(claim_idle_ms=60_000)
    async with backend:
        async for message in backend.consume(group="g"):
            assert message == {"n": 1}
            break
    rescuer = queue_backend_factory(claim_idle_ms=60_000).consume(group="g")
    try:
        [again] = await take(rescuer, 1, wait_s=5)
    finally:
        await rescuer.aclose()
    assert again == {"n": 1}
    assert again.delivery_count == 2
