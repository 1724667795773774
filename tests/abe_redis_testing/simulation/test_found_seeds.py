"""Seeds the simulator found failing, kept as replays: each names the engine bug it caught.

A seed replays one exact schedule only for the same simulator and backend; when either changes
a seed may stop exercising its bug, but it must never fail again. The focused regression test
for each bug lives beside the engine's other tests (named in each docstring).

These seeds were found with fakeredis as the server, before the lean model became the default;
they replay on fakeredis, the schedules they were found on (the model's replies come at other
moments, so the same seed makes another schedule there).
"""

from __future__ import annotations

import pytest

from abe_redis_testing.simulation import FAULT_KINDS, replay_seed

HANDLERS = ("latency", "slow-handler", "slow-consumer", "handler-error")

FOUND: dict[tuple[int, tuple[str, ...]], str] = {
    (8, FAULT_KINDS): "an orphan of a lost read was taken back with min-idle 0 just after a peer claimed it",
    (30, FAULT_KINDS): "verification renewed with min-idle 0 and stole back what a peer had just "
    "claimed; entries lost to a peer during intake were handed out anyway",
    (124, FAULT_KINDS): "verification renewed with min-idle 0 and stole back what a peer had just "
    "claimed; a consumer whose name passed to another went on taking entries under it",
    (127, FAULT_KINDS): "a DEL of a name lock resent after a lost reply freed the name another "
    "consumer had just taken; a third took it too, and both resumed the same entries",
    (133, FAULT_KINDS): "an entry leased while its intake stalled was handed out after a peer claimed it",
    (366, FAULT_KINDS): "the registry version counted again from 1 after a restart without persistence "
    "and came back to a value a consumer had cached: it never noticed the loss nor put back a stream "
    "that a peer's XGROUP CREATE MKSTREAM had recreated (so publishes took the NOMKSTREAM path and "
    "registered nothing), and a group that had not met that stream never read it",
    (76, FAULT_KINDS): "redis-py resent a lease renewal whose reply was lost after reconnecting, "
    "when a peer had rightly claimed the entry, and stole it back",
    (77, FAULT_KINDS): "redis-py resent a lease renewal whose reply was lost after reconnecting, "
    "when a peer had rightly claimed the entry, and stole it back",
    (153, FAULT_KINDS): "a consumer cut off past its name's TTL handed out its buffer: a consumer "
    "started meanwhile had taken the name and resumed the entries, which verification read as its own",
    (42, FAULT_KINDS): "over the lease client, which never resends, lost XPENDING replies failed "
    "the verification before each release on close; entries left to lapse were counted once more "
    "per claim and falsely dead-lettered",
    (111, FAULT_KINDS): "a counting claim of a previous incarnation's entries lost its reply; the "
    "consumer looked again and claimed them once more, counting a delivery no handler saw, and one "
    "was dead-lettered after 3 handler deliveries of 4",
    (76, HANDLERS): "a sweep deleted a gone name from the group just after a restarted consumer "
    "took the name and read an entry under it: the entry left the pending list, never handled",
}


@pytest.mark.parametrize(
    ("seed", "faults"), sorted(FOUND), ids=lambda v: f"seed-{v}" if isinstance(v, int) else ",".join(v)
)
def test_seed_stays_fixed(seed: int, faults: tuple[str, ...]) -> None:
    """The focused tests: tests/abe_redis/test_lease.py, test_recovery.py, test_membership.py,
    test_registry.py."""
    replay_seed(seed, workload="default", faults=faults, server="fakeredis")


FOUND_ON_MODEL: dict[tuple[int, tuple[str, ...]], str] = {
    (818, FAULT_KINDS): "a consumer listed a stream just before a restart without persistence, then "
    "created its group with MKSTREAM after it: the stream came back empty and unregistered, the "
    "publisher's NOMKSTREAM path found it and registered nothing, and consumers started later never "
    "read it",
    (843, FAULT_KINDS): "the same as 818, on both servers: a consumer killed right after recreating "
    "two streams with MKSTREAM (131 lost)",
    (793, FAULT_KINDS): "a refresh verified a stale stream over a lossy link for longer than the "
    "other stream's lease; a peer claimed an entry of that one and handed it out at count 3, the "
    "refresh then renewed it blind (min-idle 0), stealing it back, and released it with its count "
    "set back to 1: handed out again at 2",
    (868, FAULT_KINDS): "on a lossy link a close's release failed three times in 0.15 s and was "
    "abandoned; an entry never handed out kept its take's count, the peer that claimed it counted "
    "again, and it was dead-lettered at count 5 after three handler deliveries",
    (710, FAULT_KINDS): "after a restart a publish found its stream gone (NOMKSTREAM), wrote it "
    "again and lost the registration to a partition; the stream was still remembered as "
    "registered, so later publishes took the one-command path and never registered it (126 lost; "
    "found with a first version of the fix for 793, the bug was there before)",
}


@pytest.mark.parametrize(
    ("seed", "faults"),
    sorted(FOUND_ON_MODEL),
    ids=lambda v: f"seed-{v}" if isinstance(v, int) else ",".join(v),
)
def test_seed_found_on_the_model_stays_fixed(seed: int, faults: tuple[str, ...]) -> None:
    """Seeds found with the lean model as the server (the default); focused tests as above."""
    replay_seed(seed, workload="default", faults=faults, server="model")
