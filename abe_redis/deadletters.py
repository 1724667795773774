"""Inspect, replay and purge dead letters.

A dead letter is an entry of ``<stream><dead_letter_suffix>`` written by a consumer (see
:mod:`abe_redis._dead_letters`): the reason, where it came from, and every original field.
Replaying appends the original fields to the source stream again (a new entry, delivered to
every group like a fresh publish) and removes the dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._backend import RedisStreamsBackend
from ._dead_letters import FIELD_PREFIX
from ._streams import to_str

__all__ = ["DeadLetter", "DeadLetters"]


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered entry. ``fields`` are the original entry's fields, byte for byte."""

    id: str
    stream: str
    source_stream: str
    source_id: str
    reason: str
    group: str
    consumer: str
    delivery_count: int
    dead_lettered_at_ms: int
    fields: dict[bytes, bytes]

    @classmethod
    def from_entry(cls, stream: str, entry_id: Any, raw: dict[Any, Any]) -> DeadLetter:
        record = {_as_bytes(k): _as_bytes(v) for k, v in raw.items()}

        def text(name: bytes, default: str = "") -> str:
            value = record.get(name)
            return value.decode("utf-8", "backslashreplace") if value is not None else default

        return cls(
            id=to_str(entry_id),
            stream=stream,
            source_stream=text(b"source_stream"),
            source_id=text(b"source_id"),
            reason=text(b"reason"),
            group=text(b"group"),
            consumer=text(b"consumer"),
            delivery_count=int(text(b"delivery_count", "0") or 0),
            dead_lettered_at_ms=int(text(b"dead_lettered_at_ms", "0") or 0),
            fields={k[len(FIELD_PREFIX) :]: v for k, v in record.items() if k.startswith(FIELD_PREFIX)},
        )


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


class DeadLetters:
    """Dead letters of the streams a backend publishes to."""

    def __init__(self, backend: RedisStreamsBackend) -> None:
        self._backend = backend
        # Any: redis-py's stream reply types are unions that mypy cannot narrow usefully.
        self._client: Any = backend.client

    def stream_for(self, key: str) -> str:
        return self._backend.config.dead_letter_stream(key)

    async def keys(self) -> list[str]:
        """Source keys that have dead letters (found by SCAN, never KEYS)."""
        suffix = self._backend.config.dead_letter_suffix
        found = set()
        async for name in self._client.scan_iter(match=f"*{suffix}", count=1000, _type="STREAM"):
            found.add(to_str(name)[: -len(suffix)])
        return sorted(found)

    async def count(self, key: str) -> int:
        return int(await self._client.xlen(self.stream_for(key)))

    async def entries(self, key: str, *, count: int = 100) -> list[DeadLetter]:
        stream = self.stream_for(key)
        entries = await self._client.xrange(stream, count=count)
        return [DeadLetter.from_entry(stream, entry_id, fields) for entry_id, fields in entries]

    async def replay(self, key: str, ids: list[str] | None = None) -> int:
        """Append the original entries to their source stream again; delete the dead letters.

        Each is re-added before it is deleted, so a failure in between duplicates, never loses.
        Returns how many were replayed.
        """
        letters = await self.entries(key, count=2**31 - 1)
        if ids is not None:
            wanted = set(ids)
            letters = [letter for letter in letters if letter.id in wanted]
        for letter in letters:
            if letter.fields:
                await self._client.xadd(letter.source_stream or key, letter.fields)
                await self._client.sadd(self._backend.config.registry_key, letter.source_stream or key)
            await self._client.xdel(letter.stream, letter.id)
        return len(letters)

    async def purge(self, key: str) -> int:
        """Delete every dead letter of ``key``; returns how many there were."""
        stream = self.stream_for(key)
        count = int(await self._client.xlen(stream))
        await self._client.delete(stream)
        return count
