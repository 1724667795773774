"""The stream registry: which streams exist for consumers to read, and how they learn of new ones.

* **Register.** After a stream's first successful ``XADD``, the publisher adds its name to the
  registry set and, when the name is new, bumps a version counter (by a random step, so that it
  never repeats a value after the key is lost) and appends a note to the
  notification stream. A failed ``XADD`` (``WRONGTYPE``, say) registers nothing.
* **Discover.** A consumer polls the small version counter every ``discovery_interval_ms`` and
  re-reads the set only when it changed (or once a minute, in case a counter was lost). Names the
  registry never heard of come from ``REDIS_STREAMS`` and from ``SCAN ... TYPE stream`` on
  ``REDIS_STREAM_PATTERN``. Every new name is type-checked: a key that is not a stream is
  skipped with one warning, never fatal.
* **Notify.** Consumers read the notification stream inside their blocking wait, so a message
  on a brand-new stream reaches a waiting consumer at once, without shortening ``block_ms``.
* **Retire.** A retired stream leaves the registry and enters the retired set; running
  consumers stop reading it at their next discovery.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from typing import Any

from ._codec import to_str
from ._config import RedisConfig

log = logging.getLogger("abe_redis")

FULL_REFRESH_S = 60.0
"""Re-read the whole registry at least this often, even when the version did not change."""
NOTIFICATIONS_MAXLEN = 1000


def _bump(pipe: Any, key: str) -> None:
    """Change the registry version to a value no consumer can have seen before.

    Consumers re-read the registry only when the version differs from the one they last read.
    A plain ``INCR`` counts again from 1 after the key is lost (FLUSHALL, a restart without
    persistence), so the first changes after a loss could land on the very value a consumer
    cached before it, and that consumer would never notice the loss nor put back what it knew
    (simulate seed 366: a stream stayed out of the registry and one group never read it). A
    random step makes such a repeat a 1-in-2**32 coincidence; it stays an integer, which
    publishers of older versions still ``INCR``.
    """
    pipe.incrby(key, random.getrandbits(32) + 1)


class StreamRegistry:
    """Register, discover and retire streams. One per backend; safe to share between tasks."""

    def __init__(self, client: Any, config: RedisConfig) -> None:
        self._client = client
        self._config = config
        self._keys = config.keys
        self._warned: set[str] = set()

    def warn_not_a_stream(self, name: str, kind: str) -> None:
        """One warning per key and backend, however many consumers meet it."""
        if name not in self._warned:
            self._warned.add(name)
            log.warning("skipping %r: it is a Redis %s, not a stream", name, kind)

    @property
    def notifications_key(self) -> str:
        return self._keys.notifications

    async def register(self, stream: str) -> None:
        """Record ``stream`` as existing. Call only after an ``XADD`` to it succeeded."""
        keys = self._keys
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.sadd(keys.registry, stream)
            pipe.sismember(keys.retired, stream)
            added, retired = await pipe.execute()
        if retired:
            log.warning(
                "published to retired stream %s: no consumer reads it until `abe-redis streams "
                "unretire` is run",
                stream,
            )
        if added:
            async with self._client.pipeline(transaction=False) as pipe:
                _bump(pipe, keys.registry_version)
                pipe.xadd(
                    keys.notifications, {b"stream": stream}, maxlen=NOTIFICATIONS_MAXLEN, approximate=True
                )
                await pipe.execute()

    async def retire(self, stream: str) -> bool:
        """Stop consumers reading ``stream`` (its entries stay). True if it was registered."""
        keys = self._keys
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.sadd(keys.retired, stream)
            pipe.srem(keys.registry, stream)
            _bump(pipe, keys.registry_version)
            _, removed, _ = await pipe.execute()
        return bool(removed)

    async def unretire(self, stream: str) -> bool:
        keys = self._keys
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.srem(keys.retired, stream)
            pipe.sadd(keys.registry, stream)
            _bump(pipe, keys.registry_version)
            was_retired, _, _ = await pipe.execute()
        return bool(was_retired)

    async def retired(self) -> set[str]:
        return {to_str(m) for m in await self._client.smembers(self._keys.retired)}

    async def repair(self, streams: Iterable[str]) -> None:
        """Put ``streams`` back after the registry was lost (FLUSHALL, a restart without
        persistence), for consumers that start later."""
        names = list(streams)
        if names:
            async with self._client.pipeline(transaction=False) as pipe:
                self.queue_repair(pipe, names)
                await pipe.execute()

    def queue_repair(self, pipe: Any, names: list[str]) -> None:
        """:meth:`repair`'s two commands, queued on a caller's pipeline (2 replies): so that
        they go out in the same write as what made them necessary."""
        pipe.sadd(self._keys.registry, *names)
        _bump(pipe, self._keys.registry_version)

    async def version(self) -> bytes | None:
        value = await self._client.get(self._keys.registry_version)
        return value if isinstance(value, bytes) or value is None else str(value).encode()

    async def listed(self) -> tuple[set[str], set[str]]:
        """(registered or configured or matching the pattern, retired) names."""
        config = self._config
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.smembers(self._keys.registry)
            pipe.smembers(self._keys.retired)
            registered, retired = await pipe.execute()
        names = set(config.streams) | {to_str(m) for m in registered}
        if config.stream_pattern:
            async for found in self._client.scan_iter(
                match=config.stream_pattern, count=1000, _type="STREAM"
            ):
                names.add(to_str(found))
        return names, {to_str(m) for m in retired}

    async def types(self, names: list[str]) -> dict[str, str]:
        if not names:
            return {}
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.type(name)
            replies = await pipe.execute()
        return {name: to_str(kind) for name, kind in zip(names, replies, strict=True)}


class StreamSet:
    """The streams one consumer reads, kept current from the registry.

    A stream stays known until it is retired, even if the registry forgets it (a flushed
    registry is rebuilt by publishers and consumers). Keys that are not streams are skipped.
    """

    def __init__(self, registry: StreamRegistry, config: RedisConfig) -> None:
        self._registry = registry
        self._config = config
        self.streams: list[str] = []
        self._known: set[str] = set()
        self._bad: set[str] = set()
        self._version: bytes | None = None
        self._next_poll = 0.0
        self._next_full = 0.0

    def due(self, now: float) -> bool:
        return now >= self._next_poll

    def force(self) -> None:
        """Look again at the next :meth:`refresh` (a notification said a stream is new)."""
        self._next_poll = 0.0
        self._next_full = 0.0

    async def refresh(self) -> list[str]:
        """Streams that became readable since the last call."""
        now = time.monotonic()
        self._next_poll = now + self._config.discovery_interval_ms / 1000
        version = await self._registry.version()
        if version == self._version and now < self._next_full and self.streams:
            return []
        self._version = version
        self._next_full = now + FULL_REFRESH_S
        listed, retired = await self._registry.listed()
        missing = sorted(self._known - listed - retired)
        if missing:
            # Known here, registered once, never retired, yet gone from the registry: it was
            # lost (FLUSHALL, a restart without persistence) after its streams were written.
            # Put them back, so that consumers starting now find them too.
            await self._registry.repair(missing)
        if self._bad and version is not None:
            self._bad.clear()  # the registry changed: a bad key may have been fixed; look again
        candidates = sorted(
            name
            for name in listed
            if name not in self._known and name not in self._bad and not self._config.is_backend_key(name)
        )
        kinds = await self._registry.types(candidates)
        added = []
        for name in candidates:
            kind = kinds.get(name, "none")
            if kind in ("stream", "none"):
                added.append(name)
            else:
                self._skip(name, kind)
        self._known.update(added)
        gone = self._known & retired
        if gone:
            log.info("retired streams no longer read: %s", ", ".join(sorted(gone)))
            self._known -= gone
        self.streams = sorted(self._known)
        return added

    def skip(self, stream: str, kind: str) -> None:
        """Stop reading ``stream``: it turned out not to be a stream."""
        self._skip(stream, kind)
        self._known.discard(stream)
        self.streams = sorted(self._known)

    def _skip(self, name: str, kind: str) -> None:
        self._registry.warn_not_a_stream(name, kind)
        self._bad.add(name)
