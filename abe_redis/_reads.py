"""Reading new entries within the prefetch bound, with one blocking wait for all streams.

``XREADGROUP``'s ``COUNT`` applies per stream, so a consumer of ``n`` streams could receive
``n * COUNT`` entries in one reply. The planner keeps the total within the room the consumer has
(``prefetch`` minus what it already holds):

* with no more streams than room, one blocking read of every stream, ``COUNT room // n``;
* with more, streams that may have a backlog ("hot") are read without blocking, at most
  ``room`` of them at a time with ``COUNT room // window``; a stream that returns less than asked
  is drained and cools down.
  Only when none is hot does the consumer block, on every stream at once, ``COUNT 1``.

The blocking read also covers the notification stream, so news of a brand-new stream ends the
wait at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._codec import to_str

Entry = tuple[str, str, dict[Any, Any] | None]
"""(stream, entry id, fields) — fields is None for an entry deleted while pending."""


def stream_entries(response: Any) -> list[Entry]:
    """Normalise an XREAD/XREADGROUP reply (RESP2 list or RESP3 map) to a flat list."""
    if not response:
        return []
    pairs: Iterable[Any] = response.items() if isinstance(response, dict) else response
    flat: list[Entry] = []
    for stream, entries in pairs:
        name = to_str(stream)
        if entries and isinstance(entries[0], list) and len(entries) == 1 and isinstance(entries[0][0], list):
            entries = entries[0]  # RESP3 wraps the entry list once more
        # to_str inlined: this runs for every entry read.
        flat += [
            (name, i.decode("utf-8", "surrogateescape") if type(i) is bytes else to_str(i), fields)
            for i, fields in entries
        ]
    return flat


class ReadPlan:
    """Which streams the next read covers, with which COUNT, and whether it blocks."""

    __slots__ = ("block", "count", "streams")

    def __init__(self, streams: list[str], count: int, block: bool) -> None:
        self.streams = streams
        self.count = count
        self.block = block


def filled(plan: ReadPlan, entries: list[Entry]) -> bool:
    """Whether a stream of ``plan`` returned its full COUNT: it may have more (a backlog)."""
    if len(plan.streams) == 1:
        return len(entries) >= plan.count
    per_stream: dict[str, int] = {}
    for stream, _, _ in entries:
        per_stream[stream] = got = per_stream.get(stream, 0) + 1
        if got >= plan.count:
            return True
    return False


class ReadPlanner:
    def __init__(self) -> None:
        self._hot: dict[str, None] = {}  # insertion-ordered set
        self._known: set[str] = set()

    def track(self, streams: list[str]) -> None:
        """New streams start hot: they may hold a backlog."""
        for stream in streams:
            if stream not in self._known:
                self._known.add(stream)
                self._hot[stream] = None
        for stream in list(self._known):
            if stream not in streams:
                self._known.discard(stream)
                self._hot.pop(stream, None)

    def all_hot(self) -> None:
        # In a fixed order: a set's order changes with PYTHONHASHSEED, and the simulator's
        # schedules with it.
        for stream in sorted(self._known):
            self._hot[stream] = None

    def plan(self, streams: list[str], room: int) -> ReadPlan:
        room = max(1, room)
        if len(streams) <= room:
            return ReadPlan(streams, max(1, room // max(1, len(streams))), True)
        if not self._hot:
            return ReadPlan(streams, 1, True)
        window = list(self._hot)[:room]
        return ReadPlan(window, max(1, room // len(window)), False)

    def observe(self, plan: ReadPlan, entries: list[Entry]) -> None:
        """Streams that filled their COUNT may have more: they stay (or become) hot; the rest of
        a non-blocking window is drained and cools down. Hot streams rotate to the back."""
        if len(plan.streams) <= 1 and plan.block:
            return
        per_stream: dict[str, int] = {}
        for stream, _, _ in entries:
            per_stream[stream] = per_stream.get(stream, 0) + 1
        if not plan.block:
            for stream in plan.streams:
                self._hot.pop(stream, None)
        for stream, got in per_stream.items():
            if got >= plan.count and stream in self._known:
                self._hot[stream] = None
