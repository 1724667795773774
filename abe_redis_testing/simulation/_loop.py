"""A seeded asyncio event loop on a virtual clock, and the patches that keep wall time out.

:class:`SimLoop` never waits: when nothing is ready it jumps its clock to the next timer, so a
30 s claim timeout costs nothing. Every iteration it shuffles the callbacks that are ready with
the seed's generator, so the interleaving of tasks (and of replies on different connections) is
one of many possible schedules, chosen by the seed and replayed exactly by the same seed.

:func:`virtual_world` points ``time.time``/``time.monotonic``, ``uuid.uuid4``, the ``random``
module, ``os.getpid`` and ``socket.gethostname`` at the simulation for the duration of a run:
the backend, redis-py and fakeredis all read those (stream IDs, idle times, backoff jitter,
consumer names), and one real clock reading would make a run unrepeatable.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

__all__ = ["EPOCH", "SimLoop", "SimulationDeadlock", "SimulationStuck", "virtual_world"]

EPOCH = 1_767_225_600.0
"""What ``time.time()`` reads at virtual time 0 (2026-01-01 UTC): a fixed, plausible date."""


class SimulationDeadlock(RuntimeError):
    """Every task waits and no timer is due: real time would pass forever."""


class SimulationStuck(RuntimeError):
    """Callbacks keep running while no virtual time passes: a busy loop, which on a real clock
    would burn a core."""


SPIN_LIMIT = 200_000
"""Loop iterations without virtual time passing before a run counts as stuck (a whole
200-message schedule takes a few thousand iterations)."""


class _VirtualSelector:
    """Stands in for the I/O selector: there is no I/O, only timers and the ready queue."""

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        self._loop._advance(timeout)
        return []

    def close(self) -> None:
        pass


class _SimTask(asyncio.Task[Any]):
    """A task whose hash is its creation number, not its address: code that keeps tasks in a
    ``set`` and iterates it (``gather(*tasks)``) then visits them in the same order every run."""

    _sim_hash = 0

    def __hash__(self) -> int:
        return self._sim_hash


class _SimFuture(asyncio.Future[Any]):
    _sim_hash = 0

    def __hash__(self) -> int:
        return self._sim_hash


class SimLoop(asyncio.BaseEventLoop):
    """An event loop whose ``time()`` is virtual and whose scheduling choices come from ``rng``."""

    def __init__(self, rng: random.Random, *, shuffle: bool = True) -> None:
        super().__init__()
        self._now = 0.0
        self._rng = rng
        self._shuffle = shuffle
        self._selector = _VirtualSelector(self)
        self.iterations = 0
        self._spins = 0
        self._created = 0
        self.set_task_factory(self._new_task)

    def _new_task(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = _SimTask(coro, loop=loop, **kwargs)
        self._created += 1
        task._sim_hash = self._created
        return task

    def create_future(self) -> asyncio.Future[Any]:
        future = _SimFuture(loop=self)
        self._created += 1
        future._sim_hash = self._created
        return future

    def time(self) -> float:
        return self._now

    def _advance(self, timeout: float | None) -> None:
        # asyncio's private queues: the deque of ready handles and the heap of timers.
        ready: Any = self._ready  # type: ignore[attr-defined]
        scheduled: list[Any] = self._scheduled  # type: ignore[attr-defined]
        self.iterations += 1
        if timeout is None:
            raise SimulationDeadlock("no task can make progress and no timer is due")
        if timeout > 0 and scheduled:
            # Jump straight to the next timer, not to now + timeout: no float drift.
            self._now = max(self._now, scheduled[0]._when)
            self._spins = 0
        else:
            self._spins += 1
            if self._spins > SPIN_LIMIT:
                self._spins = 0
                raise SimulationStuck(f"{SPIN_LIMIT} loop iterations at virtual time {self._now:.3f}s")
        # Move every due timer into the ready queue ourselves, so the shuffle below sees them
        # (the base loop would append them after this returns, always last).
        while scheduled and scheduled[0]._when <= self._now:
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            ready.append(handle)
        if self._shuffle and len(ready) > 1:
            handles = list(ready)
            self._rng.shuffle(handles)
            ready.clear()
            ready.extend(handles)

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        # call_soon_threadsafe appends to the ready queue; nothing sleeps, so nothing to wake.
        pass


@contextlib.contextmanager
def virtual_world(loop: SimLoop, seed: int) -> Iterator[None]:
    """Within the block, clocks read ``loop``'s virtual time and randomness derives from ``seed``."""
    names = random.Random(f"{seed}:names")
    saved_random = random.getstate()
    saved = (
        time.time,
        time.monotonic,
        time.time_ns,
        time.monotonic_ns,
        uuid.uuid4,
        os.getpid,
        socket.gethostname,
    )

    def wall() -> float:
        return EPOCH + loop._now

    def monotonic() -> float:
        return loop._now

    def uuid4() -> uuid.UUID:
        return uuid.UUID(int=names.getrandbits(128), version=4)

    random.seed(f"{seed}:random")
    time.time = wall
    time.monotonic = monotonic
    time.time_ns = lambda: int(wall() * 1e9)
    time.monotonic_ns = lambda: int(loop._now * 1e9)
    uuid.uuid4 = uuid4
    os.getpid = lambda: 4242
    socket.gethostname = lambda: "sim"
    try:
        yield
    finally:
        (
            time.time,
            time.monotonic,
            time.time_ns,
            time.monotonic_ns,
            uuid.uuid4,
            os.getpid,
            socket.gethostname,
        ) = saved
        random.setstate(saved_random)
