"""``abe-redis simulate``: many seeds with a progress bar, or one seed replayed with its trace.

``abe_redis.cli`` declares the arguments and imports this module only when the command runs,
so the runtime package never imports fakeredis for its other commands.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._faults import parse_faults
from ._history import CATEGORIES, DEFAULT_FAILING
from ._runner import SERVERS, SimulationResult, run_seed
from ._workload import WORKLOADS

__all__ = ["run"]


def _categories(text: str | None) -> frozenset[str]:
    if text is None:
        return DEFAULT_FAILING
    chosen = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = chosen - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; choose from {', '.join(CATEGORIES)}")
    return chosen


def run(args: argparse.Namespace, console: Console) -> int:
    """Exit status: 0 when every seed passes (and traces repeat), 1 when one fails, 2 on bad usage."""
    try:
        faults = parse_faults(args.faults)
        failing = _categories(args.fail_on)
        if args.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {args.workload!r}; choose from {', '.join(WORKLOADS)}")
        server = getattr(args, "server", "model")
        if server not in SERVERS:
            raise ValueError(f"unknown server {server!r}; choose from {', '.join(SERVERS)}")
        if args.seeds < 1 or args.messages < 1 or getattr(args, "jobs", 1) < 1:
            raise ValueError("--seeds, --messages and --jobs must be positive")
    except ValueError as exc:
        console.print(f"[red]abe-redis simulate: {escape(str(exc))}[/red]")
        return 2
    options: dict[str, Any] = {
        "workload": args.workload,
        "faults": faults,
        "messages": args.messages,
        "failing": failing,
        "server": server,
    }
    if args.seed is not None:
        return _one(args.seed, options, console, show_trace=args.trace, json_path=args.json)
    return _many(args, options, console)


def _one(seed: int, options: dict[str, Any], console: Console, *, show_trace: bool, json_path: str) -> int:
    result = run_seed(seed, keep_trace=True, **options)
    if show_trace:
        for line in result.trace:
            console.print(escape(line), highlight=False, soft_wrap=True)
    _print_result(console, result)
    Path(json_path).write_text(json.dumps({**result.to_json(), "trace": list(result.trace)}, indent=2))
    console.print(f"trace sha256 {result.trace_hash}; JSON written to {escape(json_path)}")
    return 0 if result.ok else 1


def _print_result(console: Console, result: SimulationResult) -> None:
    state = "[green]passed[/green]" if result.ok else "[red]FAILED[/red]"
    console.print(
        f"seed {result.seed} {state}: faults on {escape(result.plan.describe())}, "
        f"{result.virtual_seconds:.1f}s virtual in {result.wall_seconds:.2f}s"
    )
    for category, count in result.verdict.counts.items():
        if count:
            mark = "[red]x[/red]" if category in result.verdict.failing else " "
            console.print(f"  {mark} {category}: {count}")
            for example in result.verdict.examples.get(category, ())[:3]:
                console.print(f"      {escape(example)}", highlight=False)


def _run_one(options: dict[str, Any], seed: int) -> SimulationResult:
    return run_seed(seed, **options)


def _results(seeds: range, options: dict[str, Any], jobs: int) -> Iterator[SimulationResult]:
    """The seeds' results in seed order, run here or spread over ``jobs`` worker processes (a
    seed's schedule does not depend on the process it runs in, nor on the seeds before it)."""
    if jobs == 1:
        for seed in seeds:
            yield run_seed(seed, **options)
        return
    # Not fork: a caller with threads (pytest's plugins, an embedded server) may hold a lock a
    # forked child would wait on forever. A fork server starts once, with the simulator
    # imported, and the workers fork from it.
    context: multiprocessing.context.BaseContext
    if "forkserver" in multiprocessing.get_all_start_methods():
        server = multiprocessing.get_context("forkserver")
        server.set_forkserver_preload([__name__])
        context = server
    else:
        context = multiprocessing.get_context("spawn")
    with context.Pool(jobs) as pool:
        yield from pool.imap(functools.partial(_run_one, options), seeds)


