"""The report writer: Markdown table, JSON contents, SVG well-formedness, the rich table."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console

from chaos import Recovery, ScenarioResult, Tally, markdown_table, throughput_svg, write_report
from chaos._report import rich_table

SVG = "{http://www.w3.org/2000/svg}"


def _tally(**overrides: object) -> Tally:
    values: dict[str, object] = dict(
        published=300,
        failed_publishes=0,
        delivered=300,
        deliveries=300,
        duplicates=0,
        duplicate_entries=0,
        lost=0,
        lost_ids=(),
        failed_but_delivered=0,
        unknown=0,
    )
    values.update(overrides)
    return Tally(**values)  # type: ignore[arg-type]


def _results() -> list[ScenarioResult]:
    passed = ScenarioResult(
        "proxy-down",
        "proxy down | 2 s",  # a pipe must not break the Markdown table
        tally=_tally(failed_publishes=7, failed_but_delivered=4, duplicates=3),
        recovery=Recovery(resume_s=0.4, drain_s=1.25),
        recovery_bound_s=7.3,
        fault_start_s=1.0,
        fault_end_s=3.0,
        duration_s=5.0,
        outage=True,
        cpu_s=0.1,
        cpu_bound_s=0.9,
        log_records=2,
        log_budget=18,
        delivered_per_bin=[10, 20, 0, 0, 0, 0, 0, 0, 30, 25],
        published_per_bin=[10, 20, 5, 5, 5, 5, 5, 5, 25, 25],
        bin_s=0.5,
    )
    failed = ScenarioResult(
        "limit-data",
        "limit_data 4096 bytes",
        tally=_tally(lost=2, lost_ids=(17, 18), delivered=298),
        recovery=Recovery(resume_s=0.0, drain_s=None),
        recovery_bound_s=7.3,
        fault_start_s=1.0,
        fault_end_s=2.5,
        duration_s=4.0,
        delivered_per_bin=[5, 5, 5, 5],
        published_per_bin=[5, 5, 5, 5],
        bin_s=1.0,
    )
    failed.fail("2 message(s) published successfully were never delivered")
    skipped = ScenarioResult("redis-kill", "SIGKILL", verdict="skip", problems=["no local server binary"])
    return [passed, failed, skipped]


def test_markdown_table_has_a_row_per_scenario_with_the_figures() -> None:
    lines = markdown_table(_results()).splitlines()
    assert lines[0] == (
        "| scenario | fault | published | delivered | duplicates | lost | not in stream | recovery "
        "| verdict |"
    )
    assert lines[1].count("---") == 9
    assert len(lines) == 5
    down, limit, kill = lines[2:]
    assert down == (
        "| proxy-down | proxy down \\| 2 s | 300 (+7 failed, 4 delivered) | 300 | 3 | 0 | — "
        "| 0.40 s / 1.25 s (≤ 7.3 s) | PASS |"
    )
    assert "| 2 | — | 0.00 s / — (≤ 7.3 s) | FAIL |" in limit
    assert kill.endswith("| — | — | — | — | — | — | skip |")


def test_write_report_writes_summary_json_and_svg(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "report"
    written = write_report(_results(), out, {"profile": "quick", "toxiproxy": "embedded"})
    assert sorted(p.name for p in written) == ["report.json", "summary.md", "throughput.svg"]

    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Chaos report — profile `quick`")
    assert "**1 of 3 scenarios failed.**" in summary
    assert "- **2 message(s) published successfully were never delivered**" in summary
    assert "lost message numbers (first 2): [17, 18]" in summary
    assert "0.10 s CPU (bound 0.90 s), 2 `abe_redis` log records (budget 18)" in summary
    assert "![throughput over time, fault windows shaded](throughput.svg)" in summary

    data = json.loads((out / "report.json").read_text())
    assert data["passed"] is False
    assert data["meta"] == {"profile": "quick", "toxiproxy": "embedded"}
    by_name = {s["name"]: s for s in data["scenarios"]}
    assert set(by_name) == {"proxy-down", "limit-data", "redis-kill"}
    assert by_name["proxy-down"]["tally"]["duplicates"] == 3
    assert by_name["proxy-down"]["recovery"] == {"resume_s": 0.4, "drain_s": 1.25}
    assert by_name["limit-data"]["tally"]["lost_ids"] == [17, 18]
    assert by_name["limit-data"]["verdict"] == "fail"
    assert by_name["redis-kill"]["problems"] == ["no local server binary"]


def test_a_report_of_passing_scenarios_says_so(tmp_path: Path) -> None:
    write_report(_results()[:1], tmp_path, {"profile": "long"})
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is True
    assert "All 1 scenarios passed" in (tmp_path / "summary.md").read_text()


def test_svg_is_well_formed_with_a_polyline_per_timeline_and_shaded_fault_windows() -> None:
    root = ET.fromstring(throughput_svg(_results()))
    assert root.tag == f"{SVG}svg"
    panels = root.findall(f"{SVG}g")
    assert [g.get("id") for g in panels] == ["proxy-down", "limit-data"]  # the skip has no timeline
    down = panels[0]
    lines = down.findall(f"{SVG}polyline")
    assert len(lines) == 2  # deliveries and publishes
    delivered = lines[-1].get("points", "").split()
    assert len(delivered) == 10
    shade = [r for r in down.findall(f"{SVG}rect") if r.get("fill-opacity")]
    assert len(shade) == 1
    # Fault 1.0-3.0 s of a 5 s panel: the shaded band covers two fifths of the plot width.
    plot_width = 760 - 56 - 16
    assert float(shade[0].get("width", "0")) == round(plot_width * 2 / 5, 1)
    assert float(shade[0].get("x", "0")) == round(56 + plot_width / 5, 1)


def test_svg_of_nothing_is_still_well_formed() -> None:
    root = ET.fromstring(throughput_svg([]))
    assert root.findall(f"{SVG}polyline") == []


def test_rich_table_renders_every_scenario() -> None:
    console = Console(width=200, record=True)
    console.print(rich_table(_results()))
    text = console.export_text()
    for name in ("proxy-down", "limit-data", "redis-kill", "PASS", "FAIL", "skip"):
        assert name in text


def test_the_last_partial_bin_is_a_rate_over_the_time_it_covers() -> None:
    # 4.25 s of steady 10 messages/s in 0.5 s bins: the ninth bin covers only 0.25 s.
    from chaos._report import rates

    points = rates([5] * 8 + [2], 0.5, 4.25)
    assert [rate for _, rate in points] == [10.0] * 8 + [8.0]
    assert points[-1][0] == 4.125  # drawn at the middle of what it covers


def test_the_terminal_table_fits_80_columns_and_shows_failed_publishes_that_arrived() -> None:
    from chaos import SCENARIOS

    every_name = [ScenarioResult(name, "fault") for name in SCENARIOS]
    console = Console(width=80, record=True, color_system=None)
    console.print(rich_table([*_results(), *every_name]))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    assert "proxy-down" in text and "limit-data" in text
    # The published cell folds within its column: "300 (+7 / failed, 4 / delivered)".
    cells = "".join(line.split("│")[2].strip() for line in lines if line.count("│") > 2)
    # Where it folds depends on how wide the longest scenario name leaves the column.
    assert "300(+7failed,4delivered)" in cells.replace(" ", "")
