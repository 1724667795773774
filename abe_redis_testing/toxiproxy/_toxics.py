"""Toxic definitions (validation, JSON shape) and their per-connection behaviour.

Each toxic runs as one stage of a link (one direction of one proxied connection). A stage reads
chunks from its input channel and writes to its output channel; the stages of a link are rewired
while data flows when toxics are added or removed, so a stage must never lose a chunk it has
taken: whatever it still holds is recorded in ``stub.held`` and forwarded by the stage runner
when the stage is interrupted (cancelled).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# Attribute names per toxic type, all integers as in Toxiproxy (which stores them as int64).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "noop": (),
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
}

TOXIC_TYPES: tuple[str, ...] = tuple(ATTRIBUTES)

# Upper bounds per attribute (all must also be >= 0). Toxiproxy keeps int64s; the bounds here are
# what a test could mean, far above any real use, and low enough that no toxic can wedge the
# server (an hour of delay, a gigabyte per slice, a terabyte of data).
_HOUR_MS = 3_600_000
ATTRIBUTE_MAX: dict[str, int] = {
    "latency": _HOUR_MS,
    "jitter": _HOUR_MS,
    "rate": 10**9,  # KB/s
    "delay": _HOUR_MS,  # ms for slow_close; slicer's delay is in microseconds (checked below)
    "timeout": _HOUR_MS,
    "average_size": 2**30,
    "size_variation": 2**30,
    "bytes": 2**40,
}
STREAMS: tuple[str, ...] = ("upstream", "downstream")

# A channel holds at most this many chunks before its producer waits: enough for latency to be
# pipelined (each chunk is delayed from its own arrival), small enough to keep TCP back-pressure.
CHANNEL_LIMIT = 256


class ToxicInputError(ValueError):
    """A toxic description the API must reject with 400 ``bad request body: ...``."""


@dataclass
class ToxicSpec:
    """One toxic as configured through the API; shared by all links of its proxy."""

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
        }

    @property
    def closes_on_remove(self) -> bool:
        # Toxiproxy's timeout toxic closes the connection in its Cleanup hook: data it swallowed
        # is gone, so the connection cannot be resumed consistently.
        return self.type == "timeout"


def parse_attributes(toxic_type: str, raw: Any, base: dict[str, int] | None = None) -> dict[str, int]:
    """Decode ``attributes`` for ``toxic_type`` like Go's JSON decoder: unknown keys are ignored,
    missing keys keep ``base`` (or 0), wrongly typed values are rejected."""
    names = ATTRIBUTES[toxic_type]
    result = {name: 0 for name in names} if base is None else dict(base)
    if raw is None:
        return result
    if not isinstance(raw, dict):
        raise ToxicInputError(cannot_unmarshal(raw, "Go struct field .attributes"))
    for name in names:
        if name not in raw or raw[name] is None:
            continue
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            target = f"Go struct field .attributes.{name} of type int64"
            raise ToxicInputError(cannot_unmarshal(value, target))
        if isinstance(value, float):
            if not value.is_integer():
                raise ToxicInputError(
                    f"json: cannot unmarshal number {value} into Go struct field "
                    f".attributes.{name} of type int64"
                )
            value = int(value)
        result[name] = value
    check_ranges(toxic_type, result)
    return result


def check_ranges(toxic_type: str, attributes: dict[str, int]) -> None:
    """Reject values no toxic can honour: negatives, absurd sizes and delays."""
    for name, value in attributes.items():
        limit = ATTRIBUTE_MAX[name] * (1000 if (toxic_type, name) == ("slicer", "delay") else 1)
        if not 0 <= value <= limit:
            raise ToxicInputError(f"attribute {name}={value} is out of range: expected 0 to {limit}")


def check_toxicity(value: float) -> float:
    """A probability: 0 to 1; NaN and infinities are refused."""
    if not 0.0 <= value <= 1.0:
        raise ToxicInputError(f"toxicity={value} is out of range: expected 0 to 1")
    return value


def cannot_unmarshal(value: Any, target: str) -> str:
    """Go's wording for a JSON value of the wrong type, which clients may match on."""
    return f"json: cannot unmarshal {json_kind(value)} into {target}"


def json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


# --- data plane -------------------------------------------------------------------------------


@dataclass(slots=True)
class Chunk:
    data: bytes
    # Loop time at which the chunk was read from the socket; latency is measured from here so
    # queued chunks are delayed from their own arrival, not serialised behind each other.
    arrived: float