def _many(args: argparse.Namespace, options: dict[str, Any], console: Console) -> int:
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = getattr(args, "jobs", 1)
    results: list[SimulationResult] = []
    started = time.perf_counter()
    progress = Progress(
        TextColumn("simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failing]} failing"),
        TimeElapsedColumn(),
        console=console,
        auto_refresh=False,  # no refresh thread: nothing runs beside the simulation
    )
    with progress:
        task = progress.add_task("seeds", total=len(seeds), failing=0)
        failing = 0
        for result in _results(seeds, options, jobs):
            results.append(result)
            failing += not result.ok
            progress.update(task, advance=1, failing=failing, refresh=True)
    elapsed = time.perf_counter() - started
    rate = len(results) / elapsed if elapsed else 0.0
    mismatches = _determinism(args.determinism, results, options)

    by_category: Counter[str] = Counter()
    seeds_with: Counter[str] = Counter()
    for result in results:
        for category, count in result.verdict.counts.items():
            if count:
                by_category[category] += count
                seeds_with[category] += 1
    on = "" if jobs == 1 else f" on {jobs} processes"
    table = Table(
        title=f"{len(results)} schedules, {rate:.1f} schedules/s{on} ({args.messages} messages each)"
    )
    table.add_column("anomaly")
    table.add_column("total", justify="right")
    table.add_column("seeds", justify="right")
    table.add_column("fails the run")
    for category in CATEGORIES:
        if by_category[category]:
            table.add_row(
                category,
                str(by_category[category]),
                str(seeds_with[category]),
                "yes" if category in options["failing"] else "no",
            )
    console.print(table)
    failed = [r for r in results if not r.ok]
    first = failed[0] if failed else None
    if first is not None:
        console.print(f"[red]{len(failed)} of {len(results)} seeds failed.[/red] First failing seed:")
        _print_result(console, first)
        console.print(f"replay: [bold]{escape(first.replay())} --trace[/bold]")
        console.print(
            "in a test: [bold]abe_redis_testing.simulation.replay_seed("
            f"{first.seed}, workload={first.workload_name!r}, faults={first.allowed_faults!r}"
            f"{'' if first.server == 'model' else f', server={first.server!r}'})[/bold]"
        )
    else:
        console.print(f"[green]all {len(results)} seeds passed[/green]")
    if args.determinism:
        if mismatches:
            console.print(f"[red]not deterministic: seeds {mismatches} gave a different trace twice[/red]")
        else:
            console.print(f"deterministic: the first {args.determinism} seeds' traces repeat byte for byte")
    report = {
        "seeds": len(results),
        "first_seed": args.first_seed,
        "workload": args.workload,
        "server": options["server"],
        "faults": list(options["faults"]),
        "messages": args.messages,
        "failing_categories": sorted(options["failing"]),
        "wall_seconds": round(elapsed, 3),
        "schedules_per_second": round(rate, 2),
        "jobs": jobs,
        "failed_seeds": [r.seed for r in failed],
        "anomalies": dict(by_category),
        "seeds_with_anomaly": dict(seeds_with),
        "first_failure": first.to_json() if first else None,
        "determinism": {"checked": args.determinism, "mismatched_seeds": mismatches},
        "results": [r.to_json() for r in results],
    }
    Path(args.json).write_text(json.dumps(report, indent=2))
    console.print(f"JSON written to {escape(args.json)}")
    return 1 if failed or mismatches else 0


def _determinism(count: int, results: list[SimulationResult], options: dict[str, Any]) -> list[int]:
    """Run the first ``count`` seeds again; a seed whose trace hash differs is a mismatch."""
    return [r.seed for r in results[:count] if run_seed(r.seed, **options).trace_hash != r.trace_hash]
