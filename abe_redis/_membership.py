"""Consumer names: unique among live consumers, and a record of who is alive.

Each live consumer holds a lock key named after itself (``SET … NX PX``), renewed with its
leases. A name is taken only when its lock is free, so two live consumers never share a name —
whether they run in one process or in two. A configured name (``REDIS_CONSUMER_NAME``) held by
*another process* is reported loudly, and this consumer takes the next free ``name-N``.

Alongside, a sorted set per group maps each consumer name to the moment it stops counting as
alive, and a set per consumer lists the streams where it may have pending entries. Recovery
reads both to find a dead consumer's messages without scanning every stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any

from redis.exceptions import WatchError

from ._codec import to_str
from ._config import RedisConfig

log = logging.getLogger("abe_redis")

PROCESS_TOKEN = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
"""Identifies this process among the holders of consumer-name locks."""
_MAX_CANDIDATES = 10_000


FORGETTING = "forgetting:"
"""Prefix of the token a sweep holds a gone consumer's name lock with while it deletes the name
from the groups: a consumer joining under that name waits for it rather than taking another."""


def _text(value: bytes | str | None) -> str | None:
    return None if value is None else to_str(value)


async def free_lock(client: Any, lock: str, token: str) -> None:
    """Delete ``lock`` if it still holds ``token``, atomically (WATCH, MULTI/EXEC): a GET then a
    plain DEL is not enough, since a DEL whose reply was lost is sent again, and by then another
    consumer may hold the lock."""
    async with client.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(lock)
            if _text(await pipe.get(lock)) != token:
                return
            pipe.multi()
            pipe.delete(lock)
            await pipe.execute()
        except WatchError:
            # Changed meanwhile (no longer ours), or the connection failed while watching
            # (redis-py never resends then): either way the lock lapses with its TTL.
            pass


class Membership:
    """This consumer's name in its group, and its heartbeat."""

    def __init__(self, client: Any, config: RedisConfig, *, group: str) -> None:
        self._client = client
        self._config = config
        self._group = group
        self._keys = config.keys
        self.name = ""
        self.configured = config.consumer_name is not None
        self._token = f"{PROCESS_TOKEN}:{uuid.uuid4().hex[:8]}"
        self._held_streams: set[str] = set()
        self.ttl_ms = max(config.claim_idle_ms, 3 * config.lease_refresh_ms, 1000)
        self._confirmed_at = float("-inf")
        """Monotonic time a command that (re)set the name lock's TTL was sent, last it succeeded:
        the lock holds until at least ``ttl_ms`` after it."""

    def _candidates(self) -> Any:
        base = self._config.consumer_name
        if base is None:
            base = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        yield base
        for n in range(2, _MAX_CANDIDATES):
            yield f"{base}-{n}"

    async def join(self) -> str:
        """Take the first free name; returns it."""
        for candidate in self._candidates():
            lock = self._keys.consumer_lock(self._group, candidate)
            # A sweep deleting the name's leftovers frees it in a moment, or its lock lapses.
            patience = time.monotonic() + self.ttl_ms / 1000
            while True:
                sent = time.monotonic()
                taken = await self._client.set(lock, self._token, nx=True, px=self.ttl_ms)
                holder = "" if taken else _text(await self._client.get(lock)) or ""
                if not holder.startswith(FORGETTING) or time.monotonic() > patience:
                    break
                await asyncio.sleep(0.05)
            # Our own token: the SET took the lock, its reply was lost, and the retry found it held.
            if taken or holder == self._token:
                self._confirmed_at = sent
                self.name = str(candidate)
                await self._announce()
                return self.name
            if (
                self.configured
                and candidate == self._config.consumer_name
                and not holder.startswith(PROCESS_TOKEN)
            ):
                log.warning(
                    "consumer name %r in group %r is held by another live process (%s); two "
                    "processes are configured with the same REDIS_CONSUMER_NAME — this one "
                    "continues under a suffixed name",
                    candidate,
                    self._group,
                    holder.rsplit(":", 1)[0],
                )
        raise RuntimeError(f"no free consumer name in group {self._group!r}")

    async def _announce(self) -> None:
        deadline = int(time.time() * 1000) + self.ttl_ms
        await self._client.zadd(self._keys.consumers(self._group), {self.name: deadline})

    async def heartbeat(self) -> bool:
        """Renew the name's lock and the alive-until mark. False when the name has passed to
        another consumer (this one was cut off for longer than the lock's TTL): it must step
        aside, and never overwrite the other's lock."""
        lock = self._keys.consumer_lock(self._group, self.name)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(lock, self._token, px=self.ttl_ms, nx=True)  # expired meanwhile: take it back
            pipe.get(lock)
            _, holder = await pipe.execute()
        if _text(holder) != self._token:
            log.error(
                "consumer %r in group %r: its name passed to another consumer while this one was "
                "cut off for longer than %d ms; it continues under a new name",
                self.name,
                self._group,
                self.ttl_ms,
            )
            return False
        deadline = int(time.time() * 1000) + self.ttl_ms
        sent = time.monotonic()
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.pexpire(lock, self.ttl_ms)
            pipe.zadd(self._keys.consumers(self._group), {self.name: deadline})
            await pipe.execute()
        self._confirmed_at = sent
        return True

    def lapsed(self, now: float) -> bool:
        """Whether the name's lock may have expired since it was last confirmed (cut off from
        Redis for longer than its TTL): another consumer may hold the name now. Until a
        :meth:`heartbeat` says otherwise, this consumer must hand out nothing, and must not trust
        a pending entry listed under the name as its own: it may be the other's (simulate seed
        158 with unresent lease commands). A fifth of the TTL is kept as margin for the clocks."""
        return now - self._confirmed_at > self.ttl_ms / 1250

    def fresh(self) -> Membership:
        """A new membership in the same group, for a consumer whose name was taken over."""
        return Membership(self._client, self._config, group=self._group)

    async def holds_on(self, stream: str) -> None:
        """Record that this consumer may have pending entries on ``stream`` (once per stream)."""
        if stream in self._held_streams:
            return
        await self._client.sadd(self._keys.holdings(self._group, self.name), stream)
        self._held_streams.add(stream)

    async def leave(self, streams: list[str]) -> None:
        """Free the name and mark the consumer gone, so peers claim what it released at once.

        An automatic name with nothing pending is deleted from the groups of ``streams`` at
        once, so groups do not fill up with the names of consumers long gone. (A name with
        pending entries stays: deleting it would drop them.)
        """
        pending = await self._pending(streams) if not self.configured else {}
        forget = not self.configured and not any(pending.values())
        async with self._client.pipeline(transaction=False) as pipe:
            if forget:
                for stream in streams:
                    pipe.xgroup_delconsumer(stream, self._group, self.name)
                pipe.zrem(self._keys.consumers(self._group), self.name)
                pipe.delete(self._keys.holdings(self._group, self.name))
            else:
                pipe.zadd(self._keys.consumers(self._group), {self.name: 0})
            await pipe.execute(raise_on_error=False)
        await self._free_lock()

    async def _free_lock(self) -> None:
        # Atomic: a resent DEL freed the name another consumer had just taken, a third took it
        # too, and both resumed (and handled) the same pending entries.
        await free_lock(self._client, self._keys.consumer_lock(self._group, self.name), self._token)

    async def _pending(self, streams: list[str]) -> dict[str, int]:
        async with self._client.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xpending_range(stream, self._group, min="-", max="+", count=1, consumername=self.name)
            replies = await pipe.execute(raise_on_error=False)
        # An unreadable answer counts as pending: never delete a name that may hold entries.
        return {s: 1 if isinstance(r, Exception) or r else 0 for s, r in zip(streams, replies, strict=True)}
