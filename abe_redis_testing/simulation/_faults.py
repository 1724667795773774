"""Which faults a seed injects, and when: a :class:`FaultPlan` drawn from the seed."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from ._network import LinkFaults

__all__ = ["FAULT_KINDS", "FaultPlan", "choose_faults", "parse_faults"]

FAULT_KINDS: tuple[str, ...] = (
    "lost-reply",
    "reset",
    "latency",
    "partition",
    "restart",
    "kill",
    "slow-handler",
    "slow-consumer",
    "handler-error",
)
"""``lost-reply``: a reply lost after its command ran; ``reset``: a connection reset before the
command was sent; ``latency``: per-connection delay and per-message jitter (replies on different
connections reorder); ``partition``: connections refused and traffic lost for a while;
``restart``: the server restarted without persistence; ``kill``: a consumer process killed at an
``await`` without cleanup, restarted later; ``slow-handler``: handlers slower than the claim
timeout; ``slow-consumer``: one consumer's handlers ten times slower than its peers';
``handler-error``: handlers that raise, after which the consumer re-enters ``consume()``."""


@dataclass(frozen=True, slots=True)
class FaultPlan:
    kinds: tuple[str, ...] = ()
    links: LinkFaults = field(default_factory=LinkFaults)
    partitions: tuple[tuple[float, float], ...] = ()
    """(at, seconds)"""
    restarts: tuple[float, ...] = ()
    kills: tuple[tuple[float, int, float], ...] = ()
    """(at, process index, restarted after seconds)"""
    slow_handler_rate: float = 0.0
    slow_consumer: int | None = None
    handler_error_rate: float = 0.0
    details: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        return ",".join(self.kinds) or "none"


def parse_faults(text: str) -> tuple[str, ...]:
    """``all``, ``none``, or a comma-separated subset of :data:`FAULT_KINDS`."""
    text = text.strip()
    if text == "all":
        return FAULT_KINDS
    if text in ("", "none"):
        return ()
    kinds = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}, all, none")
    return kinds


def choose_faults(
    rng: random.Random, allowed: Iterable[str], *, horizon: float, processes: int, claim_idle_s: float
) -> FaultPlan:
    """Each allowed kind is switched on with probability 0.6 (at least one is), with its
    parameters drawn from ``rng``; timed faults fall within ``[0, horizon)`` seconds."""
    allowed = tuple(k for k in FAULT_KINDS if k in set(allowed))
    kinds = tuple(k for k in allowed if rng.random() < 0.6)
    if allowed and not kinds:
        kinds = (rng.choice(allowed),)
    on = set(kinds)
    links = LinkFaults(
        lose_reply=rng.uniform(0.002, 0.03) if "lost-reply" in on else 0.0,
        reset_before_send=rng.uniform(0.002, 0.03) if "reset" in on else 0.0,
        base_latency_ms=rng.uniform(0.5, 20.0) if "latency" in on else 0.0,
        jitter_ms=rng.uniform(0.5, 20.0) if "latency" in on else 0.0,
    )
    partitions = (
        tuple(
            sorted(
                (rng.uniform(0.0, horizon), rng.uniform(0.2, 3.0 * claim_idle_s))
                for _ in range(rng.randint(1, 2))
            )
        )
        if "partition" in on
        else ()
    )
    restarts = (rng.uniform(0.1 * horizon, horizon),) if "restart" in on else ()
    kills = (
        tuple(
            sorted(
                (rng.uniform(0.0, horizon), rng.randrange(processes), rng.uniform(0.1, 2.0 * claim_idle_s))
                for _ in range(rng.randint(1, 2))
            )
        )
        if "kill" in on and processes
        else ()
    )
    return FaultPlan(
        kinds=kinds,
        links=links,
        partitions=partitions,
        restarts=restarts,
        kills=kills,
        slow_handler_rate=rng.uniform(0.01, 0.05) if "slow-handler" in on else 0.0,
        slow_consumer=rng.randrange(max(processes, 1)) if "slow-consumer" in on else None,
        handler_error_rate=rng.uniform(0.02, 0.15) if "handler-error" in on else 0.0,
    )
