"""Backend timings for tests: short enough that redelivery and discovery happen within a
test's patience, long enough that a loaded 2-core CI machine does not trip them."""

from __future__ import annotations

from typing import Any

FAST_SETTINGS: dict[str, Any] = {
    "block_ms": 100,
    "discovery_interval_ms": 100,
    "claim_idle_ms": 500,
    "claim_interval_ms": 100,
}
