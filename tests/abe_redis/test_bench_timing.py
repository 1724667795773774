"""The consume timer the bench's single-server and cluster workloads share."""

from __future__ import annotations

import asyncio
import time

import pytest

from abe_redis._bench_timing import seconds_until


async def _wait(cancelled: list[str], name: str) -> None:
    """A worker that never ends by itself; records its name when it is cancelled."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        cancelled.append(name)
        raise


async def test_the_time_runs_to_the_moment_the_workers_report_and_they_are_cancelled() -> None:
    finished: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    cancelled: list[str] = []
    asyncio.get_running_loop().call_later(0.05, lambda: finished.set_result(time.perf_counter()))

    seconds = await seconds_until(finished, (_wait(cancelled, f"w{i}") for i in range(3)))
    assert 0.04 <= seconds < 1.0
    assert sorted(cancelled) == ["w0", "w1", "w2"]


async def test_the_workers_are_cancelled_when_the_wait_is() -> None:
    finished: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    cancelled: list[str] = []

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(seconds_until(finished, (_wait(cancelled, "w") for _ in range(2))), 0.05)
    assert cancelled == ["w", "w"]


async def test_a_worker_that_fails_ends_the_wait_with_its_error() -> None:
    finished: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    cancelled: list[str] = []

    async def broken() -> None:
        raise ValueError("no consumer from a cluster in this version")

    with pytest.raises(ValueError, match="no consumer"):
        await asyncio.wait_for(seconds_until(finished, [broken(), _wait(cancelled, "waiting")]), 5)
    assert cancelled == ["waiting"]
