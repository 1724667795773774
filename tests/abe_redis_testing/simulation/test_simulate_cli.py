"""``abe-redis simulate``: the report, its JSON, the exit status and the replay command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abe_redis.cli import main

from .planted import PLANTED


def test_a_passing_run_reports_speed_and_determinism(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "sim.json"
    argv = ["simulate", "--seeds", "3", "--workload", "fast", "--faults", "none", "--determinism", "2"]
    status = main([*argv, "--json", str(report)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "schedules/s" in out
    assert "traces repeat byte for byte" in out
    data = json.loads(report.read_text())
    assert data["seeds"] == 3 and data["failed_seeds"] == []
    assert data["schedules_per_second"] > 0
    assert len({r["trace_sha256"] for r in data["results"]}) == 3


def test_seeds_spread_over_processes_give_the_same_traces_in_seed_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = {jobs: tmp_path / f"jobs{jobs}.json" for jobs in (1, 2)}
    for jobs, report in reports.items():
        argv = ["simulate", "--seeds", "4", "--workload", "fast", "--faults", "lost-reply,kill"]
        assert main([*argv, "--jobs", str(jobs), "--json", str(report)]) in (0, 1)
    out = capsys.readouterr().out
    assert "schedules/s on 2 processes" in out
    runs = {jobs: json.loads(report.read_text()) for jobs, report in reports.items()}
    assert [r["seed"] for r in runs[2]["results"]] == [0, 1, 2, 3]
    assert [r["trace_sha256"] for r in runs[2]["results"]] == [r["trace_sha256"] for r in runs[1]["results"]]
    assert runs[2]["jobs"] == 2


def test_a_failing_run_names_the_first_failing_seed_and_how_to_replay_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bug = next(b for b in PLANTED if b.faults == ("restart",))
    report = tmp_path / "sim.json"
    with bug.patch():
        status = main(
            ["simulate", "--seeds", "2", "--workload", "fast", "--faults", "restart", "--json", str(report)]
        )
    out = capsys.readouterr().out
    assert status == 1
    data = json.loads(report.read_text())
    first = data["first_failure"]["seed"]
    assert data["anomalies"]["lost"] > 0
    assert f"abe-redis simulate --seed {first} --workload fast --faults restart" in out


def test_one_seed_prints_its_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "one.json"
    status = main(
        [
            "simulate",
            "--seed",
            "4",
            "--workload",
            "fast",
            "--faults",
            "none",
            "--trace",
            "--json",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "publish 0 ok" in out
    assert json.loads(report.read_text())["trace"][0].startswith("0.000000 seed 4")


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--faults", "meteor"]) == 2
    assert "unknown fault kinds" in capsys.readouterr().out
    assert main(["simulate", "--fail-on", "dupes"]) == 2
    assert "unknown categories" in capsys.readouterr().out
    assert main(["simulate", "--jobs", "0"]) == 2
    assert "--jobs must be positive" in capsys.readouterr().out
