"""What a simulated run does: publishers, consumer processes in groups, and their handlers.

A named workload gives ranges; the seed picks a :class:`Workload` inside them.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["WORKLOADS", "Workload", "choose_workload"]


@dataclass(frozen=True, slots=True)
class Workload:
    messages: int = 200
    streams: int = 2
    groups: int = 1
    processes_per_group: int = 2
    consumers_per_process: int = 1
    """Consumers sharing one backend instance (and, with ``consumer_name``, its name scheme)."""
    consumer_name: str | None = None
    publishers: int = 2
    publish_gap_ms: float = 5.0
    handler_ms: tuple[float, float] = (1.0, 20.0)
    settings: dict[str, Any] = field(default_factory=dict)
    """Backend settings (``RedisConfig`` fields)."""

    @property
    def claim_idle_s(self) -> float:
        return float(self.settings["claim_idle_ms"]) / 1000

    @property
    def max_deliveries(self) -> int:
        return int(self.settings["max_deliveries"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_BASE_SETTINGS: dict[str, Any] = {
    "claim_idle_ms": 1000,
    "block_ms": 200,
    "discovery_interval_ms": 200,
    "max_deliveries": 4,
    "batch_size": 10,
}


def _default(rng: random.Random, messages: int) -> Workload:
    per_process = rng.choice((1, 1, 2))
    return Workload(
        messages=messages,
        streams=rng.choice((1, 2, 3)),
        groups=rng.choice((1, 1, 2)),
        processes_per_group=rng.choice((1, 2, 3)) if per_process > 1 else rng.choice((2, 3)),
        consumers_per_process=per_process,
        consumer_name=rng.choice((None, "w")),
        publishers=rng.choice((1, 2)),
        publish_gap_ms=rng.choice((1.0, 5.0, 10.0)),
        handler_ms=rng.choice(((1.0, 10.0), (5.0, 50.0), (50.0, 150.0))),
        settings={**_BASE_SETTINGS, "batch_size": rng.choice((1, 5, 10, 30))},
    )


def _prefetch(rng: random.Random, messages: int) -> Workload:
    """Issue 7's first repro: 150 ms handlers and a claim timeout a batch outlasts."""
    return Workload(
        messages=messages,
        streams=1,
        processes_per_group=2,
        publish_gap_ms=1.0,
        handler_ms=(100.0, 200.0),
        settings={**_BASE_SETTINGS, "batch_size": rng.choice((10, 30))},
    )


def _shared(rng: random.Random, messages: int) -> Workload:
    """Several consumers on one backend instance under one configured name."""
    return Workload(
        messages=messages,
        streams=rng.choice((1, 2)),
        processes_per_group=rng.choice((1, 2)),
        consumers_per_process=3,
        consumer_name="w",
        handler_ms=(5.0, 50.0),
        settings={**_BASE_SETTINGS, "batch_size": rng.choice((1, 5, 10))},
    )


def _fast(rng: random.Random, messages: int) -> Workload:
    """Quick handlers, one consumer per backend: no batch outlasts the claim timeout."""
    return Workload(
        messages=messages,
        streams=rng.choice((1, 2)),
        processes_per_group=rng.choice((2, 3)),
        publishers=rng.choice((1, 2)),
        handler_ms=(1.0, 10.0),
        settings={**_BASE_SETTINGS, "batch_size": rng.choice((1, 5, 10))},
    )


WORKLOADS = {"default": _default, "fast": _fast, "prefetch": _prefetch, "shared": _shared}
"""``default`` varies everything; ``fast`` has quick handlers and one consumer per backend;
``prefetch`` is a slow handler behind a batch; ``shared`` is three consumers per backend
instance with a configured consumer name."""


def choose_workload(rng: random.Random, name: str, *, messages: int = 200) -> Workload:
    try:
        make = WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}") from None
    return make(rng, messages)
