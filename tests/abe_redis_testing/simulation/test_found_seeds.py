"""Seeds the simulator found failing, kept as replays: each names the engine bug it caught.

A seed replays one exact schedule only for the same simulator and backend; when either changes
a seed may stop exercising its bug, but it must never fail again. The focused regression test
for each bug lives beside the engine's other tests (named in each docstring).
"""

from __future__ import annotations

import pytest

from abe_redis_testing.simulation import replay_seed

FOUND: dict[int, str] = {
    8: "an orphan of a lost read was taken back with min-idle 0 just after a peer claimed it",
    30: "verification renewed with min-idle 0 and stole back what a peer had just claimed; "
    "entries lost to a peer during intake were handed out anyway",
    124: "verification renewed with min-idle 0 and stole back what a peer had just claimed",
    133: "an entry leased while its intake stalled was handed out after a peer claimed it",
}


@pytest.mark.parametrize("seed", sorted(FOUND), ids=lambda seed: f"seed-{seed}")
def test_seed_stays_fixed(seed: int) -> None:
    """tests/abe_redis/test_lease.py and test_recovery.py hold the focused tests for these bugs."""
    replay_seed(seed, workload="default")
