"""The ``abe-redis`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from ._verify import VerifyReport, run_verify


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="abe-redis", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser(
        "verify",
        help="publish a batch through the backend and check that every message is delivered",
        description="Runs against REDIS_URL / --url if given, else against the in-memory fake.",
    )
    verify.add_argument("--url", default=os.environ.get("REDIS_URL"), help="Redis URL (default: $REDIS_URL)")
    verify.add_argument("--count", type=int, default=1000, help="messages to publish (default 1000)")
    verify.add_argument("--keys", type=int, default=4, help="distinct keys/streams (default 4)")
    verify.add_argument("--consumers", type=int, default=2, help="competing consumers (default 2)")
    verify.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for delivery")
    args = parser.parse_args(argv)

    console = Console()
    if args.command == "verify":
        if args.count < 1 or args.keys < 1 or args.consumers < 1:
            parser.error("--count, --keys and --consumers must be positive")
        report = asyncio.run(
            run_verify(
                url=args.url,
                count=args.count,
                keys=args.keys,
                consumers=args.consumers,
                wait_s=args.timeout,
                progress=lambda step: console.print(f"[dim]… {step}[/dim]"),
            )
        )
        print_report(console, report)
        return 0 if report.ok else 1
    return 2  # pragma: no cover - argparse rejects unknown commands


def print_report(console: Console, report: VerifyReport) -> None:
    table = Table(title=f"abe-redis verify — {report.target}")
    table.add_column("check")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    table.add_column("detail")
    for check in report.checks:
        table.add_row(
            check.name,
            "[green]PASS[/green]" if check.ok else "[red]FAIL[/red]",
            f"{check.seconds:.3f}",
            check.detail,
        )
    console.print(table)
    for check in report.checks:
        if "publish_per_s" in check.figures:
            console.print(
                f"publish: {check.figures['publish_per_s']:,.0f} msg/s   "
                f"consume: {check.figures['consume_per_s']:,.0f} msg/s"
            )
    console.print(
        "[bold green]verify: PASS[/bold green]" if report.ok else "[bold red]verify: FAIL[/bold red]"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
