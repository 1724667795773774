"""How ``abe-redis bench`` times a consume run: workers that never return on their own, and a
future each sets with ``time.perf_counter()`` once the run's last message is in; and the
"ours" side of such a run, consumers of the backend itself, which every deployment shares."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import RedisStreamsBackend


async def seconds_until(
    finished: asyncio.Future[float], workers: Iterable[Coroutine[Any, Any, None]]
) -> float:
    """Run ``workers`` until ``finished`` holds the moment the work was done; the seconds from
    their start to that moment. A worker's error ends the wait with it (the moment would never
    come); the workers are cancelled (and awaited) whatever happens."""

    def failed(task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None and not finished.done():
            finished.set_exception(error)

    started = time.perf_counter()
    tasks = [asyncio.create_task(worker) for worker in workers]
    for task in tasks:
        task.add_done_callback(failed)
    try:
        ended = await finished
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ended - started


async def our_consume(
    backend: RedisStreamsBackend, n: int, consumers: int, advance: Callable[[int], None]
) -> float:
    """Seconds for ``consumers`` streams of ``backend`` to take ``n`` messages between them."""
    got = 0
    finished: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def consumer() -> None:
        nonlocal got
        stream = backend.consume()
        try:
            async for _ in stream:
                got += 1
                if got % 500 == 0:
                    advance(500)
                if got >= n and not finished.done():
                    finished.set_result(time.perf_counter())
        finally:
            await stream.aclose()

    return await seconds_until(finished, (consumer() for _ in range(consumers)))
