"""``abe-redis info``: streams, groups, consumers, pending, lag and dead letters at a glance.

It finds streams the way consumers do (the registry set, ``REDIS_STREAMS``, ``REDIS_STREAM_PATTERN``
through ``SCAN``), so it shows what the application configured in the environment sees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.exceptions import ResponseError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._cli_common import backend_for, note, plain, resolve_url, text


@dataclass
class ConsumerInfo:
    name: str
    pending: int
    idle_ms: int


@dataclass
class GroupInfo:
    name: str
    pending: int
    lag: int | None
    last_delivered_id: str
    consumers: list[ConsumerInfo] = field(default_factory=list)


@dataclass
class StreamInfo:
    name: str
    length: int
    dead_letters: int
    exists: bool = True
    groups: list[GroupInfo] = field(default_factory=list)


def run(args: argparse.Namespace, console: Console) -> int:
    url = resolve_url(args.url, "info")
    streams = asyncio.run(collect(url))
    if args.json:
        print(json.dumps({"streams": [asdict(stream) for stream in streams]}, indent=2))
    elif not streams:
        note(console, "no streams found (registry, REDIS_STREAMS and REDIS_STREAM_PATTERN are empty)")
    else:
        console.print(info_table(streams))
    return 0


async def collect(url: str) -> list[StreamInfo]:
    async with backend_for(url) as backend:
        config = backend.config
        client: Any = backend.client
        # As consumers find them: REDIS_STREAMS, the registry, REDIS_STREAM_PATTERN (in a Redis
        # Cluster, every partition's).
        names, _ = await backend.registry.listed()
        # The backend's own keys (registry, notifications, consumer records) are not streams of
        # the application, and dead letters are shown with the stream they came from.
        shown = sorted(
            n
            for n in names
            if n != config.registry_key
            and not n.startswith(config.key_prefix)
            and not config.is_dead_letter_stream(n)
        )
        return [await _stream(client, name, config.dead_letter_stream(name)) for name in shown]


async def _stream(client: Any, name: str, dead_letter_stream: str) -> StreamInfo:
    dead = int(await client.xlen(dead_letter_stream))
    try:
        groups = await client.xinfo_groups(name)
    except ResponseError:
        # Registered but gone (deleted, or flushed): shown as such rather than hidden.
        return StreamInfo(name=name, length=0, dead_letters=dead, exists=False)
    info = StreamInfo(name=name, length=int(await client.xlen(name)), dead_letters=dead)
    for group in groups:
        lag = group.get("lag")
        entry = GroupInfo(
            name=text(group["name"]),
            pending=int(group["pending"]),
            lag=None if lag is None else int(lag),
            last_delivered_id=text(group.get("last-delivered-id", b"")),
        )
        for consumer in await client.xinfo_consumers(name, group["name"]):
            entry.consumers.append(
                ConsumerInfo(
                    name=text(consumer["name"]),
                    pending=int(consumer["pending"]),
                    idle_ms=int(consumer["idle"]),
                )
            )
        info.groups.append(entry)
    return info


def info_table(streams: list[StreamInfo]) -> Table:
    table = Table(title="abe-redis streams")
    table.add_column("stream", overflow="fold")
    table.add_column("length", justify="right")
    table.add_column("dead letters", justify="right")
    table.add_column("group", overflow="fold")
    table.add_column("consumers", justify="right")
    table.add_column("pending", justify="right")
    table.add_column("lag", justify="right")
    for stream in streams:
        dead = Text(str(stream.dead_letters), style="red" if stream.dead_letters else "")
        length = str(stream.length) if stream.exists else "missing"
        if not stream.groups:
            table.add_row(plain(stream.name), length, dead, Text("(no groups)", style="dim"), "", "", "")
        for n, group in enumerate(stream.groups):
            table.add_row(
                plain(stream.name) if n == 0 else "",
                length if n == 0 else "",
                dead if n == 0 else "",
                plain(group.name),
                str(len(group.consumers)),
                str(group.pending),
                "?" if group.lag is None else str(group.lag),
            )
    return table
