"""Scenarios end to end on a real redis-server through the embedded Toxiproxy, and proof that
the checks fail when messages go missing or the process spins while Redis is away."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from chaos import SCENARIOS, Context, Environment, Profile, Workload, main, run_scenario
from chaos import _harness as chaos_harness
from chaos._profiles import SETTINGS

# ~100 messages in about 3 s per scenario.
SMALL = Profile("test", rate=50, pre_s=0.7, fault_s=1.0, post_s=0.7, consumers=2, burst=30)


async def test_latency_scenario_end_to_end(env: Environment) -> None:
    result = await run_scenario(SCENARIOS["latency"], Context(env, SMALL, SETTINGS))
    assert result.verdict == "pass", result.problems
    assert result.tally is not None
    assert result.tally.published >= 40
    assert result.tally.lost == 0
    assert result.tally.delivered >= result.tally.published
    assert result.recovery is not None and result.recovery.resume_s is not None
    assert result.fault_start_s is not None and result.fault_end_s is not None
    assert result.fault_end_s - result.fault_start_s == pytest.approx(SMALL.fault_s, abs=0.3)
    assert sum(result.delivered_per_bin) == result.tally.deliveries
    # The proxy is deleted again: nothing of ours is left on the Toxiproxy.
    assert env.toxiproxy.proxies() == {}


async def test_reset_peer_batch_is_drained_after_the_fault(env: Environment) -> None:
    result = await run_scenario(SCENARIOS["reset-peer"], Context(env, SMALL, SETTINGS))
    assert result.verdict == "pass", result.problems
    assert result.tally is not None and result.tally.lost == 0
    assert any(f"of {SMALL.burst} messages published directly" in note for note in result.notes)


def _no_fault(url: str, *, outage: bool = False) -> Workload:
    # A short bound: the dropped messages are waited for only this long after the producer stops.
    return Workload("control", "none", url, SMALL, SETTINGS, recovery_bound_s=1.0, outage=outage)


async def test_a_consumer_that_drops_messages_fails_the_invariant(
    env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Workload.record

    def dropping(
        self: Workload, consumer: str, msg: int, entry_id: str = "", delivery_count: int = 1
    ) -> None:
        if msg % 10 != 0:  # "handled" without ever reaching the handler
            original(self, consumer, msg, entry_id, delivery_count)

    monkeypatch.setattr(Workload, "record", dropping)

    async def mark(w: Workload) -> None:
        w.fault_started()
        w.fault_ended()

    started = time.monotonic()
    result = await _no_fault(env.direct_url).run(mark)
    assert result.verdict == "fail"
    assert result.tally is not None
    assert result.tally.lost >= 5
    assert all(msg % 10 == 0 for msg in result.tally.lost_ids)
    assert any("not delivered by the end of the run" in p for p in result.problems)
    # Yielded by the backend, then dropped: acknowledged, so neither pending nor unread.
    assert result.extra["undelivered"] == {"pending": 0, "unread": 0, "acked": result.tally.lost, "absent": 0}
    # Waiting for the missing messages is bounded (bound + post_s + 2 s after the producer stops).
    assert time.monotonic() - started < SMALL.pre_s + 2 * SMALL.post_s + 1.0 + 2.0 + 2.0


async def test_spinning_and_log_flooding_during_an_outage_fail_the_run(
    env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bound allows CPU in proportion to the outage's wall time, which stretches on a loaded
    # machine (pytest -n 8); without that part the spin below exceeds it however slow the run.
    monkeypatch.setattr(chaos_harness, "CPU_FRACTION", 0.0)

    async def spin(w: Workload) -> None:
        w.fault_started()
        log = logging.getLogger("abe_redis")
        deadline = time.process_time() + 0.8
        while time.process_time() < deadline:  # what a retry loop without back-off looks like
            log.warning("redis unavailable, retrying")
        await asyncio.sleep(0)
        w.fault_ended()

    result = await _no_fault(env.direct_url, outage=True).run(spin)
    assert result.verdict == "fail"
    assert any(p.startswith("hot loop?") for p in result.problems), result.problems
    assert any(p.startswith("log flood") for p in result.problems), result.problems
    assert result.log_records is not None and result.log_budget is not None
    assert result.log_records > result.log_budget
    # The flood stayed in the counter: the abe_redis logger is restored afterwards.
    assert logging.getLogger("abe_redis").propagate is True


def test_cli_runs_a_scenario_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--scenario", "group-destroy", "--report-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().out
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["passed"] is True
    assert [s["name"] for s in data["scenarios"]] == ["group-destroy"]
    assert data["scenarios"][0]["tally"]["lost"] == 0
    assert "| group-destroy |" in (tmp_path / "summary.md").read_text()


def test_cli_reports_an_unreachable_toxiproxy_as_a_setup_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--toxiproxy-url", "http://127.0.0.1:9", "--report-dir", str(tmp_path)])
    assert code == 2
    assert "not usable" in capsys.readouterr().out
    assert not (tmp_path / "report.json").exists()


def test_cli_lists_the_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in out
