"""The ``abe-redis`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from ._backend import RedisStreamsBackend
from ._redact import redact_url
from ._streams import to_str
from ._verify import VerifyReport, run_verify
from .deadletters import DeadLetters


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, show_time=False)],
    )
    try:
        return _main(argv)
    except (RedisError, OSError) as exc:
        # One clean line instead of a traceback; the URL's password never appears.
        Console(stderr=True).print(f"[red]abe-redis: {type(exc).__name__}: {redact_url(str(exc))}[/red]")
        return 2


def _main(argv: Sequence[str] | None) -> int:
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
    verify.add_argument(
        "--backend",
        metavar="MODULE:CLASS",
        help="run only the abe queue contract suite against this importable backend "
        "(instances from Class.from_env() or Class(); capabilities from __abe_contract_capabilities__)",
    )
    verify.add_argument("--no-contract", action="store_true", help="skip the contract suite")
    verify.add_argument(
        "--contract-timeout", type=float, default=10.0, help="the contract suite's per-wait timeout (s)"
    )
    dlq = commands.add_parser("dlq", help="list, replay or purge dead letters of a key")
    dlq.add_argument("action", choices=["keys", "list", "replay", "purge"])
    dlq.add_argument("key", nargs="?", help="the source key (stream); not needed for 'keys'")
    dlq.add_argument("--url", default=os.environ.get("REDIS_URL"), help="Redis URL (default: $REDIS_URL)")
    dlq.add_argument("--count", type=int, default=20, help="entries to list (default 20)")
    dlq.add_argument("--id", action="append", dest="ids", help="replay only this dead-letter ID (repeatable)")
    args = parser.parse_args(argv)

    console = Console()
    if args.command == "verify":
        if args.count < 1 or args.keys < 1 or args.consumers < 1:
            parser.error("--count, --keys and --consumers must be positive")
        if args.backend:
            return 0 if run_contract_report(console, args.backend, None, args.contract_timeout) else 1
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
        contract_ok = args.no_contract or run_contract_report(console, None, args.url, args.contract_timeout)
        return 0 if report.ok and contract_ok else 1
    if args.command == "dlq":
        if not args.url:
            parser.error("dlq needs --url or REDIS_URL")
        if args.action != "keys" and not args.key:
            parser.error(f"dlq {args.action} needs a KEY")
        return asyncio.run(_dead_letters(console, args.url, args.action, args.key, args.count, args.ids))
    return 2  # pragma: no cover - argparse rejects unknown commands


async def _dead_letters(
    console: Console, url: str, action: str, key: str | None, count: int, ids: list[str] | None
) -> int:
    async with RedisStreamsBackend.from_env(overrides_url(url)) as backend:
        dead = DeadLetters(backend)
        if action == "keys":
            for name in await dead.keys():
                # Plain tab-separated lines: this output is meant for scripts.
                print(f"{name}\t{await dead.count(name)}")
        elif action == "list":
            assert key is not None
            table = Table(title=f"dead letters of {key}")
            for column in ("id", "source id", "group", "deliveries", "reason", "fields"):
                table.add_column(column)
            for letter in await dead.entries(key, count=count):
                shown = ", ".join(
                    f"{k.decode(errors='replace')}={v[:60]!r}" for k, v in letter.fields.items()
                )
                table.add_row(
                    letter.id,
                    letter.source_id,
                    letter.group,
                    str(letter.delivery_count),
                    letter.reason,
                    shown,
                )
            console.print(table)
        elif action == "replay":
            assert key is not None
            console.print(f"replayed {await dead.replay(key, ids)} dead letter(s) of {key}")
        else:
            assert key is not None
            console.print(f"purged {await dead.purge(key)} dead letter(s) of {key}")
    return 0


def run_contract_report(console: Console, backend: str | None, url: str | None, wait_s: float) -> bool:
    """Run the shipped contract suite and print its report; True when nothing failed.

    Without ``backend`` it checks abe-redis itself: on the in-memory fake, or on ``url`` in a
    namespace of its own (its own registry and default group) that is deleted afterwards.
    """
    try:
        from abe_redis_testing.contract import Capabilities, render_report, run_contract
    except ImportError as exc:  # pragma: no cover - depends on the install
        console.print(
            f"[red]the contract suite needs the testing extra: pip install 'abe-redis[testing]' ({exc})"
        )
        return False
    env: dict[str, str] = {}
    capabilities: Capabilities | None = None
    if backend is None and url is None:
        backend = "abe_redis_testing.fake:FakeRedisStreamsBackend"
    elif backend is None:
        assert url is not None
        backend = "abe_redis:RedisStreamsBackend"
        namespace = f"abe-redis-contract:{uuid.uuid4().hex[:10]}"
        env = {
            "REDIS_URL": url,
            "REDIS_REGISTRY_KEY": f"{namespace}:streams",
            "REDIS_CONSUMER_GROUP": f"{namespace}:group",
            "REDIS_BLOCK_MS": "100",
            "REDIS_DISCOVERY_INTERVAL_MS": "100",
            "REDIS_CLAIM_IDLE_MS": "500",
            "REDIS_CLAIM_INTERVAL_MS": "100",
        }
        capabilities = Capabilities.all(redelivery_timeout=1.5)  # claim_idle_ms 500 + margin
    elif url is not None:
        env = {"REDIS_URL": url}
    console.print(f"[dim]… contract suite against {backend}[/dim]")
    report = run_contract(backend, capabilities, timeout=wait_s, env=env)
    if env.get("REDIS_REGISTRY_KEY"):
        asyncio.run(_delete_contract_keys(url or "", env["REDIS_REGISTRY_KEY"]))
    render_report(report, console)
    console.print(
        "[bold green]contract: PASS[/bold green]" if report.ok else "[bold red]contract: FAIL[/bold red]"
    )
    return bool(report.ok)


async def _delete_contract_keys(url: str, registry_key: str) -> None:
    async with RedisStreamsBackend.from_url(url) as backend:
        client: Any = backend.client
        streams = [to_str(name) for name in await client.smembers(registry_key)]
        doomed = [registry_key, *streams, *(backend.config.dead_letter_stream(s) for s in streams)]
        await client.delete(*doomed)


def overrides_url(url: str) -> dict[str, str]:
    """The environment as it is, with REDIS_URL replaced by the --url given."""
    return {**os.environ, "REDIS_URL": url}


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
