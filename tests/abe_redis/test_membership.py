"""Consumer names: unique among live consumers, even when replies are lost and commands resent."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from abe_redis._membership import Membership
from abe_redis_testing import RedisBackendFactory


def _lose_the_reply_of_the_first_del(monkeypatch: pytest.MonkeyPatch, lock: str, meanwhile: Any) -> list[str]:
    """The first pipeline or transaction that deletes ``lock`` runs on the server, then its reply
    is lost; ``meanwhile`` runs before redis-py may send it again."""
    lost: list[str] = []

    def patch(name: str) -> None:
        original = getattr(Pipeline, name)

        async def run(self: Pipeline, connection: Any, commands: Any, raise_on_error: bool) -> Any:
            reply = await original(self, connection, commands, raise_on_error)
            if not lost and any(args[:2] == ("DEL", lock) for args, _ in commands):
                lost.append(name)
                await meanwhile()
                if name == "_execute_transaction":
                    # EXEC's reply never arrived, so redis-py has not seen it end the WATCH.
                    self.watching = True
                raise RedisConnectionError("simulated: reply lost after the command ran")
            return reply

        monkeypatch.setattr(Pipeline, name, run)

    patch("_execute_pipeline")
    patch("_execute_transaction")
    return lost


async def test_a_lost_reply_on_leaving_never_frees_a_name_another_consumer_took_meanwhile(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulator seed 127: a consumer leaving deleted its name's lock; the reply was lost, and
    before the DEL was sent again a peer took the name. The resent DEL deleted the peer's lock,
    a third consumer took the same name while the peer was live, and both resumed (and handled)
    the same pending entries."""
    config = queue_backend_factory.config(consumer_name="w")
    client: Any = queue_backend_factory.client()
    # Resend after a connection error, as the backend's own client does.
    client.connection_pool.connection_kwargs["retry"] = Retry(NoBackoff(), 3)
    leaving = Membership(client, config, group="g")
    assert await leaving.join() == "w"
    peer = Membership(client, config, group="g")
    lock = config.keys.consumer_lock("g", "w")

    async def peer_takes_the_name() -> None:
        assert await peer.join() == "w"

    lost = _lose_the_reply_of_the_first_del(monkeypatch, lock, peer_takes_the_name)
    await leaving.leave([])
    assert lost
    third = Membership(client, config, group="g")
    assert await third.join() == "w-2"
    assert await peer.heartbeat()


