"""Planted bugs: builds of the backend with one known bug switched on, to measure the
simulator's power to find it.

Each bug is a patch applied only while its seeds run. The patches that reach into the consume
engine name the engine's private methods in one place (:data:`_ENGINE`), so re-targeting them to
a rewritten engine means editing that one place. A bug counts as *found* on a seed when its
target category shows more anomalies than the unmodified backend shows on the same seed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

from abe_redis import ReceivedMessage, RedisStreamsBackend
from abe_redis_testing.simulation import SimulationResult, run_seed

_ENGINE = "abe_redis._delivery.GroupReader"
"""Where the consume engine's reader lives today (the pre-lease engine)."""


class _AckFirst(RedisStreamsBackend):
    """Acknowledges each message before the handler runs."""

    def consume(self, *, group: str | None = None) -> AsyncGenerator[ReceivedMessage]:
        inner = super().consume(group=group)

        async def messages() -> AsyncGenerator[ReceivedMessage]:
            try:
                async for message in inner:
                    await self.ack(message)
                    yield message
            finally:
                await inner.aclose()

        return messages()


def _ack_first(url: str, **settings: Any) -> RedisStreamsBackend:
    return _AckFirst.from_url(url, **settings)


@contextlib.contextmanager
def _no_patch() -> Iterator[None]:
    yield


@contextlib.contextmanager
def _orphans_counted() -> Iterator[None]:
    """Taking back entries whose read reply was lost counts as a delivery (XCLAIM without
    JUSTID), although no handler saw them."""
    original = _engine_attr("_replay_own_pending")

    async def replay(self: Any) -> bool:
        self._count_replays = True
        result: bool = await original(self)
        return result

    with mock.patch(f"{_ENGINE}._replay_own_pending", replay):
        yield


@contextlib.contextmanager
def _orphans_ignored() -> Iterator[None]:
    """Only the replay at start runs; entries orphaned later by a lost read reply wait for
    another consumer's claim after claim_idle_ms."""
    original = _engine_attr("_replay_own_pending")

    async def replay(self: Any) -> bool:
        if getattr(self, "_planted_started", False):
            return False
        result: bool = await original(self)
        if not result:
            self._planted_started = True
        return result

    with mock.patch(f"{_ENGINE}._replay_own_pending", replay):
        yield


@contextlib.contextmanager
def _group_not_recreated() -> Iterator[None]:
    """After a flush, the reader backs off and retries, but never creates its group again."""
    from abe_redis._delivery import backoff_sleep

    async def recreate(self: Any, exc: Exception) -> None:
        self._failures += 1
        await backoff_sleep(self._failures)

    with mock.patch(f"{_ENGINE}._recreate_groups", recreate):
        yield


@contextlib.contextmanager
def _names_reused() -> Iterator[None]:
    """Every consumer of a backend gets the same name."""

    def name(self: Any) -> tuple[str, bool]:
        return (self.config.consumer_name or "consumer", False)

    with mock.patch.object(RedisStreamsBackend, "_new_consumer_name", name):
        yield


def _engine_attr(name: str) -> Any:
    module, _, cls = _ENGINE.rpartition(".")
    return getattr(getattr(__import__(module, fromlist=[cls]), cls), name)


@dataclass(frozen=True)
class PlantedBug:
    name: str
    target: str
    """The anomaly category that shows the bug."""
    workload: str
    faults: tuple[str, ...]
    patch: Callable[[], contextlib.AbstractContextManager[None]] = _no_patch
    factory: Callable[..., RedisStreamsBackend] | None = None

    def run(self, seed: int) -> SimulationResult:
        with self.patch():
            return run_seed(seed, workload=self.workload, faults=self.faults, backend_factory=self.factory)


PLANTED: tuple[PlantedBug, ...] = (
    PlantedBug(
        "ack before the handler finishes", "lost", "fast", ("kill", "handler-error"), factory=_ack_first
    ),
    PlantedBug(
        "claims of unseen messages counted as deliveries",
        "count_skipped",
        "fast",
        ("lost-reply",),
        patch=_orphans_counted,
    ),
    PlantedBug("group not recreated after a flush", "lost", "fast", ("restart",), patch=_group_not_recreated),
    PlantedBug("consumer names reused", "concurrently_handled", "shared", (), patch=_names_reused),
    PlantedBug(
        "entries orphaned by a lost reply ignored",
        "count_skipped",
        "fast",
        ("lost-reply",),
        patch=_orphans_ignored,
    ),
)
NOT_YET_PLANTED = ("no lease refresh on prefetched messages",)
"""Needs the lease of the rewritten engine: today's engine has no refresh to switch off (its
prefetched messages are claimed away anyway: ``abe-redis simulate --workload prefetch``)."""


@dataclass(frozen=True)
class Found:
    bug: str
    seed: int | None
    """The first seed that shows the bug; ``None``: not within the budget."""
    seeds_run: int
    seconds: float
    baseline_count: int
    planted_count: int


def seeds_to_first_failure(bug: PlantedBug, *, max_seeds: int = 200, budget_s: float = 60.0) -> Found:
    started = time.perf_counter()
    for seed in range(max_seeds):
        planted = bug.run(seed)
        count = planted.verdict.counts[bug.target]
        if count:
            baseline = run_seed(seed, workload=bug.workload, faults=bug.faults).verdict.counts[bug.target]
            if count > baseline:
                return Found(bug.name, seed, seed + 1, time.perf_counter() - started, baseline, count)
        if time.perf_counter() - started > budget_s:
            return Found(bug.name, None, seed + 1, time.perf_counter() - started, 0, 0)
    return Found(bug.name, None, max_seeds, time.perf_counter() - started, 0, 0)


if __name__ == "__main__":
    for planted_bug in PLANTED:
        print(seeds_to_first_failure(planted_bug))
