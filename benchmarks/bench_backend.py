"""Throughput and latency of RedisStreamsBackend against raw redis-py on the same server.

    .venv/bin/python benchmarks/bench_backend.py [--url redis://...] [--count 20000]

Starts its own redis-server on a free port unless --url is given. Prints a table of figures and
the ratio of each to its raw redis-py baseline; the ratios are what to watch across changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from rich.console import Console
from rich.table import Table

from abe_redis import RedisStreamsBackend
from abe_redis_testing.servers import RedisServer, find_binary

PAYLOAD = {"type": "message", "channel": "C1234567890", "user": "U1", "text": "hello " * 10, "ts": 1.5}


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


async def bounded_gather(n: int, make: Callable[[int], Awaitable[Any]], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await make(i)

    await asyncio.gather(*(one(i) for i in range(n)))


async def run(url: str, count: int, console: Console) -> list[tuple[str, float, str, float | None]]:
    # The same waiting pool as ours: a plain pool fails the 11th concurrent command.
    raw = Redis(connection_pool=BlockingConnectionPool.from_url(url, max_connections=10))
    backend = RedisStreamsBackend.from_url(url, block_ms=100, discovery_interval_ms=100, batch_size=200)
    data = json.dumps(PAYLOAD).encode()
    rows: list[tuple[str, float, str, float | None]] = []
    try:
        await raw.flushall()

        async def raw_sequential() -> None:
            for _ in range(count):
                await raw.xadd("raw", {"payload": data})

        async def ours_sequential() -> None:
            for _ in range(count):
                await backend.publish("ours", PAYLOAD)

        raw_seq = count / await timed(raw_sequential)
        ours_seq = count / await timed(ours_sequential)
        rows.append(("publish, sequential", ours_seq, "msg/s", ours_seq / raw_seq))
        rows.append(("  raw XADD baseline", raw_seq, "msg/s", None))

        raw_conc = count / await timed(
            lambda: bounded_gather(count, lambda _: raw.xadd("raw2", {"payload": data}), 100)
        )
        ours_conc = count / await timed(
            lambda: bounded_gather(count, lambda _: backend.publish("ours2", PAYLOAD), 100)
        )
        rows.append(("publish, 100 concurrent (pool 10)", ours_conc, "msg/s", ours_conc / raw_conc))
        rows.append(("  raw XADD baseline", raw_conc, "msg/s", None))

        async def raw_consume() -> None:
            await raw.xgroup_create("raw", "g", id="0")
            got = 0
            while got < count:
                reply = await raw.xreadgroup("g", "c", {"raw": ">"}, count=200, block=100)
                for _, entries in reply:
                    ids = [entry_id for entry_id, _ in entries]
                    for _, fields in entries:
                        json.loads(fields[b"payload"])
                    await raw.xack("raw", "g", *ids)
                    got += len(ids)

        async def ours_consume() -> None:
            stream = backend.consume(group="bench")
            got = 0
            async for _ in stream:
                got += 1
                if got >= count * 2:  # "ours" and "ours2" each hold count messages
                    break
            await stream.aclose()

        raw_rate = count / await timed(raw_consume)
        ours_rate = count * 2 / await timed(ours_consume)
        rows.append(("consume + ack, 1 consumer", ours_rate, "msg/s", ours_rate / raw_rate))
        rows.append(("  raw XREADGROUP+XACK (batched ack) baseline", raw_rate, "msg/s", None))

        # A registry of its own, so this group does not first drain the throughput streams.
        async with RedisStreamsBackend.from_url(
            url, block_ms=100, discovery_interval_ms=100, registry_key="bench:latency"
        ) as quiet:
            latencies = await end_to_end_latency(quiet, 500)
        rows.append(("publish→yield latency p50", statistics.median(latencies) * 1000, "ms", None))
        rows.append(
            ("publish→yield latency p99", statistics.quantiles(latencies, n=100)[98] * 1000, "ms", None)
        )
    finally:
        await backend.aclose()
        await raw.aclose()
    return rows


async def end_to_end_latency(backend: RedisStreamsBackend, n: int) -> list[float]:
    stream = backend.consume(group="latency")
    sent: dict[int, float] = {}
    latencies: list[float] = []
    await backend.publish("latency", {"i": -1})
    await anext(stream)  # the consumer is set up and waiting from here on

    async def producer() -> None:
        for i in range(n):
            sent[i] = time.perf_counter()
            await backend.publish("latency", {"i": i})
            await asyncio.sleep(0.001)

    task = asyncio.create_task(producer())
    async for message in stream:
        latencies.append(time.perf_counter() - sent[message["i"]])
        if len(latencies) == n:
            break
    await task
    await stream.aclose()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a Redis to use (it is FLUSHALLed); default: start redis-server")
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    console = Console()
    server = None
    url = args.url
    if url is None:
        server = RedisServer(find_binary("redis-server")).start()
        url = server.url
    try:
        rows = asyncio.run(run(url, args.count, console))
    finally:
        if server is not None:
            server.cleanup()
    table = Table(title=f"abe-redis benchmark — {args.count} messages")
    table.add_column("measure")
    table.add_column("figure", justify="right")
    table.add_column("unit")
    table.add_column("ratio to raw redis-py", justify="right")
    for name, value, unit, ratio in rows:
        table.add_row(name, f"{value:,.1f}", unit, "" if ratio is None else f"{ratio:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
