from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from abe_redis._config import BackendKeys

WAIT_S = 10.0
"""Upper bound for anything a test waits for; reaching it fails the test."""


async def take(stream: AsyncGenerator[Any], n: int, wait_s: float = WAIT_S) -> list[Any]:
    """The next ``n`` messages of ``stream``; fails if they do not all arrive in time."""
    got: list[Any] = []

    async def pull() -> None:
        while len(got) < n:
            got.append(await anext(stream))

    try:
        await asyncio.wait_for(pull(), wait_s)
    except TimeoutError:
        raise AssertionError(f"only {len(got)} of {n} messages arrived within {wait_s}s: {got!r}") from None
    return got


async def taken_by_a_task_then_cancelled(stream: AsyncGenerator[Any], wait_s: float = WAIT_S) -> Any:
    """The next message of ``stream``, taken in a task that is cancelled while it holds it. The
    caller keeps ``stream`` referenced and unclosed: a consumer whose task died without closing it."""
    took: list[Any] = []
    holding = asyncio.Event()

    async def worker() -> None:
        took.append(await anext(stream))
        holding.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(worker())
    await asyncio.wait_for(holding.wait(), wait_s)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return took[0]


def own_keys(keys: BackendKeys, group: str = "g", consumer: str = "c") -> list[str]:
    """Every key the backend keeps besides the streams, for one group and consumer: the list to
    hold against a rule every one of them must keep (the key prefix, one slot per partition)."""
    return [
        keys.registry,
        keys.registry_version,
        keys.retired,
        keys.notifications,
        keys.consumers(group),
        keys.consumer_lock(group, consumer),
        keys.holdings(group, consumer),
    ]
