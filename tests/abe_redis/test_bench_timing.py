"""The consume timer the bench's single-server and cluster workloads share."""

from __future__ import annotations

import asyncio
import time

import pytest

from abe_redis._bench_timing import seconds_until


async def test_the_time_runs_to_the_moment_the_workers_report_and_they_are_cancelled() -> None:
    finished = asyncio.get_running_loop().create_future()
    cancelled: list[int] = []

    async def worker(index: int) -> None:
        try:
            if index == 0:
                await asyncio.sleep(0.05)
                finished.set_result(time.perf_counter())
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(index)
            raise

    seconds = await seconds_until(finished, (worker(i) for i in range(3)))
    assert 0.04 <= seconds < 1.0
    assert sorted(cancelled) == [0, 1, 2]


async def test_the_workers_are_cancelled_when_the_wait_is() -> None:
    finished: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    cancelled: list[int] = []

    async def worker() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(seconds_until(finished, (worker() for _ in range(2))), 0.05)
    assert cancelled == [1, 1]


async def test_a_worker_that_fails_ends_the_wait_with_its_error() -> None:
    finished: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    cancelled: list[int] = []

    async def broken() -> None:
        raise ValueError("no consumer from a cluster in this version")

    async def waiting() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    with pytest.raises(ValueError, match="no consumer"):
        await asyncio.wait_for(seconds_until(finished, [broken(), waiting()]), 5)
    assert cancelled == [1]
