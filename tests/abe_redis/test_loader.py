"""abe loads us through its real entry-point machinery: no mocks anywhere here."""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points

import pytest
from abe.backends.message_queue.consumer import AsyncLoopConsumer
from abe.backends.message_queue.loader import BACKEND_ENTRY_POINT_GROUP, load_backend
from abe.types import MessageQueueBackendProtocol

from abe_redis import RedisStreamsBackend
from abe_redis_testing.servers import RedisEndpoint


@pytest.mark.parametrize(
    "group",
    ["abe.backends.message_queue", "abe.backends.message_queue.service", "abstract_backend.backends.queue"],
)
def test_registered_as_redis_in_every_group_hosts_read(group: str) -> None:
    found = {ep.name: ep for ep in entry_points(group=group)}
    assert "redis" in found, f"no 'redis' entry point in {group}: {sorted(found)}"
    assert found["redis"].load() is RedisStreamsBackend


def test_loader_group_is_the_one_we_register() -> None:
    # If abe ever renames its group, this fails rather than silently falling back to memory.
    assert BACKEND_ENTRY_POINT_GROUP == "abe.backends.message_queue"


async def test_load_backend_returns_ours_configured_from_env(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisEndpoint, redis_client: object
) -> None:
    monkeypatch.setenv("QUEUE_BACKEND", "redis")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("REDIS_CONSUMER_GROUP", "loaded")
    backend = load_backend()
    try:
        assert type(backend) is RedisStreamsBackend
        assert isinstance(backend, MessageQueueBackendProtocol)
        assert backend.config.url == redis_server.url
        assert backend.config.consumer_group == "loaded"
    finally:
        await backend.aclose()


async def test_async_loop_consumer_runs_loaded_backend_end_to_end(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisEndpoint, redis_client: object
) -> None:
    # redis_client is requested for its cleanup: the server is flushed after the test.
    monkeypatch.setenv("QUEUE_BACKEND", "redis")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("REDIS_BLOCK_MS", "100")
    monkeypatch.setenv("REDIS_DISCOVERY_INTERVAL_MS", "100")
    backend = load_backend()
    assert isinstance(backend, RedisStreamsBackend)
    received: list[dict[str, object]] = []
    all_in = asyncio.Event()

    async def handler(message: dict[str, object]) -> None:
        received.append(dict(message))
        if message.get("n") == 1:
            raise RuntimeError("a failing handler; AsyncLoopConsumer swallows this")
        if len(received) == 3:
            all_in.set()

    for n in range(3):
        await backend.publish("loader-e2e", {"n": n})
    consumer = AsyncLoopConsumer(backend, group="e2e")
    task = asyncio.create_task(consumer.run(handler))
    try:
        await asyncio.wait_for(all_in.wait(), 10)
    finally:
        await consumer.shutdown()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await backend.aclose()
    assert sorted(m["n"] for m in received) == [0, 1, 2]  # type: ignore[type-var]
