"""A pytest plugin object that records one outcome per test and writes them as JSON at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        # A skip: (path, line, "Skipped: why").
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    text = str(longrepr).strip().splitlines()
    return text[-1] if text else ""


class OutcomeRecorder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.outcomes: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.outcomes.setdefault(
            report.nodeid, {"nodeid": report.nodeid, "outcome": "passed", "reason": "", "duration": 0.0}
        )
        entry["duration"] += report.duration
        if report.when == "setup":
            if report.failed:
                entry.update(outcome="error", reason=_reason(report))
            elif report.skipped:
                entry.update(outcome="skipped", reason=_reason(report))
        elif report.when == "call":
            outcome = "failed" if report.failed else "skipped" if report.skipped else "passed"
            entry.update(outcome=outcome, reason=_reason(report))
        elif report.failed and entry["outcome"] == "passed":
            # A teardown failure after a pass still breaks the contract (e.g. consume() ignored
            # cancellation during cleanup); after a failure the first error stays the headline.
            entry.update(outcome="error", reason=_reason(report))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        data = {"exit_code": int(exitstatus), "outcomes": list(self.outcomes.values())}
        self.path.write_text(json.dumps(data, indent=1), encoding="utf-8")
