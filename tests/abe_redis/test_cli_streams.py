"""``abe-redis streams`` and ``dlq replay --to`` against a real server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from abe_redis import DeadLetters, RedisStreamsBackend
from abe_redis.cli import main
from abe_redis_testing.servers import RedisEndpoint


async def _run(*argv: str) -> int:
    # The CLI runs its own event loop; keep it off ours.
    return await asyncio.to_thread(main, list(argv))


async def test_retire_list_and_unretire(
    redis_server: RedisEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = RedisStreamsBackend.from_url(redis_server.url)
    try:
        await backend.publish("keep", {"n": 1})
        await backend.publish("old", {"n": 1})
        assert await _run("streams", "retire", "old", "--url", redis_server.url) == 0
        assert await _run("streams", "list", "--url", redis_server.url) == 0
        out = capsys.readouterr().out
        assert "keep\n" in out and "old (retired)" in out
        assert await _run("streams", "--url", redis_server.url, "unretire", "old") == 0
        listed, retired = await backend.registry.listed()
        assert "old" in listed and retired == set()
    finally:
        await backend.client.flushall()
        await backend.aclose()


async def test_replay_goes_to_the_owning_stream_never_to_one_named_in_the_entry(
    redis_server: RedisEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = RedisStreamsBackend.from_url(redis_server.url)
    client: Any = backend.client
    try:
        # A crafted dead letter naming another tenant's stream as its source.
        await client.xadd(
            "tenantA:jobs:dead-letter",
            {"reason": "x", "source_stream": "tenantB:payments", "field:payload": b'{"evil": 1}'},
        )
        [letter] = await DeadLetters(backend).entries("tenantA:jobs")
        assert await _run("dlq", "replay", "tenantA:jobs", "--id", letter.id, "--url", redis_server.url) == 0
        assert await client.exists("tenantB:payments") == 0
        assert await client.xlen("tenantA:jobs") == 1
        # Replaying the same entry again delivers nothing more; an unknown id is an error.
        assert await _run("dlq", "replay", "tenantA:jobs", "--id", letter.id, "--url", redis_server.url) == 2
        assert await client.xlen("tenantA:jobs") == 1
        await client.xadd("tenantA:jobs:dead-letter", {"reason": "y", "field:payload": b'{"n": 2}'})
        assert (
            await _run("dlq", "replay", "tenantA:jobs", "--to", "tenantA:retry", "--url", redis_server.url)
            == 0
        )
        assert await client.xlen("tenantA:retry") == 1
        assert "to tenantA:retry" in capsys.readouterr().out
    finally:
        await client.flushall()
        await backend.aclose()


async def test_concurrent_replays_of_one_dead_letter_deliver_it_once(redis_server: RedisEndpoint) -> None:
    backend = RedisStreamsBackend.from_url(redis_server.url)
    client: Any = backend.client
    try:
        for n in range(50):
            await client.xadd("jobs:dead-letter", {"reason": "x", "field:payload": b'{"n": %d}' % n})
        dead = DeadLetters(backend)
        counts = await asyncio.gather(*(dead.replay("jobs") for _ in range(4)))
        assert sum(counts) == 50
        assert await client.xlen("jobs") == 50
        assert await dead.count("jobs") == 0
    finally:
        await client.flushall()
        await backend.aclose()
