"""What one scenario run produced: the figures for the report and the verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ._ledger import Recovery, Tally

Verdict = Literal["pass", "fail", "skip", "error"]


@dataclass
class ScenarioResult:
    name: str
    fault: str
    """The fault as a person would describe it, e.g. ``latency 100±50 ms both ways``."""
    verdict: Verdict = "pass"
    problems: list[str] = field(default_factory=list)
    """Why the verdict is not ``pass`` (a skip or error reason, or each broken bound)."""
    notes: list[str] = field(default_factory=list)
    """Observations that do not change the verdict (e.g. duplicates from a destroyed group)."""
    tally: Tally | None = None
    recovery: Recovery | None = None
    recovery_bound_s: float | None = None
    fault_start_s: float | None = None
    fault_end_s: float | None = None
    duration_s: float = 0.0
    consumers: int = 0
    outage: bool = False
    """Redis was unreachable during the fault, so CPU and logging were bounded."""
    cpu_s: float | None = None
    """Process CPU time spent in the fault window."""
    cpu_bound_s: float | None = None
    log_records: int | None = None
    """``abe_redis`` log records emitted in the fault window."""
    log_budget: int | None = None
    log_records_total: int = 0
    bin_s: float = 0.25
    delivered_per_bin: list[int] = field(default_factory=list)
    published_per_bin: list[int] = field(default_factory=list)
    lost_allowed: int = 0
    """Returned publishes that may go undelivered without failing the run: 0, except where a
    scenario documents a loss it cannot prevent (a failover without ``WAIT``) and its bound."""
    gone: int | None = None
    """Returned publishes whose entry was not in the stream after the run (lost by Redis, not by
    a consumer); None when the stream was not read back."""
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, problem: str) -> None:
        if self.verdict == "pass":
            self.verdict = "fail"
        self.problems.append(problem)

    @property
    def ok(self) -> bool:
        return self.verdict in ("pass", "skip")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.tally is not None:
            data["tally"]["lost_ids"] = list(self.tally.lost_ids)
        return data