async def test_a_lost_reply_on_joining_takes_the_name_it_locked(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SET NX whose reply is lost is sent again and finds the lock held, by this consumer's own
    token: the name is this consumer's, not taken by another (which would leave it locked and
    unused until its TTL)."""
    backend = queue_backend_factory(consumer_name="w")
    client: Any = backend.client
    membership = Membership(client, backend.config, group="g")
    original = type(client).set
    lost: list[bool] = []

    def set_with_lost_reply(self: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self, Pipeline):
            return original(self, *args, **kwargs)  # queued, not sent: nothing to lose

        async def sent_once_more() -> Any:
            reply = await original(self, *args, **kwargs)
            if not lost and kwargs.get("nx"):
                lost.append(True)
                return None  # what the resent SET NX answers once the first one took the lock
            return reply

        return sent_once_more()

    monkeypatch.setattr(type(client), "set", set_with_lost_reply)
    assert await membership.join() == "w"
    assert lost
    assert await membership.heartbeat()


async def test_a_consumer_whose_name_passes_to_another_mid_wait_takes_nothing_more_under_it(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """Simulator seed 124: a consumer cut off past its name's TTL (a partition, the server
    restarted) lost its name to a newly started one. Its heartbeat noticed, but the call waiting
    for the next message went on reading and taking back "orphans" under the name — the other's
    entries — and both handed them out. It must step aside (a new name) before taking anything."""
    import asyncio

    from .helpers import WAIT_S, take

    publisher = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    consumer = queue_backend_factory(consumer_name="w", claim_idle_ms=600).consume(group="g")
    await publisher.publish("renamed", {"n": 0})
    try:
        [first] = await take(consumer, 1)
        reader = consumer.ag_frame.f_locals["self"]  # the GroupReader behind the generator
        assert reader.consumer == "w"
        waiting = asyncio.create_task(anext(consumer))  # acknowledges the first, then waits
        await asyncio.sleep(0.3)
        config = queue_backend_factory.config(consumer_name="w")
        await client.delete(config.keys.consumer_lock("g", "w"))  # lapsed while cut off ...
        other = Membership(client, config, group="g")
        assert await other.join() == "w"  # ... and taken by a consumer started meanwhile
        await asyncio.sleep(0.6)  # a heartbeat or two: the name is known to be lost
        await publisher.publish("renamed", {"n": 1})
        second = await asyncio.wait_for(waiting, WAIT_S)
        assert (second["n"], second.delivery_count) == (1, 1)
        assert reader.consumer == "w-2"
        pending = await client.xpending_range("renamed", "g", min="-", max="+", count=10)
        assert [(p["message_id"].decode(), p["consumer"]) for p in pending] == [(second.message_id, b"w-2")]
    finally:
        await consumer.aclose()
    assert first["n"] == 0


async def test_a_consumer_cut_off_past_its_names_ttl_hands_out_nothing_until_a_heartbeat_confirms_it(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulator seeds 153 and 158: a consumer cut off from Redis for longer than its name's TTL
    went on handing out what it had buffered. A consumer started meanwhile had taken the name and
    resumed its pending entries, and the stale lease's verification read them as still its own
    (listed under the same name): both handled them. Past the TTL, nothing is handed out until
    a heartbeat confirms the name; when it has passed on, the consumer steps aside."""
    import asyncio

    from .helpers import WAIT_S

    publisher = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    backend = queue_backend_factory(consumer_name="w", claim_idle_ms=600, batch_size=3)
    config = backend.config
    reader = backend.group_reader("g")
    for n in range(3):
        await publisher.publish("lapsed", {"n": n})
    try:
        first = await asyncio.wait_for(reader.receive(), WAIT_S)  # two more wait in the buffer
        assert (first["n"], reader.consumer) == (0, "w")
        reader.done(first)

        async def cut_off(self: Membership) -> bool:
            raise RedisConnectionError("simulated: cut off")

        beat = Membership.heartbeat
        monkeypatch.setattr(Membership, "heartbeat", cut_off)
        await asyncio.sleep(1.2)  # past the name lock's TTL (1 s): it lapses on the server
        other = Membership(client, config, group="g")
        assert await other.join() == "w"  # a consumer started meanwhile, resuming w's entries

        async def alive() -> None:
            # The other keeps its name, as a live consumer does: were its lock to lapse too, the
            # reader could rightly take "w" back, and the test would race the lock's TTL.
            while True:
                await beat(other)
                await asyncio.sleep(0.2)

        keeping = asyncio.create_task(alive())
        handing = asyncio.create_task(reader.receive())
        await asyncio.sleep(0.5)
        assert not handing.done()  # n=1 and n=2 are the other's now
        monkeypatch.undo()  # reconnected: the heartbeat finds the name taken
        await publisher.publish("lapsed", {"n": 3})
        after = await asyncio.wait_for(handing, WAIT_S)
        assert reader.consumer == "w-2"
        # Taken under the new name: n=3, or an entry the other left idle (it renews nothing
        # here), claimed with its second delivery counted.
        assert after["n"] == 3 or after.delivery_count == 2
        [mine] = await client.xpending_range(
            "lapsed", "g", min=after.message_id, max=after.message_id, count=1
        )
        assert mine["consumer"] == b"w-2"
    finally:
        if "keeping" in locals():
            keeping.cancel()
        await reader.aclose()
        await backend.aclose()
