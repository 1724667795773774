"""Planted bugs: builds of the backend with one known bug switched on, to measure the
simulator's power to find it.

Each bug is a patch applied only while its seeds run. The patches that reach into the consume
engine name its private collaborators in one place (the constants below), so re-targeting them
to a rewritten engine means editing that one place. A bug counts as *found* on a seed when its
target category shows more anomalies than the unmodified backend shows on the same seed.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

from abe_redis import ReceivedMessage, RedisStreamsBackend
from abe_redis_testing.simulation import SimulationResult, run_seed

# The engine's private collaborators the patches below switch off, named in one place: when the
# engine is rewritten, re-target these.
_RECOVERY = "abe_redis._recovery.Recovery"
_LEASES = "abe_redis._lease.LeaseTable"
_READER = "abe_redis._delivery.GroupReader"
_MEMBERSHIP = "abe_redis._membership.Membership"


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


def _original(target: str, name: str) -> Any:
    module, _, cls = target.rpartition(".")
    return getattr(getattr(importlib.import_module(module), cls), name)


@contextlib.contextmanager
def _orphans_counted() -> Iterator[None]:
    """Taking back entries whose read reply was lost counts a delivery (XCLAIM without JUSTID),
    although no handler saw them."""
    original = _original(_RECOVERY, "own_pending")

    async def own_pending(self: Any, streams: list[str], room: int, *, counted: bool) -> Any:
        return await original(self, streams, room, counted=True)

    with mock.patch(f"{_RECOVERY}.own_pending", own_pending):
        yield


@contextlib.contextmanager
def _orphans_ignored() -> Iterator[None]:
    """Only the take-back at start runs; entries orphaned later by a lost read reply wait for a
    peer's sweep after claim_idle_ms (which counts a delivery)."""
    original = _original(_RECOVERY, "own_pending")

    async def own_pending(self: Any, streams: list[str], room: int, *, counted: bool) -> Any:
        return await original(self, streams, room, counted=counted) if counted else []

    with mock.patch(f"{_RECOVERY}.own_pending", own_pending):
        yield


@contextlib.contextmanager
def _no_prefetch_refresh() -> Iterator[None]:
    """The lease heartbeat refreshes only the message in the handler's hands, not the ones
    read ahead and waiting in the buffer."""

    async def refresh(self: Any) -> list[tuple[str, str]]:
        streams = self.streams()
        async with self._client.pipeline(transaction=False) as pipe:
            for stream in streams:
                handed = [i for i, lease in self._held[stream].items() if lease.handed]
                if handed:
                    pipe.xclaim(stream, self._group, self.consumer, 0, handed, justid=True)
            await pipe.execute(raise_on_error=False)
        return []

    with (
        mock.patch(f"{_LEASES}.refresh", refresh),
        mock.patch(f"{_LEASES}.stale", lambda self, stream, now=None: False),
    ):
        yield


@contextlib.contextmanager
def _group_not_recreated() -> Iterator[None]:
    """After a flush the reader backs off and retries, but never creates its group again."""

    async def recreate(self: Any) -> None:
        return None

    with mock.patch(f"{_READER}._recreate_groups", recreate):
        yield


@contextlib.contextmanager
def _names_reused() -> Iterator[None]:
    """A consumer takes the first candidate name whether or not a live consumer holds it."""

    async def join(self: Any) -> str:
        name = str(next(iter(self._candidates())))
        self.name = name
        # As the real join does once it holds the name: without it the consumer counts its name
        # as lapsed (never confirmed) and hands out nothing, which hides the bug.
        self._confirmed_at = time.monotonic()
        await self._announce()
        return name

    with mock.patch(f"{_MEMBERSHIP}.join", join):
        yield


@dataclass(frozen=True)
class PlantedBug:
    name: str
    target: str
    """The anomaly category that shows the bug."""
    workload: str
    faults: tuple[str, ...]
    patch: Callable[[], contextlib.AbstractContextManager[None]] = _no_patch
    factory: Callable[..., RedisStreamsBackend] | None = None

    def run(self, seed: int, *, server: str = "model") -> SimulationResult:
        with self.patch():
            return run_seed(
                seed, workload=self.workload, faults=self.faults, backend_factory=self.factory, server=server
            )


PLANTED: tuple[PlantedBug, ...] = (
    PlantedBug(
        "ack before the handler finishes", "lost", "fast", ("kill", "handler-error"), factory=_ack_first
    ),
    PlantedBug(
        "no lease refresh on prefetched messages",
        "concurrently_handled",
        "prefetch",
        (),
        patch=_no_prefetch_refresh,
    ),
    PlantedBug(
        "claims of unseen messages counted as deliveries",
        "count_skipped",
        "fast",
        ("lost-reply",),
        patch=_orphans_counted,
    ),
    PlantedBug("group not recreated after a flush", "lost", "fast", ("restart",), patch=_group_not_recreated),
    PlantedBug(
        "consumer names reused", "concurrently_handled", "shared", ("handler-error",), patch=_names_reused
    ),
    PlantedBug(
        "entries orphaned by a lost reply ignored",
        "count_skipped",
        "fast",
        ("lost-reply",),
        patch=_orphans_ignored,
    ),
)


@dataclass(frozen=True)
class Found:
    bug: str
    seed: int | None
    """The first seed that shows the bug; ``None``: not within the budget."""
    seeds_run: int
    seconds: float
    baseline_count: int
    planted_count: int


def seeds_to_first_failure(
    bug: PlantedBug, *, max_seeds: int = 200, budget_s: float = 60.0, server: str = "model"
) -> Found:
    started = time.perf_counter()
    for seed in range(max_seeds):
        planted = bug.run(seed, server=server)
        count = planted.verdict.counts[bug.target]
        if count:
            unplanted = run_seed(seed, workload=bug.workload, faults=bug.faults, server=server)
            baseline = unplanted.verdict.counts[bug.target]
            if count > baseline:
                return Found(bug.name, seed, seed + 1, time.perf_counter() - started, baseline, count)
        if time.perf_counter() - started > budget_s:
            return Found(bug.name, None, seed + 1, time.perf_counter() - started, 0, 0)
    return Found(bug.name, None, max_seeds, time.perf_counter() - started, 0, 0)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="seeds until each planted bug is found")
    parser.add_argument("--server", default="model", help="model (default) or fakeredis")
    arguments = parser.parse_args()
    for planted_bug in PLANTED:
        print(seeds_to_first_failure(planted_bug, server=arguments.server), flush=True)
