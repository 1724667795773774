"""The lean model server and its connection on the simulated loop: what the differential fuzzer
cannot see (blocking reads, time, the simulation's choice of server)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import redis.asyncio as redis_async

from abe_redis_testing.simulation import LinkFaults, SimLoop, SimNetwork, run_seed, virtual_world
from abe_redis_testing.simulation._model import ModelServer
from abe_redis_testing.simulation._network import sim_connections


def _on_the_model(scenario: Any) -> Any:
    loop = SimLoop(random.Random(0))
    server = ModelServer()
    network = SimNetwork(server, random.Random(1), LinkFaults(), now=loop.time, record=lambda event: None)
    try:
        with virtual_world(loop, 0), sim_connections(network):
            return loop.run_until_complete(scenario(loop))
    finally:
        loop.close()


def test_a_blocked_read_wakes_for_new_entries_of_its_stream_only() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> tuple[float, Any]:
        reader = redis_async.Redis.from_url("redis://simulated:6379/0", protocol=3)
        writer = redis_async.Redis.from_url("redis://simulated:6379/0", protocol=3)
        await writer.xgroup_create("s", "g", "$", mkstream=True)
        await writer.xgroup_create("t", "g", "$", mkstream=True)

        async def write() -> None:
            await asyncio.sleep(0.1)
            await writer.xadd("t", {"f": "other stream"})
            await writer.set("k", "v")
            await asyncio.sleep(0.2)
            await writer.xadd("s", {"f": "mine"}, id="1767225600300-0")

        task = loop.create_task(write())
        reply = await reader.xreadgroup("g", "c", {"s": ">"}, count=10, block=1000)
        await task
        return loop.time(), reply

    woke_at, reply = _on_the_model(scenario)
    assert woke_at == pytest.approx(0.3)
    assert reply == {b"s": [[(b"1767225600300-0", {b"f": b"mine"})]]}


def test_a_blocked_read_answers_nil_at_its_timeout_on_the_virtual_clock() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> tuple[float, Any, Any]:
        client = redis_async.Redis.from_url("redis://simulated:6379/0", protocol=3)
        await client.xgroup_create("s", "g", "$", mkstream=True)
        reply = await client.xreadgroup("g", "c", {"s": ">"}, block=250)
        # The connection serves the next command normally after a timed-out read.
        return loop.time(), reply, await client.xpending("s", "g")

    at, reply, pending = _on_the_model(scenario)
    assert at == pytest.approx(0.25)
    assert reply == {}  # nil, as redis-py's RESP3 reply callback hands it over
    assert pending["pending"] == 0


def test_stream_ids_and_idle_times_follow_the_virtual_clock() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> tuple[Any, Any]:
        client = redis_async.Redis.from_url("redis://simulated:6379/0", protocol=3)
        await asyncio.sleep(2.0)
        entry_id = await client.xadd("s", {"f": "v"})
        await client.xgroup_create("s", "g", "0")
        await client.xreadgroup("g", "c", {"s": ">"})
        await asyncio.sleep(1.5)
        return entry_id, await client.xpending_range("s", "g", "-", "+", 10)

    entry_id, pending = _on_the_model(scenario)
    assert entry_id == b"1767225602000-0"  # EPOCH + 2 s
    assert pending[0]["time_since_delivered"] == 1500


def test_an_unknown_command_is_recorded_not_guessed() -> None:
    server = ModelServer()
    client = server.new_client()
    reply = server.execute(client, [b"OBJECT", b"ENCODING", b"k"])
    assert "unknown command" in str(reply)
    assert server.unsupported == ["OBJECT ENCODING k"]


def test_fakeredis_stays_selectable_and_the_model_is_the_default() -> None:
    model = run_seed(0, workload="fast", faults=())
    fake = run_seed(0, workload="fast", faults=(), server="fakeredis")
    assert model.server == "model" and fake.server == "fakeredis"
    assert model.ok and fake.ok
    assert model.stats["published"] == fake.stats["published"] == 200
    assert fake.replay().endswith("--server fakeredis")
    assert "--server" not in model.replay()
    with pytest.raises(ValueError, match="unknown server"):
        run_seed(0, server="valkey")
