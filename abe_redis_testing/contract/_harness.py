"""Per-test machinery: instances from the author's factory, background consumers that record what
arrives, and bounded waits that fail loudly. Nothing here passes by waiting out a clock: absence
is only concluded after a marker published *later* has been seen by every consumer."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pytest

from ._capabilities import Capabilities
from ._payloads import Kind, Tag, make_payload, read_tag, strict_difference

BackendFactory = Callable[[], Any]
"""Builds a fresh backend instance (or an awaitable of one) connected to the test's broker."""


async def build_backend(factory: BackendFactory) -> Any:
    backend = factory()
    if inspect.isawaitable(backend):
        backend = await backend
    return backend


def default_key(run_id: str, name: str) -> str:
    return f"abe-contract.{run_id}.{name}"


async def default_close_backend(backend: Any) -> None:
    """Close an instance if it offers ``aclose()``/``close()``; awaited when it is a coroutine."""
    for name in ("aclose", "close"):
        method = getattr(backend, name, None)
        if callable(method):
            result = method()
            if inspect.isawaitable(result):
                await result
            return


@dataclass
class RunSpec:
    factory: BackendFactory
    capabilities: Capabilities
    timeout: float
    prompt_delivery: float = 2.0
    unwrap: Callable[[Any], Any] = lambda message: message
    close_backend: Callable[[Any], Awaitable[None]] = default_close_backend
    make_key: Callable[[str, str], str] = default_key


def _delivery_units(collectors: Sequence[Collector]) -> dict[str, list[Collector]]:
    """Consumers that must together see every message: one unit per group, one per ungrouped consumer."""
    units: dict[str, list[Collector]] = {}
    for collector in collectors:
        name = f"group {collector.group!r}" if collector.group is not None else f"consumer {collector.name}"
        units.setdefault(name, []).append(collector)
    return units


def _preview(values: Iterable[Any], limit: int = 8) -> str:
    items = list(values)
    shown = ", ".join(repr(item) for item in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} total)"


@dataclass
class Collector:
    """One ``consume()`` stream pumped by a background task; it asks for the next message as soon
    as it has recorded one, which is what acknowledges the previous message on at-least-once backends."""

    run: ContractRun
    name: str
    group: str | None
    stream: Any
    data: list[tuple[Tag, Any]] = field(default_factory=list)
    probes: set[int] = field(default_factory=set)
    barriers: set[int] = field(default_factory=set)
    aliens: list[Any] = field(default_factory=list)
    foreign: int = 0
    error: BaseException | None = None
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._pump(), name=f"abe-contract-consumer-{self.name}")

    async def _pump(self) -> None:
        try:
            async for raw in self.stream:
                self.record(raw)
        except Exception as exc:
            self.error = exc
        finally:
            self.run.notify()

    def record(self, raw: Any) -> Tag | None:
        message = self.run.spec.unwrap(raw)
        tag = read_tag(message)
        if tag is None:
            self.aliens.append(message)
        elif tag.run != self.run.run_id:
            self.foreign += 1
        elif tag.kind == "data":
            self.data.append((tag, message))
        elif tag.kind == "probe":
            self.probes.add(tag.seq)
        else:
            self.barriers.add(tag.seq)
        self.run.notify()
        return tag

    def seqs(self) -> list[int]:
        return [tag.seq for tag, _ in self.data]

    async def stop(self, within: float) -> list[str]:
        problems: list[str] = []
        if self.task is not None and not self.task.done():
            self.task.cancel()
            done, _ = await asyncio.wait({self.task}, timeout=within)
            if not done:
                problems.append(f"consumer {self.name}: consume() ignored cancellation for {within:g}s")
        problems.extend(await close_stream(self.stream, self.name, within))
        return problems


async def close_stream(stream: Any, name: str, within: float) -> list[str]:
    aclose = getattr(stream, "aclose", None)
    if not callable(aclose):
        return []
    try:
        await asyncio.wait_for(aclose(), within)
    except TimeoutError:
        return [f"consumer {name}: aclose() did not finish within {within:g}s"]
    except RuntimeError as exc:
        # aclose() on a generator another task is still running in: reported, not raised, so the
        # original failure of the test stays the headline.
        return [f"consumer {name}: aclose() failed: {exc}"]
    return []


