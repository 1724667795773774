"""``abe-redis streams list|retire|unretire``: which streams consumers read.

Retiring a stream removes it from the registry and adds it to the retired set; running
consumers stop reading it at their next discovery (``REDIS_DISCOVERY_INTERVAL_MS``). Its
entries stay where they are. Publishing to a retired stream still writes, and logs a warning.
"""

from __future__ import annotations

import argparse
import asyncio

from rich.console import Console

from ._cli_common import backend_for, plain, resolve_url


def run(args: argparse.Namespace, console: Console) -> int:
    return asyncio.run(_run(args, console))


async def _run(args: argparse.Namespace, console: Console) -> int:
    url = resolve_url(getattr(args, "url", None), "streams")
    async with backend_for(url) as backend:
        registry = backend.registry
        if args.action == "list":
            listed, retired = await registry.listed()
            for name in sorted(listed - retired):
                console.print(plain(name))
            for name in sorted(retired):
                console.print(plain(f"{name} (retired)"))
            if not listed and not retired:
                console.print(plain("no streams registered"))
            return 0
        if args.action == "retire":
            was_registered = await registry.retire(args.key)
            note = "" if was_registered else " (it was not registered)"
            console.print(
                plain(f"retired {args.key}{note}; consumers stop reading it at their next discovery")
            )
            return 0
        was_retired = await registry.unretire(args.key)
        console.print(plain(f"{args.key} is {'no longer retired' if was_retired else 'not retired'}"))
        return 0
