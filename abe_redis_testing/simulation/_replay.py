"""Replaying a seed inside a test: ``replay_seed(N)`` raises with the anomalies and the trace."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._faults import FAULT_KINDS
from ._runner import SimulationResult, run_seed

__all__ = ["SimulationFailure", "replay_seed"]


class SimulationFailure(AssertionError):
    """A seed's history has anomalies in failing categories."""

    def __init__(self, result: SimulationResult) -> None:
        self.result = result
        verdict = result.verdict
        lines = [f"seed {result.seed}: {verdict.failures} (faults on: {result.plan.describe()})"]
        for category in verdict.failures:
            lines += [f"  {category}: {example}" for example in verdict.examples.get(category, ())]
        if result.trace:
            lines.append("last trace lines:")
            lines += [f"  {line}" for line in result.trace[-40:]]
        lines.append(f"replay: {result.replay()}")
        super().__init__("\n".join(lines))


def replay_seed(
    seed: int, *, workload: str = "default", faults: Iterable[str] = FAULT_KINDS, **options: Any
) -> SimulationResult:
    """Run ``seed`` as :func:`~abe_redis_testing.simulation.run_seed` does and raise
    :class:`SimulationFailure` if it fails; returns the result otherwise.

    The pattern for keeping a seed the simulator found::

        def test_seed_1234_stays_fixed() -> None:
            replay_seed(1234, workload="default", faults=("kill", "lost-reply"))
    """
    result = run_seed(seed, workload=workload, faults=faults, keep_trace=True, **options)
    if not result.ok:
        raise SimulationFailure(result)
    return result
