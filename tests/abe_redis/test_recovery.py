"""Recovery: only handing a message to a caller counts as a delivery; nothing is stranded."""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from abe_redis import DeadLetters
from abe_redis_testing import RedisBackendFactory

from .helpers import take


class HandlerFailure(Exception):
    pass


async def test_retry_loop_dead_letters_only_what_a_handler_saw_max_deliveries_times(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """The issue's repro: the handler fails its first 5 calls and the loop is re-entered after
    each failure. Releasing the unseen prefetched messages on every exit must not count as
    deliveries, so only a message the handler really received 5 times may be dead-lettered."""
    backend = queue_backend_factory(max_deliveries=5)
    for n in range(100):
        await backend.publish("retry", {"n": n})
    received: collections.Counter[int] = collections.Counter()
    handled: set[int] = set()
    calls = 0

    async def handler(message: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        received[message["n"]] += 1
        if calls <= 5:
            raise HandlerFailure(f"call {calls}")
        handled.add(message["n"])

    dead_letters = DeadLetters(backend)

    async def settled() -> bool:
        return len(handled) + await dead_letters.count("retry") >= 100

    async def run() -> None:
        while not await settled():
            try:
                async for message in backend.consume(group="g"):
                    await handler(message)
                    if len(handled) + await dead_letters.count("retry") >= 100:
                        return
            except HandlerFailure:
                continue  # the usual pattern: log, and consume again

    await asyncio.wait_for(run(), 30)
    letters = await dead_letters.entries("retry", count=200)
    for letter in letters:
        n = json.loads(letter.fields[b"payload"])["n"]
        assert received[n] >= 5, f"message {n} dead-lettered after {received[n]} handler calls"
        assert letter.delivery_count == received[n] + 1
    assert handled | {json.loads(letter.fields[b"payload"])["n"] for letter in letters} == set(range(100))
    assert len(letters) <= 1


async def test_entries_of_a_foreign_consumer_are_claimed_after_the_claim_timeout(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """A consumer of another program (no heartbeat, no records) read and vanished: the rotating
    sweep still finds its entries once idle past claim_idle_ms, and counts one more delivery."""
    backend = queue_backend_factory(claim_idle_ms=300, claim_interval_ms=50)
    client: Any = queue_backend_factory.client()
    await backend.publish("foreign", {"n": 1})
    await client.xgroup_create("foreign", "g", id="0")
    await client.xreadgroup("g", "someone-else", {"foreign": ">"}, count=10)
    stream = backend.consume(group="g")
    try:
        [message] = await take(stream, 1)
    finally:
        await stream.aclose()
    assert message == {"n": 1}
    assert message.delivery_count == 2


async def test_sweeps_cost_does_not_grow_with_streams(queue_backend_factory: RedisBackendFactory) -> None:
    """Per claim interval, the rotating sweep looks at ``sweep_streams`` streams, not all."""
    from abe_redis._recovery import Recovery

    backend = queue_backend_factory(sweep_streams=7, claim_interval_ms=50)
    for n in range(40):
        await backend.publish(f"s{n}", {"n": n})
    looked: list[int] = []
    original = Recovery._rotate

    async def counting(self: Recovery, streams: list[str], room: int) -> Any:
        before = self._rotation
        result = await original(self, streams, room)
        looked.append(self._rotation - before)
        return result

    Recovery._rotate = counting  # type: ignore[method-assign]
    stream = backend.consume(group="g")
    try:
        await take(stream, 40)
    finally:
        Recovery._rotate = original  # type: ignore[method-assign]
        await stream.aclose()
    assert looked
    assert max(looked) == 7


async def test_a_message_a_live_consumer_gives_back_and_takes_again_counts_twice(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    from abe_redis._delivery import GroupReader

    backend = queue_backend_factory(claim_idle_ms=200, claim_interval_ms=50)
    await backend.publish("again", {"n": 1})
    reader = GroupReader(backend.client, backend.config, group="g", registry=backend.registry)
    try:
        first = await asyncio.wait_for(reader.receive(), 10)
        await reader.release([first])
        second = await asyncio.wait_for(reader.receive(), 10)
    finally:
        await reader.aclose()
    assert (first.delivery_count, second.delivery_count) == (1, 2)


async def test_entries_of_a_read_cut_short_by_a_shutdown_are_released_uncounted(
    queue_backend_factory: RedisBackendFactory, monkeypatch: Any
) -> None:
    """The reply of a blocking read cancelled by a shutdown may carry entries the consumer never
    saw: closing must give them back at once, with no delivery counted, not strand them until
    the claim timeout (60 s here)."""
    import abe_redis._delivery as delivery

    real_dedicated = delivery.dedicated_client
    cut = asyncio.Event()

    def cutting(client: Any) -> Any:
        reader = real_dedicated(client)
        real_read = reader.xreadgroup

        async def read(*args: Any, **kwargs: Any) -> Any:
            reply = await real_read(*args, **kwargs)
            if reply and not cut.is_set():
                cut.set()
                raise asyncio.CancelledError  # the shutdown lands as the reply arrives
            return reply

        reader.xreadgroup = read
        return reader

    monkeypatch.setattr(delivery, "dedicated_client", cutting)
    backend = queue_backend_factory(claim_idle_ms=60_000)
    await backend.publish("cut", {"n": 1})
    doomed = backend.consume(group="g")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(anext(doomed), 10)
    await doomed.aclose()
    monkeypatch.setattr(delivery, "dedicated_client", real_dedicated)
    rescuer = backend.consume(group="g")
    try:
        [message] = await take(rescuer, 1, wait_s=5)
    finally:
        await rescuer.aclose()
    assert message == {"n": 1}
    assert message.delivery_count == 1


async def test_taking_back_an_orphan_never_steals_what_a_peer_claims_meanwhile(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulator seed 8: an entry of a read whose reply was lost sits in this consumer's pending
    list, idle, held by nobody. This consumer's XPENDING finds it as an orphan while a peer's
    sweep claims it; taking it back with min-idle 0 stole it from the peer, and both handed it
    out, this consumer with the lower count."""
    from abe_redis._lease import LeaseTable
    from abe_redis._recovery import Recovery

    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    entry_id = (await client.xadd("orphan", {"payload": b'{"n": 1}'})).decode()
    await client.xgroup_create("orphan", "g", id="0")
    await client.xreadgroup("g", "mine", {"orphan": ">"}, count=1)  # its reply "lost": not leased
    await asyncio.sleep(0.1)
    leases = LeaseTable(client, group="g", consumer="mine", claim_idle_ms=1000, refresh_ms=300)
    recovery = Recovery(client, client, backend.config, group="g", leases=leases, membership_ttl_ms=1000)
    take_back = Recovery._take_back

    async def peer_claims_meanwhile(self: Recovery, stream: str, pending: list[dict[str, Any]]) -> Any:
        await client.xclaim(stream, "g", "peer", 50, [entry_id])
        return await take_back(self, stream, pending)

    monkeypatch.setattr(Recovery, "_take_back", peer_claims_meanwhile)
    assert await recovery.own_pending(["orphan"], 10, counted=False) == []
    assert recovery.collect() == []
    assert not leases.holds("orphan", entry_id)
    [pending] = await client.xpending_range("orphan", "g", min="-", max="+", count=10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"peer", 2)


async def test_an_orphan_nobody_claimed_is_taken_back_uncounted(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """The guard must not skip a true orphan: idle since the lost read, it is taken back with its
    count as the read set it."""
    from abe_redis._lease import LeaseTable
    from abe_redis._recovery import Recovery

    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    entry_id = (await client.xadd("orphan", {"payload": b'{"n": 1}'})).decode()
    await client.xgroup_create("orphan", "g", id="0")
    await client.xreadgroup("g", "mine", {"orphan": ">"}, count=1)
    await asyncio.sleep(0.05)
    leases = LeaseTable(client, group="g", consumer="mine", claim_idle_ms=1000, refresh_ms=300)
    recovery = Recovery(client, client, backend.config, group="g", leases=leases, membership_ttl_ms=1000)
    [taken] = await recovery.own_pending(["orphan"], 10, counted=False)
    assert (taken.entry_id, taken.count, taken.fields) == (entry_id, 1, {b"payload": b'{"n": 1}'})
    assert leases.holds("orphan", entry_id)
    [pending] = await client.xpending_range("orphan", "g", min="-", max="+", count=10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"mine", 1)
    assert pending["time_since_delivered"] < 50  # taken back: its idle clock restarted


async def _gone_name(client: Any, config: Any, stream: str) -> None:
    """Consumer ``w`` of group ``g`` closed with nothing pending: what a sweep forgets."""
    await client.xgroup_create(stream, "g", id="0", mkstream=True)
    await client.xgroup_createconsumer(stream, "g", "w")
    await client.zadd(config.keys.consumers("g"), {"w": 0})
    await client.sadd(config.keys.holdings("g", "w"), stream)


async def test_a_sweep_never_deletes_a_name_a_new_consumer_took_meanwhile(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulator seed 76 (handlers profile): a sweep found the closed consumer ``w`` with nothing
    pending and deleted the name from the group (XGROUP DELCONSUMER); in between, a consumer
    configured as ``w`` had started, taken the name and read an entry — which the deletion
    removed from the pending list, so nobody ever handled or acknowledged it."""
    from abe_redis._lease import LeaseTable
    from abe_redis._membership import Membership
    from abe_redis._recovery import Recovery

    config = queue_backend_factory.config(consumer_name="w")
    client: Any = queue_backend_factory.client()
    await _gone_name(client, config, "forget")
    await client.xadd("forget", {"payload": b'{"n": 1}'})
    leases = LeaseTable(client, group="g", consumer="sweeper", claim_idle_ms=500, refresh_ms=150)
    recovery = Recovery(client, client, config, group="g", leases=leases, membership_ttl_ms=1000)
    has_pending = Recovery._has_pending
    restarted = Membership(client, config, group="g")

    async def restarted_meanwhile(self: Recovery, stream: str, name: str) -> bool:
        pending = await has_pending(self, stream, name)
        if not restarted.name:
            assert await restarted.join() == "w"
            await client.xreadgroup("g", "w", {"forget": ">"}, count=1)
        return pending

    monkeypatch.setattr(Recovery, "_has_pending", restarted_meanwhile)
    assert await recovery.sweep(["forget"], 10) == []
    assert restarted.name == "w"
    [pending] = await client.xpending_range("forget", "g", min="-", max="+", count=10)
    assert pending["consumer"] == b"w"
    assert await restarted.heartbeat()


async def test_a_sweep_deletes_a_closed_name_that_holds_nothing(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """The other side: a closed consumer with nothing pending leaves no trace, and the sweep frees
    the name's lock it took to delete it."""
    from abe_redis._lease import LeaseTable
    from abe_redis._recovery import Recovery

    config = queue_backend_factory.config(consumer_name="w")
    client: Any = queue_backend_factory.client()
    await _gone_name(client, config, "forget")
    leases = LeaseTable(client, group="g", consumer="sweeper", claim_idle_ms=500, refresh_ms=150)
    recovery = Recovery(client, client, config, group="g", leases=leases, membership_ttl_ms=1000)
    assert await recovery.sweep(["forget"], 10) == []
    assert [c["name"] for c in await client.xinfo_consumers("forget", "g")] == []
    assert await client.zscore(config.keys.consumers("g"), "w") is None
    assert not await client.exists(config.keys.holdings("g", "w"), config.keys.consumer_lock("g", "w"))


class _Hanging:
    """A pipeline to a server that no longer answers: everything queues, nothing returns."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self

    async def __aenter__(self) -> _Hanging:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def watch(self, *names: Any) -> None:
        await asyncio.Event().wait()

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()


class _CutOffOnceLocked:
    """The client, until a sweep has taken a gone name's lock; then the server is unreachable."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.cut = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        from abe_redis._membership import FORGETTING

        reply = await self._client.set(*args, **kwargs)
        if str(args[1]).startswith(FORGETTING):
            self.cut.set()
        return reply

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        return _Hanging() if self.cut.is_set() else self._client.pipeline(*args, **kwargs)


async def test_a_sweep_cancelled_while_it_forgets_a_name_ends_at_once(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """Simulator seed 14: a sweep that held a gone name's lock freed it in a ``finally``; in a
    process killed meanwhile that wait never ended, and neither did the cancelled task (the
    simulator's run hung). The lock lapses with its TTL instead."""
    from abe_redis._lease import LeaseTable
    from abe_redis._recovery import Recovery

    config = queue_backend_factory.config(consumer_name="w")
    real: Any = queue_backend_factory.client()
    await _gone_name(real, config, "forget")
    client = _CutOffOnceLocked(real)
    leases = LeaseTable(client, group="g", consumer="sweeper", claim_idle_ms=500, refresh_ms=150)
    recovery = Recovery(client, client, config, group="g", leases=leases, membership_ttl_ms=1000)
    sweeping = asyncio.create_task(recovery.sweep(["forget"], 10))
    await asyncio.wait_for(client.cut.wait(), 5)
    await asyncio.sleep(0.05)
    sweeping.cancel()
    [outcome] = await asyncio.wait_for(asyncio.gather(sweeping, return_exceptions=True), 2)
    assert isinstance(outcome, asyncio.CancelledError)


class _LostClaimReply:
    """The consumer's own connection, except that its first counting ``XCLAIM`` runs and then
    loses its reply (the way the simulator's lossy link does)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def xclaim(self, *args: Any, **kwargs: Any) -> Any:
        reply = await self._client.xclaim(*args, **kwargs)
        if not kwargs.get("justid") and not self.lost:
            self.lost += 1
            raise RedisConnectionError("reply lost after XCLAIM ran")
        return reply


async def _previous_incarnations_entry(client: Any, stream: str) -> str:
    """An entry consumer ``mine`` read once (count 1) and still holds in Redis: what a consumer
    restarting under that configured name resumes with a counting take."""
    entry_id = (await client.xadd(stream, {"payload": b'{"n": 1}'})).decode()
    await client.xgroup_create(stream, "g", id="0")
    await client.xreadgroup("g", "mine", {stream: ">"}, count=1)
    await asyncio.sleep(0.05)
    return str(entry_id)


async def test_a_counting_take_whose_reply_was_lost_counts_once_when_taken_again(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """Simulator seed 111 (all faults): a consumer resuming its name's pending entries claims
    them, counting a delivery; the reply is lost, so it leased nothing, and its next look found
    them pending under its name with the count already raised and claimed them again, counting
    another. A message was dead-lettered after 3 handler deliveries of 4 allowed."""
    from abe_redis._lease import LeaseTable
    from abe_redis._recovery import Recovery

    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    entry_id = await _previous_incarnations_entry(client, "lost-take")
    leases = LeaseTable(client, group="g", consumer="mine", claim_idle_ms=1000, refresh_ms=300)
    taker = _LostClaimReply(client)
    recovery = Recovery(client, taker, backend.config, group="g", leases=leases, membership_ttl_ms=1000)
    with pytest.raises(RedisConnectionError):
        await recovery.own_pending(["lost-take"], 10, counted=True)
    assert taker.lost == 1
    assert recovery.collect() == []
    [taken] = await recovery.own_pending(["lost-take"], 10, counted=True)
    assert (taken.entry_id, taken.count, taken.fields) == (entry_id, 2, {b"payload": b'{"n": 1}'})
    assert leases.holds("lost-take", entry_id)
    [pending] = await client.xpending_range("lost-take", "g", min="-", max="+", count=10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"mine", 2)


async def test_a_close_after_a_counting_take_whose_reply_was_lost_sets_the_count_back(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """The same lost reply, then the consumer closes before looking again: the entries it may
    have taken are verified and released with the count they had before the take, so the next
    incarnation's take counts one delivery, not two."""
    from abe_redis._lease import LeaseTable
    from abe_redis._recovery import Recovery

    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    entry_id = await _previous_incarnations_entry(client, "lost-close")
    leases = LeaseTable(client, group="g", consumer="mine", claim_idle_ms=1000, refresh_ms=300)
    recovery = Recovery(
        client, _LostClaimReply(client), backend.config, group="g", leases=leases, membership_ttl_ms=1000
    )
    with pytest.raises(RedisConnectionError):
        await recovery.own_pending(["lost-close"], 10, counted=True)
    await leases.release()
    [pending] = await client.xpending_range("lost-close", "g", min="-", max="+", count=10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"mine", 1)
    assert pending["time_since_delivered"] >= 1000  # released: claimable at once
    assert len(leases) == 0

    leases = LeaseTable(client, group="g", consumer="mine", claim_idle_ms=1000, refresh_ms=300)
    recovery = Recovery(client, client, backend.config, group="g", leases=leases, membership_ttl_ms=1000)
    [taken] = await recovery.own_pending(["lost-close"], 10, counted=True)
    assert (taken.entry_id, taken.count) == (entry_id, 2)
    [pending] = await client.xpending_range("lost-close", "g", min="-", max="+", count=10)
    assert pending["times_delivered"] == 2
