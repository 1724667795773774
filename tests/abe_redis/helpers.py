from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

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
