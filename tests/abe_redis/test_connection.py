"""Connections: waiting reads never starve publishers; credentials fail fast; unix sockets."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from abe_redis import RedisSetupError, RedisStreamsBackend
from abe_redis_testing import RedisBackendFactory
from abe_redis_testing.servers import RedisServer, find_redis_server

from .helpers import take

SECRET = "correct-horse-battery"


async def test_twelve_waiting_consumers_do_not_starve_publishers(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """12 consumers blocked in their reads on one backend whose pool has 10 connections."""
    backend = queue_backend_factory(max_connections=10, pool_timeout=2.0)
    await backend.publish("busy", {"n": -1})
    consumers = [backend.consume(group=f"g{i}") for i in range(12)]
    try:
        for consumer in consumers:
            await take(consumer, 1)  # each is now waiting in a blocking read
        results = await asyncio.gather(
            *(backend.publish("busy", {"n": n}) for n in range(200)), return_exceptions=True
        )
        assert [r for r in results if r is not None] == []
        assert sorted(m["n"] for m in await take(consumers[0], 200)) == list(range(200))
    finally:
        for consumer in consumers:
            await consumer.aclose()


@pytest.fixture
def password_server(tmp_path: Path) -> Any:
    with RedisServer(
        find_redis_server(), password=SECRET, config_lines=[f"requirepass {SECRET}"], data_dir=tmp_path
    ) as server:
        yield server


@pytest.mark.parametrize("password", ["wrong-password", None], ids=["wrong", "missing"])
async def test_bad_credentials_fail_fast_with_a_clear_error(
    password_server: RedisServer, password: str | None
) -> None:
    host, port = password_server.host, password_server.port
    url = f"redis://:{password}@{host}:{port}/0" if password else f"redis://{host}:{port}/0"
    backend = RedisStreamsBackend.from_url(url)
    try:
        started = time.monotonic()
        with pytest.raises(RedisSetupError) as published:
            await backend.publish("orders", {"n": 1})
        stream = backend.consume(group="g")
        with pytest.raises(RedisSetupError) as consumed:
            await asyncio.wait_for(anext(stream), 10)
        elapsed = time.monotonic() - started
    finally:
        await backend.aclose()
    print(f"{'wrong' if password else 'missing'} password: publish and consume raised within {elapsed:.2f} s")
    assert elapsed < 10
    for caught in (published, consumed):
        assert "password" in str(caught.value)
        assert "wrong-password" not in str(caught.value)
        assert SECRET not in str(caught.value)


async def test_redis_password_wins_over_the_url_password(password_server: RedisServer) -> None:
    url = f"redis://:stale@{password_server.host}:{password_server.port}/0"
    backend = RedisStreamsBackend.from_url(url, password=SECRET)
    try:
        await backend.publish("orders", {"n": 1})
        assert await backend.client.xlen("orders") == 1
    finally:
        await backend.aclose()
    assert SECRET not in repr(backend) and "stale" not in repr(backend)


async def test_unix_socket_url_works(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    with RedisServer(
        find_redis_server(), extra_args=("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    ) as server:
        del server
        backend = RedisStreamsBackend.from_url(
            f"unix://{socket_path}", block_ms=100, discovery_interval_ms=100
        )
        stream = backend.consume(group="g")
        try:
            await backend.publish("local", {"n": 1})
            assert await take(stream, 1) == [{"n": 1}]
        finally:
            await stream.aclose()
            await backend.aclose()


async def test_out_of_memory_dead_letter_leaves_the_entry_pending_and_consumption_goes_on(
    redis_server_handle: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """maxmemory with noeviction refuses the dead-letter write: the poison entry stays pending
    (nothing lost, nothing acknowledged), good messages keep flowing, and it is dead-lettered
    once memory is back."""
    backend = RedisStreamsBackend.from_url(
        redis_server_handle.url, block_ms=100, discovery_interval_ms=100, claim_interval_ms=100, batch_size=1
    )
    client: Any = backend.client
    await backend.publish("oom", {"n": 0})
    await client.xadd("oom", {"payload": b"{not json"})
    await backend.publish("oom", {"n": 1})
    stream = backend.consume(group="g")
    try:
        [first] = await take(stream, 1)
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", str(used + 1024))
        with caplog.at_level(logging.WARNING, logger="abe_redis"):
            [second] = await take(stream, 1)
        assert [first["n"], second["n"]] == [0, 1]
        assert await client.xlen("oom:dead-letter") == 0
        pending = await client.xpending("oom", "g")
        assert int(pending["pending"]) >= 1  # the poison entry: still there, not acknowledged
        assert "could not dead-letter" in caplog.text
        await client.config_set("maxmemory", "0")
        await backend.publish("oom", {"n": 2})
        [after] = await take(stream, 1)
        assert after["n"] == 2
        for _ in range(50):
            if await client.xlen("oom:dead-letter") == 1:
                break
            await asyncio.sleep(0.1)
            await backend.publish("oom", {"n": 3})
            await take(stream, 1)
        assert await client.xlen("oom:dead-letter") == 1
    finally:
        await stream.aclose()
        await backend.aclose()


async def test_connections_send_no_client_setinfo(
    redis_server_handle: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py would send CLIENT SETINFO twice on every connect (a round trip; refused before
    Redis 7.2): the shared pool, a consumer's taker and its lease connections send none."""
    from redis.asyncio.connection import AbstractConnection

    from abe_redis._config import RedisConfig
    from abe_redis._connection import build_client, close_client, dedicated_client, unresent_client

    sent: list[tuple[Any, ...]] = []
    real_send = AbstractConnection.send_command

    async def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        sent.append(tuple(str(a).upper() for a in args[:2]))
        await real_send(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_command", recording)
    client = build_client(RedisConfig(url=redis_server_handle.url))
    clients = [client, dedicated_client(client), unresent_client(client, connections=2)]
    try:
        for each in clients:
            assert await each.ping()
    finally:
        for each in clients:
            await close_client(each)
    assert sum(1 for c in sent if c[0] == "HELLO") == 3, sent  # each of the three connected
    assert not [c for c in sent if c[:2] == ("CLIENT", "SETINFO")], sent
