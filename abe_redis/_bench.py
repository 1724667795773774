"""``abe-redis bench``: abe-redis against plain redis-py doing the same work, on the same server.

Every workload runs twice in one run, against one server: once through abe-redis and once as
the plain redis-py code an application would otherwise write (the "raw" baseline), and the ratio
ours / raw is what to watch across changes. ``publisher`` rows measure the auto-batching
publisher (``abe_redis._publisher``) on its own.

Without ``--url`` it starts its own ``redis-server`` on a free port (with ``--url`` it writes only
keys under a fresh ``abe-redis-bench:`` prefix and deletes them afterwards). Figures are printed
as a table and written as JSON (``--json``); ``--svg`` draws them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import RedisStreamsBackend, __version__
from ._bench_cluster import local_cluster, run_cluster_workloads
from ._bench_timing import our_consume, seconds_until
from ._cli_common import CliError
from ._publisher import Publisher
from ._redact import redact_text

CONCURRENT_PUBLISHERS = 64
RAW_PIPELINE = 100
"""Commands per raw redis-py pipeline (the baseline for concurrent publishing and publish_many)."""
RAW_READ_COUNT = 500
"""``XREADGROUP COUNT`` of the raw consume baseline, which acks each batch with one ``XACK``."""
RAW_BATCH_IMPL = f"ours, batch {RAW_READ_COUNT}"
"""The consume rows of our backend with ``batch_size`` (and so prefetch) = the raw ``COUNT``."""
LATENCY_RATE = 5000
"""Messages per second of the end-to-end latency workload."""
URL_ENV = "ABE_REDIS_BENCH_URL"
"""How the parent hands the server URL to an RSS worker process (argv would show a password)."""

PAYLOAD: dict[str, Any] = {
    "type": "message",
    "channel": "C1234567890",
    "user": "U1",
    "text": "hello " * 10,
    "ts": 1.5,
}


def payload_of_size(size: int) -> dict[str, Any]:
    """A payload whose compact JSON is ``size`` bytes (or the smallest possible)."""
    base = {"type": "message", "i": 0, "text": ""}
    padding = max(0, size - len(_dumps(base)))
    return {**base, "text": "x" * padding}


def _dumps(payload: dict[str, Any]) -> bytes:
    # What an application using redis-py directly would do; the codec's rules are the same.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    workload: str
    impl: str  # "ours", "raw", "publisher" or RAW_BATCH_IMPL
    messages: int
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def _percentiles(latencies: list[float]) -> tuple[float | None, float | None]:
    if not latencies:
        return None, None
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return statistics.median(ordered) * 1000, p99 * 1000


@dataclass(frozen=True)
class Settings:
    count: int = 60_000
    """Messages of each publish workload."""
    backlog: int = 200_000
    """Messages in the consume + ack backlog."""
    latency_seconds: float = 5.0
    rss_count: int = 1_000_000
    sizes: tuple[int, ...] = (100, 1000, 10_000)
    streams: int = 16
    skip: tuple[str, ...] = ()
    rounds: int = 3

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            count=1000,
            backlog=2000,
            latency_seconds=0.4,
            rss_count=4000,
            sizes=(100, 10_000),
            streams=4,
            rounds=1,
        )


def best_rounds(results: list[Result]) -> list[Result]:
    """One result per workload and implementation: the round with the highest msg/s (for the
    latency workload, the lowest p99), with how many rounds ran and how far apart they were."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        groups.setdefault((result.workload, result.impl), []).append(result)
    best: list[Result] = []
    for (workload, _), runs in groups.items():
        if workload == "end-to-end latency":
            chosen = min(runs, key=lambda r: r.p99_ms if r.p99_ms is not None else math.inf)
        else:
            chosen = max(runs, key=lambda r: r.rate)
        rates = [r.rate for r in runs]
        chosen.extra["rounds"] = len(runs)
        chosen.extra["rate_spread"] = max(rates) / min(rates) if min(rates) > 0 else 0.0
        best.append(chosen)
    return best


TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "sequential publish": ("ours/raw >= 0.9", lambda r: r >= 0.9),
    "64 concurrent publishers": ("ours/raw >= 1.0 (stretch 2.0)", lambda r: r >= 1.0),
    "consume + ack, 1 consumer": ("ours/raw >= 0.8", lambda r: r >= 0.8),
    "consume + ack, 4 consumers": ("ours/raw >= 0.8", lambda r: r >= 0.8),
}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, url: str, settings: Settings, progress: Progress) -> None:
        self.url = url
        self.settings = settings
        self.progress = progress
        self.prefix = f"abe-redis-bench:{uuid.uuid4().hex[:8]}"
        self.results: list[Result] = []
        self._task: Any = None
        self._serial = 0
        self.raw = Redis(connection_pool=BlockingConnectionPool.from_url(url, max_connections=10))
        self.cluster_url: str | None = None
        """``--cluster-url``; without it the cluster workload starts a cluster of its own."""
        self._owned = contextlib.ExitStack()

    # -- helpers ---------------------------------------------------------------------------

    def key(self, name: str) -> str:
        self._serial += 1
        return f"{self.prefix}:{name}:{self._serial}"

    def backend(self, **overrides: Any) -> RedisStreamsBackend:
        """Our backend, with its own registry so that it discovers only this workload's streams."""
        settings: dict[str, Any] = {
            # Every key the backend keeps for itself (consumer records, notifications) lives
            # under the run's prefix too, so cleanup() leaves nothing behind.
            "key_prefix": f"{self.prefix}:backend:",
            "registry_key": self.key("registry"),
            "consumer_group": self.key("group"),
            "discovery_interval_ms": 100,
            "block_ms": 100,
        }
        return RedisStreamsBackend.from_url(self.url, **{**settings, **overrides})

    @contextlib.contextmanager
    def step(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        task = self.progress.add_task(description, total=total)
        try:
            yield lambda n: self.progress.advance(task, n)
        finally:
            self.progress.update(task, completed=total, visible=False)
            self.progress.remove_task(task)

    async def cleanup(self) -> None:
        doomed = [key async for key in self.raw.scan_iter(match=f"{self.prefix}:*", count=1000)]
        for start in range(0, len(doomed), 500):
            await self.raw.delete(*doomed[start : start + 500])

    def add(self, result: Result) -> None:
        self.results.append(result)

    def skipped(self, workload: str) -> bool:
        return any(word in workload for word in self.settings.skip)

    async def run(self) -> list[Result]:
        s = self.settings
        workloads: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("sequential publish", self.sequential_publish),
            ("64 concurrent publishers", self.concurrent_publish),
            ("publish_many", self.publish_many),
            (
                "consume + ack, 1 consumer",
                lambda: self.consume("consume + ack, 1 consumer", s.backlog, 1, raw_batch=True),
            ),
            (
                "consume + ack, 4 consumers",
                lambda: self.consume("consume + ack, 4 consumers", s.backlog, 4, raw_batch=True),
            ),
            ("end-to-end latency", self.latency),
            ("RSS over messages", self.rss),
            ("scaling", self.scaling),
            ("cluster", self.cluster),
        ]
        chosen = [(name, workload) for name, workload in workloads if not self.skipped(name)]
        # Every round runs each workload once more, raw and ours back to back, so a burst of
        # other load on the machine hits one round, not one side; the best round counts. The
        # RSS workload measures growth, not speed, and runs once.
        plan = [
            (name, workload)
            for round_ in range(s.rounds)
            for name, workload in chosen
            if round_ == 0 or name != "RSS over messages"
        ]
        overall = self.progress.add_task("abe-redis bench", total=len(plan))
        try:
            for name, workload in plan:
                self.progress.update(overall, description=name)
                await workload()
                await self.cleanup()
                self.progress.advance(overall)
        finally:
            await self.cleanup()
            await self.raw.aclose()
            await asyncio.to_thread(self._owned.close)
        self.results = best_rounds(self.results)
        return self.results

    # -- publishing ------------------------------------------------------------------------

    async def sequential_publish(self) -> None:
        n = self.settings.count
        name = "sequential publish"

        async def timed(call: Callable[[], Awaitable[Any]], advance: Callable[[int], None]) -> Result:
            latencies = []
            started = time.perf_counter()
            for i in range(n):
                t = time.perf_counter()
                await call()
                latencies.append(time.perf_counter() - t)
                if i % 1000 == 999:
                    advance(1000)
            elapsed = time.perf_counter() - started
            return Result(name, "", n, elapsed, *_percentiles(latencies))

        raw_key = self.key("seq-raw")
        with self.step(f"{name}: raw XADD", n) as advance:
            result = await timed(lambda: self.raw.xadd(raw_key, {"payload": _dumps(PAYLOAD)}), advance)
            result.impl = "raw"
            self.add(result)
        async with self.backend() as backend:
            key = self.key("seq-ours")
            with self.step(f"{name}: ours", n) as advance:
                result = await timed(lambda: backend.publish(key, PAYLOAD), advance)
                result.impl = "ours"
                self.add(result)
            publisher = Publisher(backend.client)
            pub_key = self.key("seq-publisher")
            with self.step(f"{name}: publisher", n) as advance:
                result = await timed(
                    lambda: publisher.xadd(
                        pub_key, {"payload": _dumps(PAYLOAD)}, maxlen=None, nomkstream=False
                    ),
                    advance,
                )
                result.impl = "publisher"
                self.add(result)
            await publisher.aclose()

    async def concurrent_publish(self, payload: dict[str, Any] = PAYLOAD, label: str = "") -> None:
        name = label or "64 concurrent publishers"
        per_task = max(RAW_PIPELINE, self.settings.count // CONCURRENT_PUBLISHERS)
        if label:  # the size sweep keeps each run's bytes bounded
            per_task = max(10, min(per_task, 20_000_000 // CONCURRENT_PUBLISHERS // len(_dumps(payload))))
        per_task -= per_task % 10
        n = per_task * CONCURRENT_PUBLISHERS

        async def run(one: Callable[[int], Awaitable[int]], advance: Callable[[int], None]) -> Result:
            latencies: list[float] = []

            async def publisher_task() -> None:
                done = 0
                while done < per_task:
                    t = time.perf_counter()
                    k = await one(per_task - done)
                    latency = time.perf_counter() - t
                    latencies.extend([latency] * k)
                    done += k
                    advance(k)

            started = time.perf_counter()
            await asyncio.gather(*(publisher_task() for _ in range(CONCURRENT_PUBLISHERS)))
            return Result(name, "", n, time.perf_counter() - started, *_percentiles(latencies))

        raw_key = self.key("conc-raw")

        async def raw_pipeline(left: int) -> int:
            k = min(RAW_PIPELINE, left)
            async with self.raw.pipeline(transaction=False) as pipe:
                for _ in range(k):
                    pipe.xadd(raw_key, {"payload": _dumps(payload)})
                await pipe.execute()
            return k

        with self.step(f"{name}: raw pipelines of {RAW_PIPELINE}", n) as advance:
            result = await run(raw_pipeline, advance)
            result.impl = "raw"
            result.note = f"{CONCURRENT_PUBLISHERS} tasks, pipelines of {RAW_PIPELINE} XADDs"
            self.add(result)
        async with self.backend() as backend:
            key = self.key("conc-ours")

            async def ours(left: int) -> int:
                await backend.publish(key, payload)
                return 1

            with self.step(f"{name}: ours", n) as advance:
                result = await run(ours, advance)
                result.impl = "ours"
                result.note = f"{CONCURRENT_PUBLISHERS} tasks, one awaited publish at a time"
                self.add(result)
            publisher = Publisher(backend.client)
            pub_key = self.key("conc-publisher")

            async def direct(left: int) -> int:
                await publisher.xadd(pub_key, {"payload": _dumps(payload)}, maxlen=None, nomkstream=False)
                return 1

            with self.step(f"{name}: publisher", n) as advance:
                result = await run(direct, advance)
                result.impl = "publisher"
                result.extra["mean_batch"] = publisher.entries_sent / max(1, publisher.round_trips)
                result.note = f"{CONCURRENT_PUBLISHERS} tasks, one awaited xadd at a time"
                self.add(result)
            await publisher.aclose()

    async def publish_many(self) -> None:
        name = "publish_many"
        batches = max(1, self.settings.count // RAW_PIPELINE)
        n = batches * RAW_PIPELINE
        payloads = [PAYLOAD] * RAW_PIPELINE

        async def run(one: Callable[[], Awaitable[Any]], advance: Callable[[int], None]) -> Result:
            latencies = []
            started = time.perf_counter()
            for _ in range(batches):
                t = time.perf_counter()
                await one()
                latencies.append(time.perf_counter() - t)
                advance(RAW_PIPELINE)
            return Result(name, "", n, time.perf_counter() - started, *_percentiles(latencies))

        raw_key = self.key("many-raw")

        async def raw_batch() -> None:
            async with self.raw.pipeline(transaction=False) as pipe:
                for payload in payloads:
                    pipe.xadd(raw_key, {"payload": _dumps(payload)})
                await pipe.execute()

        note = f"batches of {RAW_PIPELINE}; latency is per batch"
        with self.step(f"{name}: raw pipelines", n) as advance:
            result = await run(raw_batch, advance)
            result.impl, result.note = "raw", note
            self.add(result)
        async with self.backend() as backend:
            key = self.key("many-ours")
            publish_many = getattr(backend, "publish_many", None)
            if publish_many is not None:
                with self.step(f"{name}: ours", n) as advance:
                    result = await run(lambda: publish_many(key, payloads), advance)
                    result.impl, result.note = "ours", note
                    self.add(result)
            publisher = Publisher(backend.client)
            pub_key = self.key("many-publisher")

            async def direct() -> None:
                await publisher.xadd_many(
                    pub_key, [{"payload": _dumps(p)} for p in payloads], maxlen=None, nomkstream=False
                )

            with self.step(f"{name}: publisher", n) as advance:
                result = await run(direct, advance)
                result.impl, result.note = "publisher", note
                self.add(result)
            await publisher.aclose()

    # -- consuming -------------------------------------------------------------------------

    async def fill(self, key: str, n: int, payload: dict[str, Any], advance: Callable[[int], None]) -> None:
        data = _dumps(payload)
        for start in range(0, n, 1000):
            async with self.raw.pipeline(transaction=False) as pipe:
                for _ in range(min(1000, n - start)):
                    pipe.xadd(key, {"payload": data})
                await pipe.execute()
            advance(min(1000, n - start))

    async def consume(
        self,
        name: str,
        n: int,
        consumers: int,
        *,
        payload: dict[str, Any] = PAYLOAD,
        streams: int = 1,
        raw_batch: bool = False,
    ) -> None:
        per_stream = n // streams
        n = per_stream * streams
        raw_keys = [self.key("backlog-raw") for _ in range(streams)]
        with self.step(f"{name}: filling the raw backlog", n) as advance:
            for key in raw_keys:
                await self.fill(key, per_stream, payload, advance)
        group = self.key("raw-group")
        for key in raw_keys:
            await self.raw.xgroup_create(key, group, id="0")
        with self.step(f"{name}: raw XREADGROUP COUNT {RAW_READ_COUNT} + XACK", n) as advance:
            seconds = await self._raw_consume(raw_keys, group, n, consumers, advance)
        note = f"{consumers} consumer(s), {streams} stream(s), {len(_dumps(payload))} B payloads"
        self.add(Result(name, "raw", n, seconds, note=note))
        await self.raw.delete(*raw_keys)

        # "ours" is the backend as configured by default (batch_size 100, so prefetch 100): the
        # row the target is judged on, comparable across runs. The main workloads also run it
        # with the raw baseline's batch (batch_size = its COUNT), like for like.
        runs: list[tuple[str, dict[str, Any]]] = [("ours", {})]
        if raw_batch:
            runs.append((RAW_BATCH_IMPL, {"batch_size": RAW_READ_COUNT}))
        for impl, overrides in runs:
            async with self.backend(**overrides) as backend:
                keys = [self.key("backlog-ours") for _ in range(streams)]
                with self.step(f"{name}: filling our backlog", n) as advance:
                    for key in keys:
                        await backend.publish(key, payload)  # registers the stream
                        await self.fill(key, per_stream - 1, payload, advance)
                        advance(1)
                with self.step(f"{name}: {impl}", n) as advance:
                    seconds = await our_consume(backend, n, consumers, advance)
                batch = backend.config.batch_size
                self.add(Result(name, impl, n, seconds, note=f"{note}, batch_size {batch}"))

    async def _raw_consume(
        self, keys: list[str], group: str, n: int, consumers: int, advance: Callable[[int], None]
    ) -> float:
        got = 0
        finished = asyncio.get_running_loop().create_future()

        async def consumer(name: str) -> None:
            nonlocal got
            streams: Any = dict.fromkeys(keys, ">")
            while True:
                reply: Any = await self.raw.xreadgroup(group, name, streams, count=RAW_READ_COUNT, block=100)
                for stream, entries in reply:
                    ids = []
                    for entry_id, fields in entries:
                        json.loads(fields[b"payload"])
                        ids.append(entry_id)
                    await self.raw.xack(stream, group, *ids)
                    got += len(ids)
                    advance(len(ids))
                if got >= n and not finished.done():
                    finished.set_result(time.perf_counter())

        return await seconds_until(finished, (consumer(f"c{i}") for i in range(consumers)))

    # -- latency ---------------------------------------------------------------------------

    async def latency(self) -> None:
        name = "end-to-end latency"
        n = max(10, int(LATENCY_RATE * self.settings.latency_seconds))
        note = f"{LATENCY_RATE} msg/s; publish to consumer's hand"

        raw_key = self.key("latency-raw")
        group = self.key("latency-group")
        await self.raw.xgroup_create(raw_key, group, id="$", mkstream=True)

        async def raw_receive(deliver: Callable[[int], None], stop: asyncio.Event) -> None:
            while not stop.is_set():
                reply: Any = await self.raw.xreadgroup(
                    group, "c", {raw_key: ">"}, count=RAW_READ_COUNT, block=100
                )
                for _, entries in reply:
                    for _, fields in entries:
                        deliver(json.loads(fields[b"payload"])["i"])
                    await self.raw.xack(raw_key, group, *[entry_id for entry_id, _ in entries])

        with self.step(f"{name}: raw", n) as advance:
            result = await self._paced(
                n,
                lambda i: self.raw.xadd(raw_key, {"payload": _dumps({"i": i})}),
                raw_receive,
                advance,
            )
        result.workload, result.impl, result.note = name, "raw", note
        self.add(result)

        async with self.backend() as backend:
            key = self.key("latency-ours")
            await backend.publish(key, {"i": -1})
            stream = backend.consume()
            await asyncio.wait_for(anext(stream), 10)  # the consumer is set up from here on

            async def ours_receive(deliver: Callable[[int], None], stop: asyncio.Event) -> None:
                async for message in stream:
                    deliver(message["i"])

            with self.step(f"{name}: ours", n) as advance:
                result = await self._paced(n, lambda i: backend.publish(key, {"i": i}), ours_receive, advance)
            await stream.aclose()
        result.workload, result.impl, result.note = name, "ours", note
        self.add(result)

    async def _paced(
        self,
        n: int,
        send: Callable[[int], Awaitable[Any]],
        receive: Callable[[Callable[[int], None], asyncio.Event], Coroutine[Any, Any, None]],
        advance: Callable[[int], None],
    ) -> Result:
        sent: dict[int, float] = {}
        latencies: list[float] = []
        stop = asyncio.Event()
        all_in = asyncio.get_running_loop().create_future()

        def deliver(i: int) -> None:
            if i in sent:
                latencies.append(time.perf_counter() - sent.pop(i))
                if len(latencies) % 100 == 0:
                    advance(100)
                if len(latencies) == n and not all_in.done():
                    all_in.set_result(None)

        receiver = asyncio.create_task(receive(deliver, stop))
        started = time.perf_counter()
        for i in range(n):
            due = started + i / LATENCY_RATE
            ahead = due - time.perf_counter()
            if ahead > 0.001:
                await asyncio.sleep(ahead)
            sent[i] = time.perf_counter()
            await send(i)
        try:
            await asyncio.wait_for(all_in, 30)
        finally:
            stop.set()
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
        elapsed = time.perf_counter() - started
        return Result("", "", n, elapsed, *_percentiles(latencies))

    # -- memory ----------------------------------------------------------------------------

    async def rss(self) -> None:
        name = "RSS over messages"
        n = self.settings.rss_count
        for impl in ("raw", "ours"):
            with self.step(f"{name}: {impl}, {n:,} messages in a fresh process", 1):
                figures = await asyncio.to_thread(_rss_in_subprocess, self.url, impl, n, self.key("rss"))
            growth = (figures["rss_end"] - figures["rss_tenth"]) / figures["rss_tenth"]
            self.add(
                Result(
                    name,
                    impl,
                    n,
                    figures["seconds"],
                    extra={**figures, "growth": growth},
                    note=f"RSS growth from {n // 10:,} to {n:,} messages: {growth:+.1%}",
                )
            )

    # -- scaling ---------------------------------------------------------------------------

    async def scaling(self) -> None:
        s = self.settings
        for size in s.sizes:
            payload = payload_of_size(size)
            await self.concurrent_publish(payload, label=f"scaling: 64 concurrent publishers, {size} B")
            n = max(500, min(s.backlog // 2, 20_000_000 // size))
            await self.consume(f"scaling: consume + ack, {size} B", n, 1, payload=payload)
            await self.cleanup()
        n = max(s.streams * 100, s.backlog // 2)
        await self.consume(f"scaling: consume + ack, {s.streams} streams", n, 1, streams=s.streams)
        await self.consume(
            f"scaling: consume + ack, {s.streams} streams, 4 consumers", n, 4, streams=s.streams
        )

    # -- cluster ---------------------------------------------------------------------------

    async def cluster(self) -> None:
        """Publish and consume over many streams spread across a Redis Cluster (``_bench_cluster``)."""
        if self.cluster_url is None:
            self.cluster_url = await asyncio.to_thread(self._owned.enter_context, local_cluster())
        s = self.settings
        for row in await run_cluster_workloads(
            self.cluster_url,
            count=s.count,
            backlog=s.backlog // 2,
            streams=max(12, s.streams),
            step=self.step,
            result=Result,
        ):
            self.add(row)


# ---------------------------------------------------------------------------------------------
# RSS worker (a fresh process per implementation, so one does not inherit the other's heap)
# ---------------------------------------------------------------------------------------------


def _rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process, from /proc (Linux) or getrusage."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
        )
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak, peak


def _rss_in_subprocess(url: str, impl: str, n: int, key: str) -> dict[str, float]:
    env = {**os.environ, URL_ENV: url}
    proc = subprocess.run(
        [sys.executable, "-m", "abe_redis._bench", "--rss-worker", impl, str(n), key],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"RSS worker for {impl} failed: {redact_text(proc.stderr.strip()[-2000:])}")
    figures: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


async def _rss_worker(url: str, impl: str, n: int, key: str) -> dict[str, float]:
    """Publish and consume ``n`` messages in rounds; the stream is trimmed behind the consumer so
    the server's memory stays flat. Samples RSS after a tenth and at the end."""
    round_size = max(100, min(10_000, n // 20))
    tenth = n // 10
    rss_tenth = 0
    published = consumed = 0
    data = _dumps(PAYLOAD)
    started = time.perf_counter()
    if impl == "raw":
        raw = Redis(connection_pool=BlockingConnectionPool.from_url(url, max_connections=10))
        group = "g"
        await raw.xgroup_create(key, group, id="$", mkstream=True)
        while consumed < n:
            k = min(round_size, n - published)
            for start in range(0, k, RAW_PIPELINE):
                async with raw.pipeline(transaction=False) as pipe:
                    for _ in range(min(RAW_PIPELINE, k - start)):
                        pipe.xadd(key, {"payload": data})
                    await pipe.execute()
            published += k
            last: Any = b"0"
            while consumed < published:
                reply: Any = await raw.xreadgroup(group, "c", {key: ">"}, count=RAW_READ_COUNT, block=100)
                for _, entries in reply:
                    for _, fields in entries:
                        json.loads(fields[b"payload"])
                    ids = [entry_id for entry_id, _ in entries]
                    await raw.xack(key, group, *ids)
                    consumed += len(ids)
                    last = ids[-1]
            await raw.xtrim(key, minid=last)
            if not rss_tenth and consumed >= tenth:
                rss_tenth = _rss_bytes()[0]
        await raw.delete(key)
        await raw.aclose()
    else:
        async with RedisStreamsBackend.from_url(
            url,
            key_prefix=f"{key}:backend:",
            registry_key=f"{key}:registry",
            consumer_group="g",
            discovery_interval_ms=100,
            block_ms=100,
        ) as backend:
            stream = backend.consume()
            await backend.publish(key, PAYLOAD)
            await anext(stream)
            published = consumed = 1
            sem = asyncio.Semaphore(CONCURRENT_PUBLISHERS)

            async def publish_one() -> None:
                async with sem:
                    await backend.publish(key, PAYLOAD)

            while consumed < n:
                k = min(round_size, n - published)
                await asyncio.gather(*(publish_one() for _ in range(k)))
                published += k
                last_id = ""
                while consumed < published:
                    message = await anext(stream)
                    consumed += 1
                    last_id = message.message_id
                if last_id:
                    await backend.client.xtrim(key, minid=last_id)
                if not rss_tenth and consumed >= tenth:
                    rss_tenth = _rss_bytes()[0]
            await stream.aclose()
            owned = [k async for k in backend.client.scan_iter(match=f"{key}:backend:*", count=1000)]
            await backend.client.delete(key, f"{key}:registry", *owned)
    rss_end, peak = _rss_bytes()
    return {
        "seconds": time.perf_counter() - started,
        "rss_tenth": float(rss_tenth),
        "rss_end": float(rss_end),
        "rss_peak": float(peak),
    }


# ---------------------------------------------------------------------------------------------
# Server, table, JSON, SVG
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def local_server() -> Iterator[str]:
    """A throwaway ``redis-server`` on a free port: the testing toolkit's if installed, else one
    spawned here. Never the machine's own server."""
    try:
        from abe_redis_testing.servers import RedisServer, find_binary
    except ImportError:
        yield from _spawn_server()
        return
    server = RedisServer(find_binary("redis-server")).start()
    try:
        yield server.url
    finally:
        server.cleanup()


def _spawn_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH; install it or pass --url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="abe-redis-bench-") as data_dir:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen(
            [*args, "--dir", data_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


async def server_version(url: str) -> str:
    client = Redis.from_url(url)
    try:
        info = await client.info("server")
        return str(info.get("redis_version", "?"))
    finally:
        await client.aclose()


def ratios(results: list[Result]) -> dict[str, dict[str, float]]:
    """Per workload, ours/raw and publisher/raw of msg/s (RSS: of growth; latency: of p99)."""
    by: dict[str, dict[str, Result]] = {}
    for r in results:
        by.setdefault(r.workload, {})[r.impl] = r
    out: dict[str, dict[str, float]] = {}
    for workload, impls in by.items():
        raw = impls.get("raw")
        if raw is None:
            continue
        for impl, mine in impls.items():
            if impl == "raw":
                continue
            if workload == "end-to-end latency":
                if mine.p99_ms and raw.p99_ms:
                    out.setdefault(workload, {})[impl] = mine.p99_ms / raw.p99_ms
            elif workload == "RSS over messages":
                continue
            elif raw.rate > 0:
                out.setdefault(workload, {})[impl] = mine.rate / raw.rate
    return out


def report(results: list[Result], meta: dict[str, Any]) -> dict[str, Any]:
    table = ratios(results)
    targets: dict[str, dict[str, Any]] = {}
    for workload, (text, check) in TARGETS.items():
        ratio = table.get(workload, {}).get("ours")
        targets[workload] = {"target": text, "ratio": ratio, "met": None if ratio is None else check(ratio)}
    latency = next((r for r in results if r.workload == "end-to-end latency" and r.impl == "ours"), None)
    if latency is not None and latency.p99_ms is not None:
        targets["end-to-end latency"] = {
            "target": "p99 <= 2 ms",
            "p99_ms": latency.p99_ms,
            "met": latency.p99_ms <= 2.0,
        }
    rss = next((r for r in results if r.workload == "RSS over messages" and r.impl == "ours"), None)
    if rss is not None:
        targets["RSS over messages"] = {
            "target": "growth <= 10%",
            "growth": rss.extra["growth"],
            "met": rss.extra["growth"] <= 0.10,
        }
    return {
        "meta": meta,
        "results": [{**asdict(r), "msg_per_s": r.rate} for r in results],
        "ratios": table,
        "targets": targets,
    }


def results_from(data: dict[str, Any]) -> list[Result]:
    fields = {name for name in Result.__dataclass_fields__}
    return [Result(**{k: v for k, v in row.items() if k in fields}) for row in data["results"]]


def render_table(data: dict[str, Any]) -> Table:
    meta = data["meta"]
    table = Table(
        title=f"abe-redis bench — redis {meta.get('redis_version', '?')}, {meta.get('python', '')}",
        caption="ratio: msg/s of ours (or publisher) / raw redis-py doing the same work; for "
        "latency, p99 ours / p99 raw (lower is better); notes on each row are in the JSON",
    )
    for column, justify in (
        ("workload", "left"),
        ("impl", "left"),
        ("messages", "right"),
        ("msg/s", "right"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("ratio", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=column != "workload")  # type: ignore[arg-type]
    ratio_of = data["ratios"]
    previous = None
    for row in data["results"]:
        ratio = ratio_of.get(row["workload"], {}).get(row["impl"])
        table.add_row(
            row["workload"] if row["workload"] != previous else "",
            row["impl"],
            f"{row['messages']:,}",
            f"{row['msg_per_s']:,.0f}",
            "" if row["p50_ms"] is None else f"{row['p50_ms']:.3f}",
            "" if row["p99_ms"] is None else f"{row['p99_ms']:.3f}",
            _ratio_cell(row, ratio),
        )
        previous = row["workload"]
    return table


def _ratio_cell(row: dict[str, Any], ratio: float | None) -> str:
    if "growth" in row["extra"]:
        return f"RSS {row['extra']['growth']:+.1%}"
    return "" if ratio is None else f"{ratio:.2f}x"


def render_targets(data: dict[str, Any]) -> Table:
    table = Table(title="targets")
    for column in ("workload", "target", "measured", "met"):
        table.add_column(column)
    for workload, target in data["targets"].items():
        if "ratio" in target:
            measured = "" if target["ratio"] is None else f"{target['ratio']:.2f}x"
        elif "p99_ms" in target:
            measured = f"p99 {target['p99_ms']:.2f} ms"
        else:
            measured = f"{target['growth']:+.1%}"
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "n/a"}[target["met"]]
        table.add_row(workload, target["target"], measured, met)
    return table


def render_markdown(data: dict[str, Any]) -> str:
    """The table as Markdown, for docs/performance.md."""
    lines = [
        "| workload | impl | messages | msg/s | p50 ms | p99 ms | ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    ratio_of = data["ratios"]
    for row in data["results"]:
        ratio = ratio_of.get(row["workload"], {}).get(row["impl"])
        cells = [
            row["workload"],
            row["impl"],
            f"{row['messages']:,}",
            f"{row['msg_per_s']:,.0f}",
            "" if row["p50_ms"] is None else f"{row['p50_ms']:.3f}",
            "" if row["p99_ms"] is None else f"{row['p99_ms']:.3f}",
            _ratio_cell(row, ratio),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_svg(data: dict[str, Any]) -> str:
    """A horizontal bar chart of msg/s per throughput workload: raw, ours and publisher."""
    colors = {"raw": "#8c8c8c", "ours": "#d62728", RAW_BATCH_IMPL: "#ff9896", "publisher": "#1f77b4"}
    rows: list[tuple[str, str, float]] = [
        (r["workload"], r["impl"], r["msg_per_s"])
        for r in data["results"]
        if r["workload"] not in ("end-to-end latency", "RSS over messages")
    ]
    if not rows:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    peak = max(rate for _, _, rate in rows) or 1.0
    label_w, bar_w, bar_h, gap = 330, 420, 14, 10
    y = 40
    parts: list[str] = []
    previous = None
    for workload, impl, rate in rows:
        if workload != previous:
            y += gap
            parts.append(
                f'<text x="4" y="{y + 11}" font-size="12" font-weight="bold">{_xml(workload)}</text>'
            )
            y += bar_h + 2
            previous = workload
        width = max(1.0, bar_w * rate / peak)
        parts.append(f'<text x="20" y="{y + 11}" font-size="11">{impl}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="{bar_h}" '
            f'fill="{colors.get(impl, "#555")}"/>'
        )
        parts.append(
            f'<text x="{label_w + width + 4:.1f}" y="{y + 11}" font-size="11">{rate:,.0f} msg/s</text>'
        )
        y += bar_h + 3
    meta = data["meta"]
    title = f"abe-redis bench: msg/s (redis {meta.get('redis_version', '?')}, {meta.get('started_at', '')})"
    height = y + 20
    width = label_w + bar_w + 140
    header = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="4" y="20" font-size="14" font-weight="bold">{_xml(title)}</text>'
    )
    legend = "".join(
        f'<rect x="{label_w + 130 * i}" y="30" width="10" height="10" fill="{color}"/>'
        f'<text x="{label_w + 130 * i + 14}" y="39" font-size="11">{impl}</text>'
        for i, (impl, color) in enumerate(colors.items())
    )
    return header + legend + "".join(parts) + "</svg>\n"


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings.quick() if args.quick else Settings()
    overrides: dict[str, Any] = {}
    if args.count is not None:
        if args.count < 100:
            raise CliError("--count must be at least 100")
        overrides["count"] = args.count
    if getattr(args, "rounds", None) is not None:
        if args.rounds < 1:
            raise CliError("--rounds must be at least 1")
        overrides["rounds"] = args.rounds
    if getattr(args, "skip", None):
        overrides["skip"] = tuple(args.skip)
    return Settings(**{**asdict(settings), **overrides})


def run(args: argparse.Namespace, console: Console) -> int:
    """``abe-redis bench``: run (or, with ``--from-json``, only render) and print the table."""
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        settings = settings_from(args)
        with contextlib.ExitStack() as stack:
            url = args.url
            if url is None:
                url = stack.enter_context(local_server())
            data = asyncio.run(_measure(url, settings, console, getattr(args, "cluster_url", None)))
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"figures written to {args.json}")
    console.print(render_table(data))
    console.print(render_targets(data))
    if args.svg:
        Path(args.svg).write_text(render_svg(data))
        console.print(f"plot written to {args.svg}")
    return 0


async def _measure(
    url: str, settings: Settings, console: Console, cluster_url: str | None = None
) -> dict[str, Any]:
    meta = {
        "abe_redis": __version__,
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "redis_version": await server_version(url),
        "python": f"Python {platform.python_version()}",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "settings": asdict(settings),
    }
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        bench = Bench(url, settings, progress)
        bench.cluster_url = cluster_url
        results = await bench.run()
    return report(results, meta)


def _worker_main(argv: list[str]) -> int:
    impl, n, key = argv
    url = os.environ[URL_ENV]
    figures = asyncio.run(_rss_worker(url, impl, int(n), key))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-worker":
        sys.exit(_worker_main(sys.argv[2:]))
    sys.exit("usage: abe-redis bench (this module is its implementation)")
