"""Profiles (how much traffic, how long the faults) and the client settings every scenario uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ClientSettings:
    """Short timeouts so that faults are noticed within seconds, not the defaults' minutes."""

    socket_timeout: float = 2.0
    socket_connect_timeout: float = 2.0
    block_ms: int = 300
    claim_idle_ms: int = 1500
    claim_interval_ms: int = 500
    discovery_interval_ms: int = 500
    retry_attempts: int = 2
    retry_backoff_cap: float = 0.5
    batch_size: int = 50
    publish_timeout: float = 5.0
    """A publish still running after this long is abandoned and counted as failed."""

    def backend_kwargs(self) -> dict[str, Any]:
        data = asdict(self)
        del data["publish_timeout"]
        return data


@dataclass(frozen=True)
class Profile:
    name: str
    rate: float
    """Publishes per second (one producer, one publish at a time)."""
    pre_s: float
    """Traffic before the fault."""
    fault_s: float
    """Length of a fault that has a length (outages, toxics)."""
    post_s: float
    """Traffic after the fault ends, before the producer stops."""
    consumers: int
    padding: int = 200
    """Bytes of filler per payload, so bandwidth and slicing have something to cut."""
    burst: int = 100
    """Messages published at once in the "reset peer during a batch" scenario."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    # CI on every push: every scenario, a few hundred messages each, 1-2 s faults.
    "quick": Profile("quick", rate=100, pre_s=1.5, fault_s=2.0, post_s=1.5, consumers=2),
    # Nightly: more traffic, longer faults, one more consumer.
    "long": Profile("long", rate=150, pre_s=4.0, fault_s=6.0, post_s=5.0, consumers=3, burst=400),
}

SETTINGS = ClientSettings()