class Channel:
    """A bounded FIFO of chunks; ``None`` marks end of stream. One consumer at a time."""

    def __init__(self, limit: int = CHANNEL_LIMIT) -> None:
        self._items: deque[Chunk | None] = deque()
        self._limit = limit
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> Chunk | None:
        while not self._items:
            self._not_empty.clear()
            await self._not_empty.wait()
        item = self._items.popleft()
        self._not_full.set()
        return item

    def get_nowait(self) -> Chunk | None:
        item = self._items.popleft()
        self._not_full.set()
        return item

    async def put(self, item: Chunk | None) -> None:
        while len(self._items) >= self._limit:
            self._not_full.clear()
            await self._not_full.wait()
        self.put_nowait(item)

    def put_nowait(self, item: Chunk | None) -> None:
        """Append ignoring the limit: used for end of stream and for data an interrupted stage
        must hand on, which may never wait (it would deadlock the rewiring)."""
        self._items.append(item)
        self._not_empty.set()


@dataclass(eq=False)
class Stub:
    """Per-link, per-toxic plumbing: channels, state that survives restarts, held data."""

    input: Channel
    output: Channel
    reset_connection: Callable[[], None]
    # This link's share of the server's seeded randomness (jitter, toxicity, slice sizes).
    rng: random.Random = field(default_factory=random.Random)
    state: dict[str, Any] = field(default_factory=dict)
    held: Chunk | None = None
    closed: bool = False

    async def take(self) -> Chunk | None:
        chunk = await self.input.get()
        self.held = chunk
        return chunk

    async def emit(self, chunk: Chunk, rest: Chunk | None = None) -> None:
        """Send ``chunk``; ``rest`` is what is still held afterwards (for partial sends)."""
        await self.output.put(chunk)
        self.held = rest

    def drop(self) -> None:
        self.held = None

    def close(self) -> None:
        self.held = None
        if not self.closed:
            self.closed = True
            self.output.put_nowait(None)


Pipe = Callable[[ToxicSpec, Stub], Awaitable[None]]


async def _noop(spec: ToxicSpec | None, stub: Stub) -> None:
    while True:
        chunk = await stub.take()
        if chunk is None:
            stub.close()
            return
        await stub.emit(chunk)


async def _latency(spec: ToxicSpec, stub: Stub) -> None:
    loop = asyncio.get_running_loop()
    while True:
        chunk = await stub.take()
        if chunk is None:
            stub.close()
            return
        delay = spec.attributes["latency"]
        jitter = spec.attributes["jitter"]
        if jitter > 0:
            delay += stub.rng.randrange(2 * jitter) - jitter
        sleep = delay / 1000.0 - (loop.time() - chunk.arrived)
        if sleep > 0:
            await asyncio.sleep(sleep)
        # Stamp the delivery time so a second latency toxic in the chain adds its own delay.
        await stub.emit(Chunk(chunk.data, chunk.arrived + max(sleep, 0.0)))


async def _bandwidth(spec: ToxicSpec, stub: Stub) -> None:
    # Toxiproxy's algorithm: accumulate the time the bytes "should" take at `rate` KB/s (1 KB =
    # 1000 bytes), send big chunks in 100 ms slices and carry the timer error into the next sleep.
    debt = 0.0
    loop = asyncio.get_running_loop()
    while True:
        chunk = await stub.take()
        if chunk is None:
            stub.close()
            return
        rate = spec.attributes["rate"]
        if rate <= 0:
            # Toxiproxy never makes progress at rate 0; hold the data until the toxic goes away.
            await asyncio.Event().wait()
        debt += len(chunk.data) / (rate * 1000.0)
        data = chunk.data
        slice_size = rate * 100
        while len(data) > slice_size:
            await asyncio.sleep(0.1)
            head, data = data[:slice_size], data[slice_size:]
            await stub.emit(Chunk(head, chunk.arrived), Chunk(data, chunk.arrived))
            debt -= 0.1
        started = loop.time()
        if debt > 0:
            await asyncio.sleep(debt)
        debt -= loop.time() - started
        await stub.emit(Chunk(data, chunk.arrived))


async def _slow_close(spec: ToxicSpec, stub: Stub) -> None:
    while True:
        chunk = await stub.take()
        if chunk is None:
            await asyncio.sleep(spec.attributes["delay"] / 1000.0)
            stub.close()
            return
        await stub.emit(chunk)


