"""``python -m chaos``: run the scenarios of a profile and write the report."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.text import Text

from ._harness import ChaosSetupError, Environment
from ._profiles import PROFILES, SETTINGS
from ._report import recovery_text, rich_table, write_report
from ._result import ScenarioResult
from ._scenarios import SCENARIOS, Context, run_scenario, scenarios_of

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SETUP = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description="Chaos scenarios for abe-redis: faults between a producer, a consumer group and "
        "Redis; checks that every publish that returned is delivered at least once.",
    )
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="quick", help="quick (CI) or long (nightly)"
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("chaos-report"),
        help="where summary.md, report.json and throughput.svg go (default: chaos-report)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help="run only this scenario (repeatable); see --list",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--toxiproxy-url",
        default=os.environ.get("TOXIPROXY_URL") or None,
        help="a real Toxiproxy API (default: env TOXIPROXY_URL, else an embedded server in this process)",
    )
    parser.add_argument(
        "--redis-url",
        help="a Redis the runner does not own (default: start redis-server on a free port). "
        "The redis-kill scenario then runs on its own local server, or is skipped without a binary.",
    )
    parser.add_argument(
        "--upstream-host",
        help="Redis as Toxiproxy reaches it, HOST[:PORT] (default: the Redis URL's address). "
        "For a Toxiproxy container next to a Redis service: redis:6379",
    )
    parser.add_argument(
        "--proxy-listen-host",
        help="address the proxies listen on inside Toxiproxy (default: loopback, or 0.0.0.0 for a "
        "remote Toxiproxy); use 0.0.0.0 with --proxy-ports for a container",
    )
    parser.add_argument(
        "--proxy-ports",
        help="ports for the proxies, e.g. 21000-21019 (the range a Toxiproxy container publishes); "
        "default: any free port",
    )
    parser.add_argument(
        "--proxy-connect-host",
        help="host this process connects to for a proxy (default: the Toxiproxy URL's host)",
    )
    parser.add_argument(
        "--claim-idle-ms",
        type=int,
        help=f"claim_idle_ms of the clients (default {SETTINGS.claim_idle_ms}); e.g. 30000, the "
        "backend's default, to see how late a production setup gets back messages it had to claim",
    )
    return parser


async def _run_all(ctx: Context, names: Sequence[str], console: Console) -> list[ScenarioResult]:
    results = []
    for index, name in enumerate(names, 1):
        started = time.monotonic()
        with console.status(Text(f"[{index}/{len(names)}] {name}: {SCENARIOS[name].summary} …")):
            result = await run_scenario(SCENARIOS[name], ctx)
        colour = {"pass": "green", "fail": "red", "skip": "yellow", "error": "red"}[result.verdict]
        t = result.tally
        counts = (
            ""
            if t is None
            else f"published {t.published}, delivered {t.delivered}, dup {t.duplicates}, lost {t.lost}"
        )
        line = Text(f"{result.verdict.upper():5}", style=colour)
        line.append(f" {name:14} {counts}  recovery {recovery_text(result)}")
        line.append(f"  ({time.monotonic() - started:.1f} s)")
        console.print(line)
        for problem in result.problems:
            # Problems quote server replies and payloads: literal text, never markup.
            console.print(Text(f"      {problem}", style=colour))
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=False, highlight=False)
    if args.list:
        for scenario in SCENARIOS.values():
            profiles = ", ".join(sorted(scenario.profiles))
            console.print(Text(f"{scenario.name:22} {scenario.summary} [{profiles}]"))
        return EXIT_OK
    names = list(dict.fromkeys(args.scenario)) if args.scenario else scenarios_of(args.profile)
    profile = PROFILES[args.profile]
    settings = SETTINGS
    if args.claim_idle_ms is not None:
        if args.claim_idle_ms < 1:
            console.print("[bold red]chaos: --claim-idle-ms must be positive[/]")
            return EXIT_SETUP
        interval = max(100, min(args.claim_idle_ms // 3, 5_000))
        settings = replace(SETTINGS, claim_idle_ms=args.claim_idle_ms, claim_interval_ms=interval)
    started = time.monotonic()
    try:
        env = Environment.create(
            redis_url=args.redis_url,
            toxiproxy_url=args.toxiproxy_url,
            upstream=args.upstream_host,
            listen_host=args.proxy_listen_host,
            connect_host=args.proxy_connect_host,
            ports=args.proxy_ports,
        )
    except (ChaosSetupError, ValueError) as exc:
        console.print(Text(f"chaos: cannot set up: {exc}", style="bold red"))
        return EXIT_SETUP
    try:
        console.print(
            Text(
                f"chaos profile {profile.name}: {len(names)} scenario(s); "
                + ", ".join(f"{k} {v}" for k, v in env.describe().items())
            )
        )
        ctx = Context(env, profile, settings)
        results = asyncio.run(_run_all(ctx, names, console))
    finally:
        env.close()
    elapsed = time.monotonic() - started
    meta = {
        "profile": profile.name,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "runtime_s": round(elapsed, 1),
        "python": platform.python_version(),
        **env.describe(),
        "settings": ", ".join(f"{k}={v}" for k, v in settings.backend_kwargs().items()),
        "traffic": f"{profile.rate:g} msg/s, {profile.consumers} consumers, faults {profile.fault_s:g} s",
    }
    written = write_report(results, args.report_dir, meta)
    console.print(rich_table(results, title=f"Chaos scenarios — profile {profile.name} ({elapsed:.0f} s)"))
    console.print("report: " + ", ".join(str(p) for p in written))
    failed = [r.name for r in results if not r.ok]
    if failed:
        console.print(f"[bold red]failed: {', '.join(failed)}[/]")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
