"""``abe-redis dlq keys|count|list|replay|purge``: dead letters of the streams an application uses.

Settings other than ``--url`` (password, TLS, registry, dead-letter suffix) come from the
environment, as the application that owns the streams reads them.
"""

from __future__ import annotations

import argparse
import asyncio

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import DeadLetter, DeadLetters
from ._cli_common import CliError, backend_for, note, plain, resolve_url, text


def run(args: argparse.Namespace, console: Console) -> int:
    url = resolve_url(getattr(args, "url", None), f"dlq {args.action}")
    return asyncio.run(_run(args, console, url))


async def _run(args: argparse.Namespace, console: Console, url: str) -> int:
    async with backend_for(url) as backend:
        dead = DeadLetters(backend)
        if args.action == "keys":
            return await _keys(console, dead)
        if args.action == "count":
            print(await dead.count(args.key))  # a bare number: this output is meant for scripts
            return 0
        if args.action == "list":
            return await _list(console, dead, args.key, args.count, getattr(args, "after", None))
        if args.action == "replay":
            return await _replay(console, dead, args.key, args.ids, getattr(args, "to", None))
        return await _purge(console, dead, args.key, getattr(args, "ids", None))


async def _keys(console: Console, dead: DeadLetters) -> int:
    # A replay of the last dead letter leaves its stream behind, empty: not a key with dead letters.
    counts = [(name, await dead.count(name)) for name in await dead.keys()]
    counts = [(name, count) for name, count in counts if count]
    if not counts:
        note(Console(stderr=True), "no dead letters")
    for name, count in counts:
        # Plain tab-separated lines on stdout: this output is meant for scripts.
        print(f"{name}\t{count}")
    return 0


async def _list(console: Console, dead: DeadLetters, key: str, count: int, after: str | None = None) -> int:
    letters = await dead.entries(key, count=count, after=after)
    if not letters:
        console.print(plain(f"no dead letters for {key}"))
        return 0
    console.print(letters_table(key, letters))
    total = await dead.count(key)
    if total > len(letters):
        note(
            console,
            f"showing {len(letters)} of {total}; --count N shows more, "
            f"--after {letters[-1].id} the next page",
        )
    return 0


def letters_table(key: str, letters: list[DeadLetter]) -> Table:
    table = Table(title=Text(f"dead letters of {key}"))
    # IDs whole and unbroken, so they can be copied into --id.
    widest = max(len(letter.id) for letter in letters)
    table.add_column("id", no_wrap=True, min_width=widest)
    table.add_column("source id", no_wrap=True, min_width=max(len(x.source_id) for x in letters))
    table.add_column("group", overflow="fold")
    table.add_column("deliveries", justify="right")
    table.add_column("reason", overflow="fold", ratio=2)
    table.add_column("fields", overflow="fold", ratio=2)
    for letter in letters:
        shown = ", ".join(f"{text(k)}={v[:60]!r}" for k, v in letter.fields.items())
        table.add_row(
            plain(letter.id),
            plain(letter.source_id),
            plain(letter.group),
            str(letter.delivery_count),
            plain(letter.reason),
            plain(shown),
        )
    return table


async def _replay(
    console: Console, dead: DeadLetters, key: str, ids: list[str] | None, to: str | None = None
) -> int:
    await _refuse_unknown(dead, key, ids, "replayed")
    target = to or key
    replayed = await dead.replay(key, ids, to=to)
    if replayed == 0:
        console.print(plain(f"no dead letters of {key} to replay"))
    else:
        console.print(plain(f"replayed {replayed} dead letter(s) of {key} to {target}"))
    return 0


async def _purge(console: Console, dead: DeadLetters, key: str, ids: list[str] | None = None) -> int:
    await _refuse_unknown(dead, key, ids, "purged")
    purged = await dead.purge(key, ids)
    if purged == 0:
        console.print(plain(f"no dead letters of {key} to purge"))
    else:
        console.print(plain(f"purged {purged} dead letter(s) of {key}"))
    return 0


async def _refuse_unknown(dead: DeadLetters, key: str, ids: list[str] | None, verb: str) -> None:
    if not ids:
        return
    unknown = [entry_id for entry_id in ids if await dead.get(key, entry_id) is None]
    if unknown:
        # Nothing is applied: a typo in one ID must not half-apply the request.
        raise CliError(f"no dead letter of {key} has id {', '.join(unknown)}; nothing {verb}")
