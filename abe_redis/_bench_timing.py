"""How ``abe-redis bench`` times a consume run: workers that never return on their own, and a
future each sets with ``time.perf_counter()`` once the run's last message is in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from typing import Any


async def seconds_until(
    finished: asyncio.Future[float], workers: Iterable[Coroutine[Any, Any, None]]
) -> float:
    """Run ``workers`` until ``finished`` holds the moment the work was done; the seconds from
    their start to that moment. The workers are cancelled (and awaited) whatever happens."""
    started = time.perf_counter()
    tasks = [asyncio.create_task(worker) for worker in workers]
    try:
        ended = await finished
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ended - started
