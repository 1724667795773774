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
from asyncio import base_events
from collections.abc import Iterator
from typing import Any

__all__ = ["EPOCH", "SimLoop", "SimulationDeadlock", "SimulationStuck", "virtual_world"]

EPOCH = 1_767_225_600.0
"""What ``time.time()`` reads at virtual time 0 (2026-01-01 UTC): a fixed, plausible date."""


# The base loop's rule for when to sweep cancelled timers out of the heap, kept so that timers
# behave as they do on any loop.
_MIN_SCHEDULED: int = base_events._MIN_SCHEDULED_TIMER_HANDLES  # type: ignore[attr-defined]
_MIN_CANCELLED_FRACTION: float = base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION  # type: ignore[attr-defined]


class SimulationDeadlock(RuntimeError):
    """Every task waits and no timer is due: real time would pass forever."""


class SimulationStuck(RuntimeError):
    """Callbacks keep running while no virtual time passes: a busy loop, which on a real clock
    would burn a core."""


TIME_LIMIT_S = 900.0
"""Virtual seconds after which a run counts as stuck: a healthy 200-message schedule ends within a
minute, and a loop that keeps sleeping (a retry that never gives up) would otherwise run, and
grow its trace, forever."""

SPIN_LIMIT = 200_000
"""Loop iterations without virtual time passing before a run counts as stuck (a whole
200-message schedule takes a few thousand iterations)."""


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

    def __init__(self, rng: random.Random, *, shuffle: bool = True, time_limit: float | None = None) -> None:
        super().__init__()
        self._now = 0.0
        self.time_limit = TIME_LIMIT_S if time_limit is None else time_limit
        self._rng = rng
        self._shuffle = shuffle
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

    def _run_once(self) -> None:
        """One iteration of the base loop's ``_run_once``, without the selector: when nothing is
        ready, jump to the next timer instead of waiting for it; then run the ready callbacks in
        the order the seed's generator shuffles them into."""
        # asyncio's private queues: the deque of ready handles and the heap of timers.
        base: Any = self
        ready = base._ready
        scheduled = base._scheduled
        count = len(scheduled)
        if count > _MIN_SCHEDULED and base._timer_cancelled_count / count > _MIN_CANCELLED_FRACTION:
            kept = []
            for handle in scheduled:
                if handle._cancelled:
                    handle._scheduled = False
                else:
                    kept.append(handle)
            heapq.heapify(kept)
            base._scheduled = scheduled = kept
            base._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0]._cancelled:
                base._timer_cancelled_count -= 1
                heapq.heappop(scheduled)._scheduled = False
        self.iterations += 1
        if not ready and not base._stopping:
            if not scheduled:
                raise SimulationDeadlock("no task can make progress and no timer is due")
            when = scheduled[0]._when
            if when > self.time_limit:
                raise SimulationStuck(f"virtual time would pass {self.time_limit:.0f}s")
            if when > self._now:
                self._now = when
                self._spins = 0
            else:
                self._spin()
        else:
            self._spin()
        now = self._now
        # Move every due timer into the ready queue before the shuffle, so the shuffle sees them
        # (the base loop would append them last).
        while scheduled and scheduled[0]._when <= now:
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            ready.append(handle)
        if self._shuffle and len(ready) > 1:
            handles = list(ready)
            self._rng.shuffle(handles)
            ready.clear()
            ready.extend(handles)
        end = now + base._clock_resolution
        while scheduled and scheduled[0]._when < end:
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            ready.append(handle)
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()

    def _spin(self) -> None:
        self._spins += 1
        if self._spins > SPIN_LIMIT:
            self._spins = 0
            raise SimulationStuck(f"{SPIN_LIMIT} loop iterations at virtual time {self._now:.3f}s")

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
