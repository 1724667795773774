"""The report a person reads: ``summary.md``, ``report.json`` and ``throughput.svg``.

The plot is hand-made SVG (one panel per scenario: deliveries and publishes per second, the fault
window shaded) so that the report needs no plotting library.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from rich.table import Table
from rich.text import Text

from ._result import ScenarioResult

SUMMARY = "summary.md"
REPORT = "report.json"
PLOT = "throughput.svg"

COLUMNS = (
    "scenario",
    "fault",
    "published",
    "delivered",
    "duplicates",
    "lost",
    "not in stream",
    "recovery",
    "verdict",
)

_VERDICT_MARK = {"pass": "PASS", "fail": "FAIL", "skip": "skip", "error": "ERROR"}


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def recovery_text(result: ScenarioResult) -> str:
    """``resume / drain (bound)``: fault end to next delivery, to backlog drained, and the bound."""
    rec = result.recovery
    if rec is None:
        return "—"
    bound = "" if result.recovery_bound_s is None else f" (≤ {result.recovery_bound_s:g} s)"
    return f"{_seconds(rec.resume_s)} / {_seconds(rec.drain_s)}{bound}"


def published_text(result: ScenarioResult) -> str:
    """Publishes that returned, then those that raised and how many of those arrived anyway."""
    t = result.tally
    if t is None:
        return "—"
    if not t.failed_publishes:
        return str(t.published)
    return f"{t.published} (+{t.failed_publishes} failed, {t.failed_but_delivered} delivered)"


def lost_text(result: ScenarioResult) -> str:
    """Returned publishes never delivered, with the allowance of a scenario that has one."""
    t = result.tally
    if t is None:
        return "—"
    return f"{t.lost} (≤ {result.lost_allowed})" if result.lost_allowed else str(t.lost)


def row(result: ScenarioResult) -> tuple[str, ...]:
    t = result.tally
    if t is None:
        counts = ("—", "—", "—", "—", "—")
    else:
        gone = "—" if result.gone is None else str(result.gone)
        counts = (published_text(result), str(t.delivered), str(t.duplicates), lost_text(result), gone)
    return (result.name, result.fault, *counts, recovery_text(result), _VERDICT_MARK[result.verdict])


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(results: Sequence[ScenarioResult]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "| " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row(r)) + " |" for r in results]
    return "\n".join(lines)


def summary_markdown(results: Sequence[ScenarioResult], meta: Mapping[str, Any]) -> str:
    failed = [r for r in results if not r.ok]
    headline = (
        f"**{len(failed)} of {len(results)} scenarios failed.**"
        if failed
        else f"All {len(results)} scenarios passed (or were skipped with a reason)."
    )
    parts = [
        f"# Chaos report — profile `{meta.get('profile', '?')}`",
        "",
        headline,
        "",
        " · ".join(f"{key}: `{value}`" for key, value in meta.items() if key != "profile"),
        "",
        markdown_table(results),
        "",
        "*published*: publishes that returned (failed ones, which raised during the fault, are not "
        "required to arrive; how many arrived anyway is shown). *delivered*: distinct messages "
        "received. *duplicates*: deliveries beyond the first. *lost*: returned publishes never "
        "delivered — must be 0, except in a scenario that documents a loss it cannot prevent "
        "(a failover without `WAIT`), which shows its allowance as (≤ n). *not in stream*: "
        "returned publishes whose entry was not in the stream when it was read back after the "
        "run — acknowledged writes Redis itself lost (— when not read back). *recovery*: "
        "fault end → next delivery / → every message published before the fault end delivered "
        "(≤ the bound).",
        "",
    ]
    details = []
    for r in results:
        lines = []
        for problem in r.problems:
            lines.append(f"- **{problem}**")
        for note in r.notes:
            lines.append(f"- {note}")
        if r.outage and r.cpu_s is not None:
            lines.append(
                f"- during the outage: {r.cpu_s:.2f} s CPU (bound {r.cpu_bound_s:.2f} s), "
                f"{r.log_records} `abe_redis` log records (budget {r.log_budget})"
            )
        if r.tally is not None and r.tally.lost_ids:
            lines.append(f"- lost message numbers (first {len(r.tally.lost_ids)}): {list(r.tally.lost_ids)}")
        if lines:
            details.append(f"### {r.name}\n\n" + "\n".join(lines))
    if details:
        parts += ["## Details", "", "\n\n".join(details), ""]
    parts += [f"![throughput over time, fault windows shaded]({PLOT})", ""]
    return "\n".join(parts)


# -- SVG ---------------------------------------------------------------------------------------

_WIDTH = 760
_PANEL = 110
_LEFT = 56
_RIGHT = 16
_TOP = 40
_AXIS = 'text-anchor="end" fill="#555"'


def rates(values: Sequence[int], bin_s: float, duration_s: float) -> list[tuple[float, float]]:
    """(mid-time, per-second rate) of each bin. The last bin usually covers only part of
    ``bin_s`` before the run ended; its rate is over the time it covers, so a run that stops
    mid-bin does not end in a dip that looks like a stall."""
    points = []
    for i, count in enumerate(values):
        start = i * bin_s
        width = min(bin_s, duration_s - start) if duration_s > start else bin_s
        points.append((start + width / 2, count / width))
    return points


def _points(
    points: Sequence[tuple[float, float]], x0: float, x_scale: float, y0: float, y_scale: float
) -> str:
    return " ".join(f"{x0 + t * x_scale:.1f},{y0 - rate * y_scale:.1f}" for t, rate in points)


def throughput_svg(results: Sequence[ScenarioResult]) -> str:
    """One panel per scenario: deliveries/s (solid) and publishes/s (dashed); fault window shaded."""
    shown = [r for r in results if r.delivered_per_bin]
    height = _TOP + max(1, len(shown)) * _PANEL + 20
    plot_w = _WIDTH - _LEFT - _RIGHT
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{_WIDTH}" height="{height}" fill="white"/>',
        '<text x="10" y="18" font-size="14" font-weight="bold">Throughput over time</text>',
        '<text x="10" y="32" fill="#555">deliveries/s (solid), publishes/s (dashed); '
        "fault window shaded red</text>",
    ]
    if not shown:
        out.append(f'<text x="{_LEFT}" y="{_TOP + 30}">no scenario produced a timeline</text>')
    for index, r in enumerate(shown):
        top = _TOP + index * _PANEL
        base = top + _PANEL - 28
        plot_h = _PANEL - 46
        duration = max(r.duration_s, 1e-6)
        x_scale = plot_w / max(duration, len(r.delivered_per_bin) * r.bin_s)
        delivered = rates(r.delivered_per_bin, r.bin_s, duration)
        published = rates(r.published_per_bin, r.bin_s, duration)
        peak = max([1.0, *(rate for _, rate in delivered), *(rate for _, rate in published)])
        y_scale = plot_h / peak
        out.append(f'<g id="{escape(r.name)}">')
        colour = "#1a7f37" if r.ok else "#cf222e"
        out.append(
            f'<text x="{_LEFT}" y="{top + 12}" font-weight="bold" fill="{colour}">'
            f"{escape(r.name)} — {escape(r.fault)} ({escape(r.verdict)})</text>"
        )
        if r.fault_start_s is not None and r.fault_end_s is not None:
            fx = _LEFT + r.fault_start_s * x_scale
            fw = max(2.0, (r.fault_end_s - r.fault_start_s) * x_scale)
            out.append(
                f'<rect x="{fx:.1f}" y="{base - plot_h:.1f}" width="{fw:.1f}" height="{plot_h:.1f}" '
                'fill="#cf222e" fill-opacity="0.15"/>'
            )
        out.append(
            f'<line x1="{_LEFT}" y1="{base}" x2="{_LEFT + plot_w}" y2="{base}" stroke="#888"/>'
            f'<line x1="{_LEFT}" y1="{base}" x2="{_LEFT}" y2="{base - plot_h}" stroke="#888"/>'
            f'<text x="{_LEFT - 4}" y="{base - plot_h + 4:.1f}" {_AXIS}>{peak:.0f}/s</text>'
            f'<text x="{_LEFT - 4}" y="{base + 4}" {_AXIS}>0</text>'
            f'<text x="{_LEFT + plot_w}" y="{base + 14}" {_AXIS}>{duration:.1f} s</text>'
        )
        if published:
            pts = _points(published, _LEFT, x_scale, base, y_scale)
            out.append(f'<polyline points="{pts}" fill="none" stroke="#888" stroke-dasharray="4 3"/>')
        pts = _points(delivered, _LEFT, x_scale, base, y_scale)
        out.append(f'<polyline points="{pts}" fill="none" stroke="#0969da" stroke-width="1.5"/>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- writing -------------------------------------------------------------------------------------


def report_json(results: Sequence[ScenarioResult], meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "meta": dict(meta),
        "passed": all(r.ok for r in results),
        "scenarios": [r.to_json() for r in results],
    }


def write_report(results: Sequence[ScenarioResult], report_dir: Path, meta: Mapping[str, Any]) -> list[Path]:
    """Write the three files into ``report_dir`` (created if needed); returns their paths."""
    report_dir.mkdir(parents=True, exist_ok=True)
    files = {
        SUMMARY: summary_markdown(results, meta),
        REPORT: json.dumps(report_json(results, meta), indent=2) + "\n",
        PLOT: throughput_svg(results),
    }
    written = []
    for name, text in files.items():
        path = report_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def rich_table(results: Sequence[ScenarioResult], title: str = "Chaos scenarios") -> Table:
    """The terminal summary, readable at 80 columns: long cells fold instead of stretching the
    table, and the fault's description is left to ``summary.md`` (``--list`` shows it too)."""
    table = Table(title=Text(title), expand=False, padding=(0, 1))
    table.add_column("scenario", no_wrap=True)
    table.add_column("published", justify="right", overflow="fold", max_width=16)
    table.add_column("deliv.", justify="right", no_wrap=True)
    table.add_column("dup.", justify="right", no_wrap=True)
    table.add_column("lost", justify="right", no_wrap=True)
    table.add_column("recovery", overflow="fold", max_width=16)
    table.add_column("verdict", no_wrap=True)
    style = {"pass": "green", "fail": "bold red", "skip": "yellow", "error": "bold red"}
    for r in results:
        name, _fault, published, delivered, duplicates, lost, _gone, recovery, verdict = row(r)
        table.add_row(
            Text(name),
            Text(published),
            delivered,
            duplicates,
            lost,
            Text(recovery),
            Text(verdict, style=style[r.verdict]),
        )
    return table
