"""Chaos scenarios for abe-redis, run as ``python -m chaos --profile quick|long``.

Each scenario runs a producer and a consumer group over a real Redis (through a Toxiproxy proxy),
injects one fault and checks that every publish that returned is delivered at least once,
counting duplicates and measuring recovery. See ``docs/chaos.md``.
"""

from __future__ import annotations

from ._cli import main
from ._harness import ChaosSetupError, Environment, Workload
from ._ledger import Delivery, Ledger, Recovery, Tally, recovery, tally, throughput
from ._profiles import PROFILES, ClientSettings, Profile
from ._report import markdown_table, summary_markdown, throughput_svg, write_report
from ._result import ScenarioResult
from ._scenarios import SCENARIOS, Context, Scenario, run_scenario, scenarios_of

__all__ = [
    "PROFILES",
    "SCENARIOS",
    "ChaosSetupError",
    "ClientSettings",
    "Context",
    "Delivery",
    "Environment",
    "Ledger",
    "Profile",
    "Recovery",
    "Scenario",
    "ScenarioResult",
    "Tally",
    "Workload",
    "main",
    "markdown_table",
    "recovery",
    "run_scenario",
    "scenarios_of",
    "summary_markdown",
    "tally",
    "throughput",
    "throughput_svg",
    "write_report",
]
