"""Leases: a healthy consumer never loses what it holds; a dead one's messages are claimable."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import pytest
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

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


async def _one_held_entry(queue_backend_factory: RedisBackendFactory, stream: str) -> tuple[Any, Any, str]:
    """A lease table of consumer ``mine`` holding one entry of ``stream``, idle for a while."""
    from abe_redis._lease import LeaseTable

    client: Any = queue_backend_factory.client()
    entry_id = (await client.xadd(stream, {"payload": b"{}"})).decode()
    await client.xgroup_create(stream, "g", id="0")
    await client.xreadgroup("g", "mine", {stream: ">"}, count=1)
    leases = LeaseTable(client, group="g", consumer="mine", claim_idle_ms=1000, refresh_ms=300)
    leases.take(stream, [(entry_id, 1)], at=0.0)
    await asyncio.sleep(0.1)  # idle for 100 ms, as a stalled holder's entry would be
    return client, leases, entry_id


async def test_verification_never_steals_back_what_a_peer_claims_between_its_two_commands(
    queue_backend_factory: RedisBackendFactory, monkeypatch: Any
) -> None:
    """Simulator seeds 30 and 124: a holder cut off past the claim timeout verifies its leases
    (XPENDING: still mine) while a peer claims the entry; a renewal with min-idle 0 stole it back,
    and both handed it out, the holder with the lower delivery count."""
    from abe_redis._lease import LeaseTable

    client, leases, entry_id = await _one_held_entry(queue_backend_factory, "verify-race")
    owners = LeaseTable._owners

    async def peer_claims_meanwhile(self: LeaseTable, stream: str, ids: list[str]) -> Any:
        seen = await owners(self, stream, ids)
        if len(seen) == 1 and seen[entry_id][0] == "mine":
            await client.xclaim(stream, "g", "peer", 50, [entry_id])
        return seen

    monkeypatch.setattr(LeaseTable, "_owners", peer_claims_meanwhile)
    assert await leases.verify("verify-race") == [entry_id]
    assert not leases.holds("verify-race", entry_id)
    [pending] = await client.xpending_range("verify-race", "g", min="-", max="+", count=10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"peer", 2)


async def test_a_renewal_whose_reply_was_lost_is_verified_not_resent_over_a_peers_claim(
    queue_backend_factory: RedisBackendFactory, monkeypatch: Any
) -> None:
    """Simulator seeds 77, 119, 140: redis-py resent a renewal (XCLAIM min-idle 0) whose reply
    was lost once it had reconnected, after a peer had rightly claimed the entry, and stole it
    back. Lease commands go over a client that never resends; an unknown outcome makes the
    lease stale, and the next renewal verifies first."""
    from abe_redis._connection import unresent_client
    from abe_redis._lease import LeaseTable

    client, _, entry_id = await _one_held_entry(queue_backend_factory, "renew-lost")
    leases = LeaseTable(
        unresent_client(client, connections=1), group="g", consumer="mine", claim_idle_ms=1000, refresh_ms=300
    )
    leases.take("renew-lost", [(entry_id, 1)], at=time.monotonic())
    original = Pipeline._execute_pipeline
    lost: list[bool] = []

    async def reply_lost(self: Pipeline, connection: Any, commands: Any, raise_on_error: bool) -> Any:
        reply = await original(self, connection, commands, raise_on_error)
        if not lost and any(args[0] == "XCLAIM" for args, _ in commands):
            lost.append(True)
            raise RedisConnectionError("simulated: reply lost after the command ran")
        return reply

    monkeypatch.setattr(Pipeline, "_execute_pipeline", reply_lost)
    with pytest.raises(RedisConnectionError):
        await leases.refresh()
    assert lost == [True]  # sent once, never again by redis-py
    assert leases.stale("renew-lost")
    await client.xclaim("renew-lost", "g", "peer", 0, [entry_id])  # rightly, once it looked idle
    assert await leases.refresh() == [("renew-lost", entry_id)]
    assert not leases.holds("renew-lost", entry_id)
    [pending] = await client.xpending_range("renew-lost", "g", min="-", max="+", count=10)
    assert pending["consumer"] == b"peer"


async def test_a_verification_whose_read_lost_its_reply_reads_again(
    queue_backend_factory: RedisBackendFactory, monkeypatch: Any
) -> None:
    """Simulator seed 42: over the lease client, which never resends, a lost XPENDING reply failed
    the verification before each release on close, three times over; the entries were left to
    lapse, each peer's claim counted one delivery more, and they were dead-lettered after two
    handler deliveries. XPENDING only reads: it is read again."""
    from abe_redis._connection import unresent_client
    from abe_redis._lease import LeaseTable

    client, _, entry_id = await _one_held_entry(queue_backend_factory, "verify-lost")
    leases = LeaseTable(
        unresent_client(client, connections=1), group="g", consumer="mine", claim_idle_ms=1000, refresh_ms=300
    )
    leases.take("verify-lost", [(entry_id, 1)], at=0.0)  # stale: verified before a release
    original = Pipeline._execute_pipeline
    lost: list[bool] = []

    async def reply_lost(self: Pipeline, connection: Any, commands: Any, raise_on_error: bool) -> Any:
        reply = await original(self, connection, commands, raise_on_error)
        if not lost and any(args[0] == "XPENDING" for args, _ in commands):
            lost.append(True)
            raise RedisConnectionError("simulated: reply lost after the command ran")
        return reply

    monkeypatch.setattr(Pipeline, "_execute_pipeline", reply_lost)
    await leases.release()
    assert lost == [True]
    [pending] = await client.xpending_range("verify-lost", "g", min="-", max="+", count=10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"mine", 0)  # released, uncounted
    assert pending["time_since_delivered"] >= 1000  # claimable at once


async def test_verification_keeps_what_this_consumer_renewed_between_its_two_commands(
    queue_backend_factory: RedisBackendFactory, monkeypatch: Any
) -> None:
    """The background refresh may renew an entry while the loop verifies it: the guarded renewal
    then skips it, which must not count as losing it (simulator seed 32 of the handlers profile)."""
    from abe_redis._lease import LeaseTable

    client, leases, entry_id = await _one_held_entry(queue_backend_factory, "verify-own")
    owners = LeaseTable._owners
    renewed: list[str] = []

    async def renewed_meanwhile(self: LeaseTable, stream: str, ids: list[str]) -> Any:
        seen = await owners(self, stream, ids)
        if not renewed:
            renewed.append(entry_id)
            await client.xclaim(stream, "g", "mine", 0, [entry_id], justid=True)
        return seen

    monkeypatch.setattr(LeaseTable, "_owners", renewed_meanwhile)
    assert await leases.verify("verify-own") == []
    assert renewed == [entry_id]
    assert leases.holds("verify-own", entry_id)
    [pending] = await client.xpending_range("verify-own", "g", min="-", max="+", count=10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"mine", 1)


async def test_an_entry_lost_to_a_peer_on_its_way_into_the_buffer_is_never_handed_out(
    queue_backend_factory: RedisBackendFactory, monkeypatch: Any
) -> None:
    """Simulator seeds 30 and 133: a read's entries are leased, then buffered after a few more
    commands (the holdings record). A partition stalled those commands past the claim timeout; a
    peer claimed the entries and verification dropped their leases, but they reached the buffer
    afterwards and were handed out anyway — handled twice, the later with a lower count."""
    from abe_redis._delivery import GroupReader

    publisher = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    for n in range(2):
        await publisher.publish("intake", {"n": n})
    intake = GroupReader._intake
    claimed: list[str] = []

    async def peer_claims_first(self: GroupReader, taken: list[Any]) -> None:
        if not claimed and len(taken) == 2:
            first = taken[0].entry_id
            claimed.append(first)
            await client.xclaim("intake", self.group, "peer", 0, [first])
            assert self._leases is not None
            assert await self._leases.verify("intake") == [first]
        await intake(self, taken)

    monkeypatch.setattr(GroupReader, "_intake", peer_claims_first)
    consumer = queue_backend_factory(batch_size=10).consume(group="g")
    try:
        [message] = await take(consumer, 1)
    finally:
        await consumer.aclose()
    assert claimed
    assert (message["n"], message.delivery_count) == (1, 1)
    pending = await client.xpending_range("intake", "g", min="-", max="+", count=10)
    owners = {p["message_id"].decode(): p["consumer"] for p in pending}
    assert owners[claimed[0]] == b"peer"  # the peer's still: closing released only the other


async def test_a_refresh_survives_acks_dropping_a_stream_while_its_pipeline_opens() -> None:
    """A cluster client's pipeline may await on entry; acks that drop a stream's last lease
    meanwhile must not break the renewal of the rest (it raised KeyError)."""
    from abe_redis._lease import LeaseTable

    sent: list[tuple[str, list[str]]] = []

    class _Pipe:
        def __init__(self, table: LeaseTable) -> None:
            self._table = table

        async def __aenter__(self) -> _Pipe:
            await asyncio.sleep(0)
            self._table.drop("a", ["1-0"])  # the ack that lands while the pipeline opens
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        def xclaim(
            self, stream: str, group: str, consumer: str, idle: int, ids: list[str], **kw: Any
        ) -> None:
            sent.append((stream, ids))

        async def execute(self, raise_on_error: bool = True) -> list[Any]:
            return [[] for _ in sent]

    class _Client:
        table: LeaseTable

        def pipeline(self, transaction: bool = True) -> _Pipe:
            return _Pipe(self.table)

    client = _Client()
    leases = LeaseTable(client, group="g", consumer="c", claim_idle_ms=1000, refresh_ms=300)
    client.table = leases
    now = time.monotonic()
    leases.take("a", [("1-0", 1)], at=now)
    leases.take("b", [("2-0", 1), ("3-0", 1)], at=now)
    assert await leases.refresh() == []
    # Both streams were renewed as held when the refresh began; "a"'s renewal of an
    # acknowledged entry is harmless (XCLAIM skips what is no longer pending).
    assert sent == [("a", ["1-0"]), ("b", ["2-0", "3-0"])]
    assert leases.streams() == ["b"]


async def _fresh_and_stale(
    queue_backend_factory: RedisBackendFactory, prefix: str
) -> tuple[Any, Any, str, str]:
    """Consumer ``mine`` holding one entry of ``<prefix>-fresh`` (just renewed) and one of
    ``<prefix>-stale`` (unrenewed for long: verified before any other use)."""
    from abe_redis._lease import LeaseTable

    client: Any = queue_backend_factory.client()
    ids = []
    for stream in (f"{prefix}-fresh", f"{prefix}-stale"):
        ids.append((await client.xadd(stream, {"payload": b"{}"})).decode())
        await client.xgroup_create(stream, "g", id="0")
        await client.xreadgroup("g", "mine", {stream: ">"}, count=1)
    leases = LeaseTable(client, group="g", consumer="mine", claim_idle_ms=1000, refresh_ms=300)
    leases.take(f"{prefix}-fresh", [(ids[0], 1)], at=time.monotonic())
    leases.take(f"{prefix}-stale", [(ids[1], 1)], at=0.0)
    return client, leases, ids[0], ids[1]


def _slow_verification(monkeypatch: Any, client: Any, leases: Any, stream: str, entry_id: str) -> list[str]:
    """While the stale stream is verified, the fresh one lapses (the verification took longer
    than the claim timeout) and a peer rightly claims its entry."""
    from abe_redis._lease import LeaseTable

    owners = LeaseTable._owners
    claimed: list[str] = []

    async def lapse_meanwhile(self: LeaseTable, verified: str, ids: list[str]) -> Any:
        if verified != stream and not claimed:
            leases._refreshed_at[stream] = time.monotonic() - 1.5
            await client.xclaim(stream, "g", "peer", 0, [entry_id])
            claimed.append(entry_id)
        return await owners(self, verified, ids)

    monkeypatch.setattr(LeaseTable, "_owners", lapse_meanwhile)
    return claimed


async def test_a_renewal_is_never_sent_after_verifying_another_stream_for_longer_than_its_lease(
    queue_backend_factory: RedisBackendFactory, monkeypatch: Any
) -> None:
    """Simulate seed 793: a refresh verified a stale stream first, over a lossy link (its reads
    sent again), long enough for the other stream's lease to lapse and a peer to claim and hand
    out its entry at count 3; the refresh then renewed that stream blind (min-idle 0), stealing
    the entry back, and its release set the count back to 1 (handed out again at 2). Fresh
    streams are renewed before any verification, as soon as they are found fresh."""
    client, leases, fresh_id, _ = await _fresh_and_stale(queue_backend_factory, "renew-order")
    claimed = _slow_verification(monkeypatch, client, leases, "renew-order-fresh", fresh_id)
    assert await leases.refresh() == []
    assert claimed == [fresh_id]
    [pending] = await client.xpending_range("renew-order-fresh", "g", min="-", max="+", count=10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"peer", 2)  # not stolen back
    # Stale now: the next refresh verifies it and finds it lost.
    assert await leases.refresh() == [("renew-order-fresh", fresh_id)]
    [pending] = await client.xpending_range("renew-order-fresh", "g", min="-", max="+", count=10)
    assert pending["consumer"] == b"peer"


async def test_a_release_is_never_sent_after_verifying_another_stream_for_longer_than_its_lease(
    queue_backend_factory: RedisBackendFactory, monkeypatch: Any
) -> None:
    """The release's variant of seed 793: the fresh streams are released before any stale one is
    verified, each stale one straight after its own verification; a peer that claims a released
    entry keeps it, with its count."""
    client, leases, fresh_id, _ = await _fresh_and_stale(queue_backend_factory, "release-order")
    claimed = _slow_verification(monkeypatch, client, leases, "release-order-fresh", fresh_id)
    await leases.release()
    assert claimed == [fresh_id]
    [pending] = await client.xpending_range("release-order-fresh", "g", min="-", max="+", count=10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"peer", 1)  # released at 0, +1
    [pending] = await client.xpending_range("release-order-stale", "g", min="-", max="+", count=10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"mine", 0)  # verified, released
    assert pending["time_since_delivered"] >= 1000
    assert len(leases) == 0


async def test_a_slow_verification_counts_its_renewal_from_the_renewal_not_from_the_read(
    queue_backend_factory: RedisBackendFactory, monkeypatch: Any
) -> None:
    """Simulate seed 644: over a slow link a verification (XPENDING per entry, then the guarded
    renewal) took longer than half the claim timeout; timed from its read, the stream was stale
    again at once, so it was only ever verified, never renewed in one command, and a lease
    lapsed under a handler: a peer claimed the entry and both handled it."""
    from abe_redis._lease import LeaseTable

    client, leases, _ = await _one_held_entry(queue_backend_factory, "verify-slow")
    owners = LeaseTable._owners

    async def slow_read(self: LeaseTable, stream: str, ids: list[str]) -> Any:
        seen = await owners(self, stream, ids)
        await asyncio.sleep(0.6)  # longer than half of claim_idle_ms=1000
        return seen

    monkeypatch.setattr(LeaseTable, "_owners", slow_read)
    assert leases.stale("verify-slow")
    assert await leases.verify("verify-slow") == []
    assert not leases.stale("verify-slow")  # renewed just now: the next refresh renews it blind
    [pending] = await client.xpending_range("verify-slow", "g", min="-", max="+", count=10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"mine", 1)
    assert pending["time_since_delivered"] < 300