class ContractRun:
    """Everything one contract test needs; use as ``async with ContractRun(spec) as run``."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.capabilities = spec.capabilities
        self.timeout = spec.timeout
        self.run_id = uuid.uuid4().hex[:12]
        self.prefix = f"abe-contract.{self.run_id}"
        self.published: dict[int, dict[str, Any]] = {}
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._collectors: list[Collector] = []
        self._streams: list[tuple[str, Any]] = []
        self._backends: list[Any] = []

    async def __aenter__(self) -> ContractRun:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        problems: list[str] = []
        for collector in self._collectors:
            problems.extend(await collector.stop(self.timeout))
        for name, stream in self._streams:
            problems.extend(await close_stream(stream, name, self.timeout))
        for backend in self._backends:
            try:
                await asyncio.wait_for(self.spec.close_backend(backend), self.timeout)
            except Exception as error:
                problems.append(f"closing backend {type(backend).__name__} failed: {error!r}")
        if problems and exc is None:
            pytest.fail("cleanup failed:\n  " + "\n  ".join(problems))

    # -- building blocks ---------------------------------------------------------------------------

    def notify(self) -> None:
        self._changed.set()

    async def backend(self) -> Any:
        backend = await build_backend(self.spec.factory)
        self._backends.append(backend)
        return backend

    async def other_instance(self, backend: Any) -> Any:
        """A second instance on the same broker when the backend claims that works, else the same one."""
        if self.capabilities.durable_across_instances:
            return await self.backend()
        return backend

    def key(self, name: str = "main") -> str:
        return self.spec.make_key(self.run_id, name)

    def group(self, name: str = "main") -> str | None:
        return f"{self.prefix}.{name}" if self.capabilities.supports_groups else None

    def tag(self, kind: Kind, key: str) -> Tag:
        return Tag(run=self.run_id, kind=kind, seq=next(self._seq), key=key)

    async def publish(self, backend: Any, key: str, extra: dict[str, Any] | None = None) -> int:
        tag = self.tag("data", key)
        payload = make_payload(tag, extra)
        # Kept apart from what the backend gets, so a backend that mutates its argument is caught.
        self.published[tag.seq] = copy.deepcopy(payload)
        await self._bounded(backend.publish(key, payload), f"publish({key!r}, seq={tag.seq})")
        return tag.seq

    async def _publish_marker(self, backend: Any, kind: Kind, key: str) -> int:
        tag = self.tag(kind, key)
        await self._bounded(backend.publish(key, make_payload(tag)), f"publish of a {kind} marker")
        return tag.seq

    async def _bounded(self, awaitable: Awaitable[Any], what: str) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self.timeout)
        except TimeoutError:
            pytest.fail(f"{what} did not complete within {self.timeout:g}s")

    def consumer(self, backend: Any, group: str | None, name: str | None = None) -> Collector:
        name = name or f"c{len(self._collectors)}"
        stream = self.open_stream(backend, group, name, track=False)
        collector = Collector(run=self, name=name, group=group, stream=stream)
        self._collectors.append(collector)
        collector.start()
        return collector

    def recorder(self, name: str, group: str | None) -> Collector:
        """A collector fed by someone else's loop (e.g. a handler): call ``record`` with each message."""
        collector = Collector(run=self, name=name, group=group, stream=None)
        self._collectors.append(collector)
        return collector

    def adopt(self, backend: Any) -> Any:
        """Close ``backend`` at the end of the test like the factory-built ones."""
        self._backends.append(backend)
        return backend

    def open_stream(
        self, backend: Any, group: str | None, name: str = "manual", *, track: bool = True
    ) -> Any:
        stream = backend.consume(group=group)
        if inspect.iscoroutine(stream):
            stream.close()
            pytest.fail("consume() returned a coroutine; it must be an async generator (async def ... yield)")
        if not hasattr(stream, "__anext__"):
            pytest.fail(f"consume() returned {type(stream).__name__}, which is not an async iterator")
        if track:
            self._streams.append((name, stream))
        return stream

    async def next_message(self, stream: AsyncIterator[Any], within: float | None = None) -> Any:
        """The next message of a manually driven stream (suite markers from other runs skipped)."""
        limit = self.timeout if within is None else within
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            remaining = deadline - loop.time()
            try:
                raw = await asyncio.wait_for(anext(stream), max(remaining, 0.0))
            except TimeoutError:
                pytest.fail(f"timed out after {limit:g}s waiting for the next message")
            except StopAsyncIteration:
                pytest.fail("consume() ended; it must run until cancelled or closed")
            message = self.spec.unwrap(raw)
            tag = read_tag(message)
            if tag is not None and tag.run != self.run_id:
                continue
            return message

    # -- waiting -----------------------------------------------------------------------------------

    async def wait_for(
        self, predicate: Callable[[], bool], describe: Callable[[], str], within: float | None = None
    ) -> None:
        limit = self.timeout if within is None else within
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            self._changed.clear()
            self.check_clean()
            if predicate():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                pytest.fail(f"timed out after {limit:g}s waiting for {describe()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def _settle(self, predicate: Callable[[], bool], within: float) -> bool:
        """Whether ``predicate`` became true within ``within`` seconds (no failure either way)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            self._changed.clear()
            self.check_clean()
            if predicate():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def handshake(self, publisher: Any, collectors: Sequence[Collector]) -> None:
        """Publish probes until every group (every consumer, for ungrouped ones) has received one,
        so that data published afterwards cannot be lost to a subscription still being set up;
        losing messages published before the first consume has a test of its own."""
        key = self.key("control")
        sent: set[int] = set()
        units = _delivery_units(collectors)

        def waiting() -> list[str]:
            return [name for name, members in units.items() if not any(c.probes & sent for c in members)]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            sent.add(await self._publish_marker(publisher, "probe", key))
            # A probe published before a subscription existed may be legitimately lost, hence the
            # retries; a short pause between them keeps the broker from being flooded.
            if await self._settle(lambda: not waiting(), min(0.1, max(deadline - loop.time(), 0.0))):
                return
            if loop.time() >= deadline:
                pytest.fail(
                    f"timed out after {self.timeout:g}s: {waiting()} never received any of {len(sent)} probes"
                )

    async def barrier(self, publisher: Any, collectors: Sequence[Collector], keys: Sequence[str]) -> None:
        """Publish markers after the data and wait until every group has received all of them, so
        whatever the data would have produced (duplicates, stray deliveries) had its turn first.
        One marker per member of the largest group gives each member a chance to take one."""
        units = _delivery_units(collectors)
        count = max(len(members) for members in units.values())
        sent = {await self._publish_marker(publisher, "barrier", keys[n % len(keys)]) for n in range(count)}

        def missing() -> dict[str, int]:
            result = {}
            for name, members in units.items():
                got: set[int] = set()
                for collector in members:
                    got |= collector.barriers & sent
                if len(got) < len(sent):
                    result[name] = len(sent) - len(got)
            return result

        await self.wait_for(lambda: not missing(), lambda: f"barrier markers, still missing {missing()}")

    # -- checks ------------------------------------------------------------------------------------

    def check_clean(self) -> None:
        """No consumer died, ended, or received something the suite did not publish as a dict."""
        for collector in self._collectors:
            if collector.error is not None:
                pytest.fail(f"consumer {collector.name}: consume() raised {collector.error!r}")
            if collector.task is not None and collector.task.done():
                pytest.fail(
                    f"consumer {collector.name}: consume() ended; it must run until cancelled or closed"
                )
            if collector.aliens:
                pytest.fail(
                    f"consumer {collector.name} received messages the suite never published: "
                    f"{_preview(collector.aliens)}"
                )

    async def wait_for_seqs(
        self, collectors: Sequence[Collector], seqs: Iterable[int], within: float | None = None
    ) -> None:
        """Until the consumers *together* have received every one of ``seqs``."""
        expected = set(seqs)

        def missing() -> set[int]:
            got: set[int] = set()
            for collector in collectors:
                got.update(collector.seqs())
            return expected - got

        def describe() -> str:
            lost = sorted(missing())
            return f"{len(expected)} messages; {len(lost)} never arrived: seqs {_preview(lost)}"

        await self.wait_for(lambda: not missing(), describe, within)

    def check_no_duplicates(self, collectors: Sequence[Collector], allowed: Iterable[int] = ()) -> None:
        counts = Counter(seq for collector in collectors for seq in collector.seqs())
        exempt = set(allowed)
        duplicates = {seq: n for seq, n in counts.items() if n > 1 and seq not in exempt}
        if duplicates:
            where = {c.name: [s for s in c.seqs() if s in duplicates] for c in collectors}
            pytest.fail(
                f"messages delivered more than once: {duplicates} (seq -> count); per consumer: {where}"
            )

    def check_payloads(self, collectors: Sequence[Collector]) -> None:
        for collector in collectors:
            for tag, message in collector.data:
                expected = self.published.get(tag.seq)
                if expected is None:
                    pytest.fail(
                        f"consumer {collector.name} received seq {tag.seq}, which was never published"
                    )
                difference = strict_difference(expected, message)
                if difference:
                    pytest.fail(f"payload seq {tag.seq} changed in transit: {difference}")
