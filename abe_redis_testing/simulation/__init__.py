"""Deterministic simulation of the backend: a seeded scheduler, a virtual clock, a simulated
network with faults in front of an in-process Redis (a lean model of the commands the backend
sends, or fakeredis), and the history checker.

One seed fixes every scheduling choice, clock reading, fault and name, so a failing schedule
replays exactly: ``abe-redis simulate --seed N`` or :func:`replay_seed` in a test.
See ``docs/simulation.md``.
"""

from __future__ import annotations

from ._faults import FAULT_KINDS, FaultPlan, parse_faults
from ._history import CATEGORIES, DEFAULT_FAILING, DeadLettered, Handling, History, Verdict, check
from ._loop import SimLoop, SimulationDeadlock, SimulationStuck, virtual_world
from ._network import LinkFaults, SimConnection, SimNetwork
from ._replay import SimulationFailure, replay_seed
from ._runner import SERVERS, SimulationResult, replay_command, run_seed
from ._workload import WORKLOADS, Workload

__all__ = [
    "CATEGORIES",
    "DEFAULT_FAILING",
    "FAULT_KINDS",
    "SERVERS",
    "WORKLOADS",
    "DeadLettered",
    "FaultPlan",
    "Handling",
    "History",
    "LinkFaults",
    "SimConnection",
    "SimLoop",
    "SimNetwork",
    "SimulationDeadlock",
    "SimulationFailure",
    "SimulationResult",
    "SimulationStuck",
    "Verdict",
    "Workload",
    "check",
    "parse_faults",
    "replay_command",
    "replay_seed",
    "run_seed",
    "virtual_world",
]
