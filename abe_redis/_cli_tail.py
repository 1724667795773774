"""``abe-redis tail KEY``: print a stream's entries as they arrive, like ``tail -f``.

It reads with ``XREAD`` and joins no group, so it acknowledges nothing and takes no message
from any consumer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import Any

from rich.console import Console

from ._cli_common import backend_for, resolve_url, text
from ._errors import InvalidKeyError

PAYLOAD_FIELD = b"payload"


def run(args: argparse.Namespace, console: Console) -> int:
    url = resolve_url(args.url, "tail")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(follow(url, args.key, start=args.start, limit=args.count, block_ms=args.block_ms))
    return 0


def render(entry_id: Any, fields: dict[Any, Any]) -> str:
    """One line per entry: its ID, then the JSON payload (or every field when it has other ones)."""
    raw = {k if isinstance(k, bytes) else str(k).encode(): v for k, v in fields.items()}
    if set(raw) == {PAYLOAD_FIELD}:
        body = text(raw[PAYLOAD_FIELD])
        # Not JSON (a poison entry): shown as it is.
        with contextlib.suppress(ValueError):
            body = json.dumps(json.loads(body), ensure_ascii=False, separators=(", ", ": "))
    else:
        body = " ".join(f"{text(k)}={text(v)}" for k, v in raw.items())
    return f"{text(entry_id)}\t{body}"


async def follow(url: str, key: str, *, start: str, limit: int | None, block_ms: int) -> int:
    """Print entries of ``key`` after ``start`` ("$": only new ones) until ``limit`` were printed."""
    printed = 0
    async with backend_for(url) as backend:
        client: Any = backend.client
        if backend.config.topology == "cluster":
            # The stream that stores the key's messages (key{tag}); a stored name is kept as is.
            with contextlib.suppress(InvalidKeyError):
                key = backend.stream_name(key)
        last = await _resolve(client, key, start)
        while limit is None or printed < limit:
            reply = await client.xread({key: last}, block=block_ms, count=100)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    print(render(entry_id, fields), flush=True)
                    last = text(entry_id)
                    printed += 1
                    if limit is not None and printed >= limit:
                        return printed
    return printed


async def _resolve(client: Any, key: str, start: str) -> str:
    # "$" is pinned to the current last ID once: re-sending "$" on every read would skip what
    # arrives between two reads.
    if start != "$":
        return start
    newest = await client.xrevrange(key, count=1)
    return text(newest[0][0]) if newest else "0-0"
