"""Dead letters: the one record format, how a consumer writes one, and how people read, replay
and purge them.

A dead letter of stream ``s`` is an entry of ``s`` + ``dead_letter_suffix`` holding:

========================  ================================================================
``reason``                why it was dead-lettered (the decode error, the delivery limit, …)
``error_type``            the exception type, when a handler's error was the reason
``source_stream``         the stream the entry came from (informational: replay never uses it)
``source_id``             the entry's id there
``group`` / ``consumer``  who gave up on it
``delivery_count``        how many times it had been handed to a consumer
``dead_lettered_at_ms``   when (Unix ms)
``field:<name>``          every original field, byte for byte
========================  ================================================================

The record is written *before* the source entry is acknowledged, so a crash in between leaves a
duplicate dead letter, never a lost message.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError, WatchError

from ._codec import PAYLOAD_FIELD, to_str
from ._config import RedisConfig
from ._errors import InvalidKeyError
from ._scrub import scrub_pipeline_error

if TYPE_CHECKING:
    from ._backend import RedisStreamsBackend

__all__ = ["DeadLetter", "DeadLetters"]

log = logging.getLogger("abe_redis")

FIELD_PREFIX = b"field:"
_PAGE = 500


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


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
    error_type: str = ""

    @property
    def payload(self) -> Any:
        """The original payload decoded, or ``None`` when it is not valid JSON."""
        raw = self.fields.get(PAYLOAD_FIELD.encode())
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            return None

    @classmethod
    def from_entry(cls, stream: str, entry_id: Any, raw: Mapping[Any, Any]) -> DeadLetter:
        record = {_as_bytes(k): _as_bytes(v) for k, v in raw.items()}

        def text(name: bytes, default: str = "") -> str:
            value = record.get(name)
            return value.decode("utf-8", "backslashreplace") if value is not None else default

        def number(name: bytes) -> int:
            try:
                return int(text(name, "0") or 0)
            except ValueError:
                return 0

        return cls(
            id=to_str(entry_id),
            stream=stream,
            source_stream=text(b"source_stream"),
            source_id=text(b"source_id"),
            reason=text(b"reason"),
            group=text(b"group"),
            consumer=text(b"consumer"),
            delivery_count=number(b"delivery_count"),
            dead_lettered_at_ms=number(b"dead_lettered_at_ms"),
            fields={k[len(FIELD_PREFIX) :]: v for k, v in record.items() if k.startswith(FIELD_PREFIX)},
            error_type=text(b"error_type"),
        )


def dead_letter_record(
    *,
    stream: str,
    entry_id: str,
    fields: Mapping[Any, Any] | None,
    reason: str,
    group: str,
    consumer: str,
    delivery_count: int,
    error_type: str | None = None,
) -> dict[bytes, Any]:
    record: dict[bytes, Any] = {
        b"reason": reason,
        b"source_stream": stream,
        b"source_id": entry_id,
        b"group": group,
        b"consumer": consumer,
        b"delivery_count": str(delivery_count),
        b"dead_lettered_at_ms": str(int(time.time() * 1000)),
    }
    if error_type:
        record[b"error_type"] = error_type
    for name, value in (fields or {}).items():
        record[FIELD_PREFIX + _as_bytes(name)] = value
    return record


async def write_dead_letter(
    client: Any,
    config: RedisConfig,
    *,
    stream: str,
    entry_id: str,
    fields: Mapping[Any, Any] | None,
    reason: str,
    group: str,
    consumer: str,
    delivery_count: int,
    error_type: str | None = None,
) -> None:
    """Copy the entry to ``<stream><suffix>``, then acknowledge it in ``group``.

    Raises whatever Redis raised (an out-of-memory refusal, say) with the entry still pending.
    """
    record = dead_letter_record(
        stream=stream,
        entry_id=entry_id,
        fields=fields,
        reason=reason,
        group=group,
        consumer=consumer,
        delivery_count=delivery_count,
        error_type=error_type,
    )
    target = config.dead_letter_stream(stream)
    await client.xadd(target, record)
    await client.xack(stream, group, entry_id)
    # A handler's error text may quote the payload: for those, only the error's type is logged
    # (the full reason is in the dead letter). Engine reasons never carry payload text.
    shown = error_type if error_type else reason
    log.warning(
        "dead-lettered %s %s (group %s, delivery %d) to %s: %s",
        stream,
        entry_id,
        group,
        delivery_count,
        target,
        shown,
        extra={
            "stream": stream,
            "entry_id": entry_id,
            "group": group,
            "delivery_count": delivery_count,
            "dead_letter_stream": target,
            "error_type": error_type or "",
        },
    )


class DeadLetters:
    """Dead letters of the streams a backend publishes to: list, count, replay, purge."""

    def __init__(self, backend: RedisStreamsBackend) -> None:
        self._config = backend.config
        self._backend = backend
        # Any: redis-py's stream reply types are unions that mypy cannot narrow usefully.
        self._client: Any = backend.client

    def _stored(self, key: str) -> str:
        """The stream a key's messages live in: in a Redis Cluster the key with its partition's
        hash tag (a name already in that form is kept), elsewhere the key itself."""
        return self._backend.stream_name(key) if self._config.topology == "cluster" else key

    def stream_for(self, key: str) -> str:
        return self._config.dead_letter_stream(self._stored(key))

    async def keys(self) -> list[str]:
        """Source keys that have dead letters (found by SCAN, never KEYS)."""
        suffix = self._config.dead_letter_suffix
        found = set()
        async for name in self._client.scan_iter(match=f"*{suffix}", count=1000, _type="STREAM"):
            found.add(to_str(name)[: -len(suffix)])
        return sorted(found)

    async def count(self, key: str) -> int:
        return int(await self._client.xlen(self.stream_for(key)))

    async def entries(self, key: str, *, count: int = 100, after: str | None = None) -> list[DeadLetter]:
        """Up to ``count`` dead letters of ``key``, oldest first, after the id ``after``."""
        stream = self.stream_for(key)
        start = "-" if after is None else f"({after}"
        entries = await self._client.xrange(stream, min=start, count=count)
        return [DeadLetter.from_entry(stream, entry_id, fields) for entry_id, fields in entries]

    async def iter_entries(self, key: str, *, page: int = _PAGE) -> AsyncIterator[DeadLetter]:
        """Every dead letter of ``key``, fetched a page at a time."""
        after: str | None = None
        while True:
            letters = await self.entries(key, count=page, after=after)
            for letter in letters:
                yield letter
            if len(letters) < page:
                return
            after = letters[-1].id

    async def get(self, key: str, entry_id: str) -> DeadLetter | None:
        stream = self.stream_for(key)
        found = await self._client.xrange(stream, min=entry_id, max=entry_id, count=1)
        return DeadLetter.from_entry(stream, found[0][0], found[0][1]) if found else None

    async def replay(self, key: str, ids: Iterable[str] | None = None, *, to: str | None = None) -> int:
        """Append dead letters' original fields to ``key`` (or ``to``) as new entries, removing
        each dead letter in the same transaction. Returns how many were replayed.

        The target is never read from the dead letter itself, so a crafted entry cannot steer a
        replay into another stream. A dead letter is replayed at most once, even when two
        replays of it run at the same time.
        """
        target = self._stored(to if to is not None else key)
        if self._backend.registry_key_for(target) != self._backend.registry_key_for(self._stored(key)):
            # A replay moves an entry in one transaction, which a cluster runs only in one slot.
            raise InvalidKeyError(
                f"cannot replay the dead letters of {key!r} to {to!r}: in a Redis Cluster the target "
                "must be a key of the same partition (or the source key itself)"
            )
        replayed = 0
        if ids is not None:
            for entry_id in dict.fromkeys(ids):
                replayed += await self._replay_one(key, entry_id, target)
            return replayed
        after: str | None = None
        while True:
            letters = await self.entries(key, count=_PAGE, after=after)
            for letter in letters:
                replayed += await self._replay_one(key, letter.id, target)
            if len(letters) < _PAGE:
                return replayed
            after = letters[-1].id

    async def _replay_one(self, key: str, entry_id: str, target: str) -> int:
        stream = self.stream_for(key)
        async with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    # WATCH: if another replay removes this dead letter first, ours aborts; and if
                    # the target changes type meanwhile, too.
                    await pipe.watch(stream, target)
                    found = await pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
                    if not found:
                        await pipe.unwatch()
                        return 0
                    kind = to_str(await pipe.type(target))
                    if kind not in ("stream", "none"):
                        # MULTI does not roll back: the XADD would fail and the XDEL still run,
                        # losing the dead letter. Refuse before anything is written.
                        await pipe.unwatch()
                        raise InvalidKeyError(
                            f"cannot replay to {target!r}: it holds a Redis {kind}, not a stream"
                        )
                    letter = DeadLetter.from_entry(stream, found[0][0], found[0][1])
                    pipe.multi()
                    if letter.fields:
                        pipe.xadd(target, letter.fields)
                        pipe.sadd(self._backend.registry_key_for(target), target)
                    pipe.xdel(stream, entry_id)
                    await pipe.execute()
                    return 1
                except WatchError:
                    continue
                except ResponseError as exc:
                    # redis-py quotes the XADD's arguments, the payload, in a pipeline's error.
                    scrub_pipeline_error(exc)
                    raise

    async def purge(self, key: str, ids: Iterable[str] | None = None) -> int:
        """Delete the dead letters of ``key`` (only ``ids``, if given); returns how many."""
        stream = self.stream_for(key)
        if ids is not None:
            wanted = list(dict.fromkeys(ids))
            return int(await self._client.xdel(stream, *wanted)) if wanted else 0
        count = int(await self._client.xlen(stream))
        await self._client.delete(stream)
        return count