async def _timeout(spec: ToxicSpec, stub: Stub) -> None:
    timeout = spec.attributes["timeout"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout / 1000.0 if timeout > 0 else None
    while True:
        if deadline is None:
            chunk = await stub.take()
        else:
            remaining = deadline - loop.time()
            if remaining <= 0:
                stub.close()
                return
            try:
                chunk = await asyncio.wait_for(stub.take(), remaining)
            except TimeoutError:
                stub.close()
                return
        if chunk is None:
            stub.close()
            return
        stub.drop()


async def _reset_peer(spec: ToxicSpec, stub: Stub) -> None:
    # Like Toxiproxy: the reset is triggered by the first data in this direction, which is
    # dropped, and happens `timeout` ms later.
    chunk = await stub.take()
    stub.drop()
    if chunk is not None:
        timeout = spec.attributes["timeout"]
        if timeout > 0:
            await asyncio.sleep(timeout / 1000.0)
        stub.reset_connection()
    stub.close()


def slice_offsets(size: int, average: int, variation: int, rng: random.Random | None = None) -> list[int]:
    """Cut points splitting ``size`` bytes into pieces of about ``average`` +/- ``variation``
    bytes, halving recursively so no end of the buffer favours small pieces.

    Every split leaves two non-empty pieces, so it ends for any input (a piece of one byte is
    never split again).
    """
    rand = rng or random
    variation = max(variation, 0)
    if average <= 0:
        return [0, size]
    cuts = [0]
    pending = [(0, size)]
    while pending:
        start, end = pending.pop()
        if end - start <= 1 or (end - start) - average <= variation:
            cuts.append(end)
            continue
        mid = start + (end - start) // 2
        if variation > 0:
            mid += rand.randrange(2 * variation) - variation
        mid = min(max(mid, start + 1), end - 1)
        # Right half first onto the stack so the left half is cut (and emitted) first.
        pending.append((mid, end))
        pending.append((start, mid))
    return cuts


async def _slicer(spec: ToxicSpec, stub: Stub) -> None:
    while True:
        chunk = await stub.take()
        if chunk is None:
            stub.close()
            return
        attrs = spec.attributes
        cuts = slice_offsets(len(chunk.data), attrs["average_size"], attrs["size_variation"], stub.rng)
        data = chunk.data
        for left, right in itertools.pairwise(cuts):
            rest = Chunk(data[right:], chunk.arrived) if right < len(data) else None
            await stub.emit(Chunk(data[left:right], chunk.arrived), rest)
            if rest is not None and attrs["delay"] > 0:
                await asyncio.sleep(attrs["delay"] / 1_000_000.0)


async def _limit_data(spec: ToxicSpec, stub: Stub) -> None:
    # The count lives in the stub so it survives the stage being restarted when other toxics
    # are added or removed: the limit is per connection, not per stage run.
    limit = spec.attributes["bytes"]
    sent: int = stub.state.setdefault("transmitted", 0)
    while True:
        chunk = await stub.take()
        if chunk is None:
            stub.close()
            return
        remaining = max(limit - sent, 0)
        if remaining < len(chunk.data):
            chunk = Chunk(chunk.data[:remaining], chunk.arrived)
            stub.held = chunk
        if chunk.data:
            await stub.emit(chunk)
            sent += len(chunk.data)
            stub.state["transmitted"] = sent
        if limit - sent <= 0:
            stub.close()
            return


PIPES: dict[str, Pipe] = {
    "noop": _noop,
    "latency": _latency,
    "bandwidth": _bandwidth,
    "slow_close": _slow_close,
    "timeout": _timeout,
    "reset_peer": _reset_peer,
    "slicer": _slicer,
    "limit_data": _limit_data,
}


async def run_stage(spec: ToxicSpec | None, stub: Stub) -> None:
    """Run one toxic on ``stub`` until end of stream; on cancellation hand on held data.

    Toxicity is drawn on every (re)start, as in Toxiproxy: per connection and direction.
    """
    try:
        if spec is None or stub.rng.random() >= spec.toxicity:
            await _noop(spec, stub)
        else:
            await PIPES[spec.type](spec, stub)
    except asyncio.CancelledError:
        if stub.held is not None and not stub.closed:
            stub.output.put_nowait(stub.held)
        stub.held = None
        raise
