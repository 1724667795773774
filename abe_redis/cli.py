"""The ``abe-redis`` command: check, inspect and operate Redis Streams used through abe-redis."""

# Each subcommand is declared by one ``_add_<name>`` function below and implemented in its own
# private module (``_cli_<name>.py``) exposing ``run(args, console) -> exit status``. To add one,
# write both and list the function in ``SUBCOMMANDS``.

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence

from redis.exceptions import RedisClusterException, RedisError
from rich.console import Console
from rich.logging import RichHandler

from . import (
    AbeRedisError,
    __version__,
    _cli_dlq,
    _cli_info,
    _cli_streams,
    _cli_tail,
    _cli_verify,
)
from ._cli_common import CliError
from ._redact import redact_text

URL_HELP = "Redis URL (default: $REDIS_URL); other settings such as REDIS_PASSWORD come from the environment"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; options show their default when they have one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if (
            "%(default)" not in help_text
            and action.default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
        ):
            help_text += " (default: %(default)s)"
        return help_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abe-redis", description=_doc(__doc__), formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"abe-redis {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    return parser


def _doc(text: str | None) -> str:
    """A module docstring as help text: without reStructuredText's double backquotes."""
    return (text or "").replace("``", "")


def _subcommand(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name, help=summary, description=_doc(description), formatter_class=_HelpFormatter
    )


def _add_verify(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = _subcommand(
        commands,
        "verify",
        "publish a batch through the backend, check every message is delivered, run the contract suite",
        _cli_verify.__doc__ or "",
    )
    verify.add_argument("--url", help=URL_HELP + "; with neither, the embedded in-memory fake")
    verify.add_argument("--count", type=int, default=1000, help="messages to publish")
    verify.add_argument("--keys", type=int, default=4, help="distinct keys (streams) to spread them over")
    verify.add_argument("--consumers", type=int, default=2, help="competing consumers")
    verify.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for delivery")
    verify.add_argument(
        "--backend",
        metavar="MODULE:CLASS",
        help="run only the contract suite, against this importable abe backend; instances come "
        "from Class.from_env() (or Class()) with REDIS_URL set to --url",
    )
    verify.add_argument(
        "--capabilities",
        metavar="LIST",
        help="what the backend claims, for a class you cannot annotate with "
        "__abe_contract_capabilities__: comma-separated capability names, 'all', '-name' to "
        "withdraw one, redelivery_timeout=SECONDS (e.g. all,-ordered_per_key,redelivery_timeout=2)",
    )
    verify.add_argument("--no-contract", action="store_true", help="skip the contract suite")
    verify.add_argument(
        "--contract-timeout", type=float, default=10.0, help="the contract suite's per-wait timeout (s)"
    )
    verify.set_defaults(run=_cli_verify.run)


def _add_info(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    info = _subcommand(
        commands,
        "info",
        "streams, groups, consumers, pending, lag and dead letters at a glance",
        _cli_info.__doc__ or "",
    )
    info.add_argument("--url", help=URL_HELP)
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(run=_cli_info.run)


def _add_tail(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = _subcommand(
        commands,
        "tail",
        "print a stream's entries as they arrive, without joining a group",
        _cli_tail.__doc__ or "",
    )
    tail.add_argument("key", metavar="KEY", help="the stream (the key messages are published to)")
    tail.add_argument("--url", help=URL_HELP)
    tail.add_argument(
        "--from",
        dest="start",
        default="$",
        metavar="ID",
        help="print entries after this ID: '$' only new ones, '0' the whole stream first",
    )
    tail.add_argument("--count", type=int, help="stop after this many entries (default: follow until Ctrl-C)")
    tail.add_argument("--block-ms", type=int, default=1000, help="how long each XREAD waits (ms)")
    tail.set_defaults(run=_cli_tail.run)


def _with_actions(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
    run: Callable[[argparse.Namespace, Console], int],
) -> Callable[[str, str], argparse.ArgumentParser]:
    """A subcommand whose actions are sub-subcommands (``dlq list``, ``streams retire``); returns
    the function that adds one action."""
    # --url is accepted before and after the action (``dlq --url U list K`` and ``dlq list --url U K``);
    # SUPPRESS keeps one position from overwriting the other with its default.
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument("--url", default=argparse.SUPPRESS, help=URL_HELP)
    command = commands.add_parser(
        name, parents=[url], help=summary, description=_doc(description), formatter_class=_HelpFormatter
    )
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(action_name: str, action_summary: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(
            action_name,
            parents=[url],
            help=action_summary,
            description=action_summary,
            formatter_class=_HelpFormatter,
        )
        parser.set_defaults(run=run)
        return parser

    return action


def _add_dlq(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    action = _with_actions(
        commands, "dlq", "list, replay or purge dead letters", _cli_dlq.__doc__ or "", _cli_dlq.run
    )
    action("keys", "source keys that have dead letters, with their counts (tab-separated)")
    counting = action("count", "how many dead letters KEY has (one number on stdout)")
    counting.add_argument("key", metavar="KEY", help="the source key (stream)")
    listing = action("list", "show the dead letters of KEY: id, reason, group, deliveries, fields")
    listing.add_argument("key", metavar="KEY", help="the source key (stream)")
    listing.add_argument("--count", type=int, default=20, help="entries to show")
    listing.add_argument(
        "--after", metavar="ID", help="start after this dead letter id (the next page of a listing)"
    )
    replay = action("replay", "append dead letters of KEY to it again and delete them")
    replay.add_argument("key", metavar="KEY", help="the source key (stream)")
    replay.add_argument(
        "--id",
        action="append",
        dest="ids",
        metavar="ID",
        help="replay only this dead letter (repeatable; as printed by 'dlq list'); default: all",
    )
    replay.add_argument(
        "--to",
        metavar="STREAM",
        help="append to this stream instead of KEY (never to a stream named inside a dead letter)",
    )
    purge = action("purge", "delete every dead letter of KEY")
    purge.add_argument("key", metavar="KEY", help="the source key (stream)")
    purge.add_argument(
        "--id",
        action="append",
        dest="ids",
        metavar="ID",
        help="delete only this dead letter (repeatable); default: all",
    )


def _add_streams(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    action = _with_actions(
        commands,
        "streams",
        "list, retire or unretire the streams consumers read",
        _cli_streams.__doc__ or "",
        _cli_streams.run,
    )
    action("list", "registered and retired streams")
    for name, summary in (
        ("retire", "stop every consumer reading KEY (its entries stay); running consumers follow"),
        ("unretire", "let consumers read KEY again"),
    ):
        action(name, summary).add_argument("key", metavar="KEY", help="the stream")


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = _subcommand(
        commands,
        "bench",
        "throughput, latency and memory of abe-redis against plain redis-py on the same server",
        "Runs every workload through abe-redis and as plain redis-py code on one server, and "
        "prints msg/s, p50/p99 and the ratio ours/raw. Without --url it starts its own "
        "redis-server on a free port.",
    )
    bench.add_argument("--url", help="a Redis to use (only keys under abe-redis-bench:* are written)")
    bench.add_argument(
        "--cluster-url",
        help="a Redis Cluster for the cluster workload (redis+cluster://host:port,…); default: "
        "start a 3-master cluster on free ports (needs abe-redis[testing]); --skip cluster skips it",
    )
    bench.add_argument("--quick", action="store_true", help="a small run that takes seconds")
    bench.add_argument("--count", type=int, help="messages per publish workload (default 60000)")
    bench.add_argument("--rounds", type=int, help="rounds per workload, best counts (default 3, --quick 1)")
    bench.add_argument("--skip", action="append", metavar="WORD", help="skip workloads naming WORD")
    bench.add_argument("--json", default="abe-redis-bench.json", help="where to write the figures")
    bench.add_argument("--svg", help="also draw the figures as an SVG bar chart here")
    bench.add_argument("--from-json", metavar="PATH", help="only print (and draw) figures written before")
    bench.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace, console: Console) -> int:
    from . import _bench  # imported on use: the other commands need none of it

    return _bench.run(args, console)


def _add_simulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    simulate = _subcommand(
        commands,
        "simulate",
        "deterministic simulation: seeded fault schedules against an in-process fake Redis",
        "Runs a workload against the backend on a virtual clock and a simulated network with "
        "faults, one schedule per seed, and checks the history (lost, duplicated, stranded, "
        "concurrently handled, falsely dead-lettered ...). The same seed replays exactly. "
        "Needs the test extras (fakeredis). See docs/simulation.md.",
    )
    simulate.add_argument("--seeds", type=int, default=200, help="how many seeds to run")
    simulate.add_argument("--first-seed", type=int, default=0, help="the first seed of the range")
    simulate.add_argument("--seed", type=int, help="run only this seed (a replay) and report it in full")
    simulate.add_argument("--trace", action="store_true", help="with --seed: print the trace")
    simulate.add_argument("--faults", default="all", help="all, none, or a comma-separated list of kinds")
    simulate.add_argument("--workload", default="default", help="default, fast, prefetch or shared")
    simulate.add_argument("--messages", type=int, default=200, help="messages per schedule")
    simulate.add_argument(
        "--server", default="model", help="the in-process Redis: model (the lean model) or fakeredis"
    )
    simulate.add_argument("--fail-on", metavar="CATEGORIES", help="anomaly categories that fail a seed")
    simulate.add_argument(
        "--determinism",
        type=int,
        default=0,
        metavar="N",
        help="run the first N seeds twice; traces must match",
    )
    simulate.add_argument("--jobs", type=int, default=1, help="worker processes to spread the seeds over")
    simulate.add_argument("--json", default="abe-redis-simulate.json", help="where to write the report")
    simulate.set_defaults(run=_run_simulate)


def _run_simulate(args: argparse.Namespace, console: Console) -> int:
    try:
        from abe_redis_testing.simulation import _cli as simulation_cli
    except ImportError as exc:  # the test extras are not installed
        raise CliError(f"simulate needs the test extras (pip install 'abe-redis[testing]'): {exc}") from None
    return simulation_cli.run(args, console)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_verify,
    _add_info,
    _add_tail,
    _add_dlq,
    _add_streams,
    _add_bench,
    _add_simulate,
]


def main(argv: Sequence[str] | None = None) -> int:
    stderr = Console(stderr=True)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=stderr, show_path=False, show_time=False)],
    )
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args, Console())
    # RedisClusterException (no cluster node answered) is not a RedisError.
    except (CliError, AbeRedisError, RedisError, RedisClusterException, OSError) as exc:
        # One line instead of a traceback; a URL's password never appears.
        # Plain text: no wrapping, no emoji codes or markup read into the message.
        print(f"abe-redis {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


def _one_line(exc: BaseException) -> str:
    message = _CLIENT_REPR.sub("", " ".join(str(exc).split()))
    if not isinstance(exc, CliError | AbeRedisError):
        # Some redis-py errors (MaxConnectionsError) have no text: the type alone says it.
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return redact_text(message)


# redis-py's MasterNotFoundError appends the sentinel client's whole repr (hundreds of
# characters of pool settings) to "No master found for 'name'".
_CLIENT_REPR = re.compile(r" : <redis\.(?:asyncio\.)?client\.Redis\(.*$")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
