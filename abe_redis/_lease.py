"""Leases: everything a consumer holds, and keeping it held.

A consumer *holds* an entry from the moment it reads or claims it until its acknowledgement
(or dead letter) is written: buffered, inside a handler, or waiting for its ``XACK``. In Redis a
held entry is a pending entry of this consumer whose idle time keeps growing; a peer may claim
it once that idle time passes ``claim_idle_ms``. The lease table therefore:

* **refreshes** every held entry on a timer, ``lease_refresh_ms`` (a third of ``claim_idle_ms``),
  with one ``XCLAIM <ids…> JUSTID`` to itself per stream — the idle clock restarts and the
  delivery counter is untouched. A healthy consumer's entries are never idle long enough to be
  claimed, however long its handler or its buffer takes.
* **verifies** before trusting a lease that went unrefreshed for too long (the event loop was
  blocked): entries a peer claimed meanwhile are dropped from the buffer rather than handled twice.
* **releases** everything on close: ``XCLAIM … IDLE <claim_idle_ms> JUSTID`` makes the entries
  claimable at once, and entries never handed to the caller get their delivery counter set back
  (``RETRYCOUNT``), so a release never counts as a delivery.

The delivery counter Redis keeps is thus "times handed to a caller", plus one while a live
consumer holds the entry unhanded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._codec import to_str

_RELEASED_LIMIT = 10_000
_READ_ATTEMPTS = 3


@dataclass(slots=True)
class Lease:
    count: int
    """The entry's delivery counter in Redis since this consumer took it."""
    handed: bool = False


class LeaseTable:
    """What one consumer holds, per stream."""

    def __init__(
        self, client: Any, *, group: str, consumer: str, claim_idle_ms: int, refresh_ms: int
    ) -> None:
        self._client = client
        self._group = group
        self.consumer = consumer
        self._claim_idle_ms = claim_idle_ms
        self._refresh_s = refresh_ms / 1000
        self._held: dict[str, dict[str, Lease]] = {}
        self._refreshed_at: dict[str, float] = {}
        self.released: dict[tuple[str, str], None] = {}
        """Handed-out entries this live consumer gave back: if it takes one back itself, that is
        a new delivery, unlike an orphan of a lost reply."""
        self.uncounted: dict[tuple[str, str], int] = {}
        """Entries a counting claim of this consumer may have taken (its reply was lost), with
        the delivery count seen before it: whether it ran or not, the count to set when they are
        taken (that count plus one) or released (that count) — see :meth:`may_hold`."""

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._held.values())

    def streams(self) -> list[str]:
        return [stream for stream, ids in self._held.items() if ids]

    def holds(self, stream: str, entry_id: str) -> bool:
        return entry_id in self._held.get(stream, ())

    def take(self, stream: str, entries: Iterable[tuple[str, int]], *, at: float) -> None:
        """Record entries just read or claimed (``at``: monotonic time the command was sent)."""
        held = self._held.setdefault(stream, {})
        for entry_id, count in entries:
            held[entry_id] = Lease(count)
        if stream not in self._refreshed_at or at < self._refreshed_at[stream]:
            self._refreshed_at[stream] = at

    def may_hold(self, stream: str, counts: dict[str, int]) -> None:
        """A counting claim of these entries (id: count seen before it) lost its reply: Redis
        may have counted a delivery no handler will see. Taking them again must not count
        another, and a close must release them with the count set back, or each take by the
        next incarnation of a configured name adds one (simulate seed 111)."""
        self.uncounted.update(((stream, entry_id), count) for entry_id, count in counts.items())
        while len(self.uncounted) > _RELEASED_LIMIT:
            del self.uncounted[next(iter(self.uncounted))]

    def hand(self, stream: str, entry_id: str) -> bool:
        """Mark a held entry as handed to the caller; False if it is no longer held."""
        held = self._held.get(stream)
        lease = held.get(entry_id) if held is not None else None
        if lease is None:
            return False
        lease.handed = True
        return True

    def unhand(self, stream: str, entry_id: str) -> None:
        """Take back :meth:`hand` for an entry no handler saw."""
        lease = self._held.get(stream, {}).get(entry_id)
        if lease is not None:
            lease.handed = False

    def drop(self, stream: str, entry_ids: Iterable[str]) -> None:
        held = self._held.get(stream)
        if held is None:
            return
        for entry_id in entry_ids:
            held.pop(entry_id, None)
        if not held:
            del self._held[stream]
            self._refreshed_at.pop(stream, None)

    def clear(self) -> None:
        self._held.clear()
        self._refreshed_at.clear()

    def stale(self, stream: str, now: float | None = None) -> bool:
        """True when the stream's leases went unrefreshed for half the claim timeout: a peer may
        have claimed them, so :meth:`verify` before handing one out. (``now``: the caller's
        ``time.monotonic()``, when it has one.)"""
        at = self._refreshed_at.get(stream)
        if at is None:
            return False
        return (time.monotonic() if now is None else now) - at > self._claim_idle_ms / 2000

    async def refresh(self) -> list[tuple[str, str]]:
        """One ``XCLAIM … JUSTID`` per stream for everything held; one round trip in all.

        Streams whose leases went stale are verified instead; returns the (stream, id) pairs
        lost to a peer meanwhile.
        """
        # The fresh streams are renewed first, blind (min-idle 0), as soon as they are found
        # fresh: verifying the others can take long (lost replies, reads sent again), and a
        # stream fresh when this call began may lapse meanwhile and be rightly claimed by a
        # peer, which a renewal sent after the verifications would steal back (simulate seed
        # 793: the peer handed it out at count 3; the stolen entry was released with its count
        # set back to 1 and handed out again at 2).
        streams = [stream for stream in self.streams() if not self.stale(stream)]
        stale = [stream for stream in self.streams() if self.stale(stream)]
        if streams:
            # Taken before any await: a client whose pipeline awaits on entry (a cluster wrapper)
            # lets acks drop a stream's last lease meanwhile.
            held = [(stream, list(self._held[stream])) for stream in streams]
            sent = time.monotonic()
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for stream, ids in held:
                        pipe.xclaim(stream, self._group, self.consumer, 0, ids, justid=True)
                    await pipe.execute(raise_on_error=False)
            except BaseException:
                self._unsure(streams)
                raise
            for stream in streams:
                if stream in self._refreshed_at:
                    self._refreshed_at[stream] = sent
        return [(stream, entry_id) for stream in stale for entry_id in await self.verify(stream)]

    def _unsure(self, streams: Iterable[str]) -> None:
        """A renewal or release whose outcome is unknown (its reply was lost; it may have run, or
        not): a peer may claim the entries meanwhile, and a blind second try (min-idle 0) would
        steal them back, so they count as stale, to be verified before they are renewed or
        handed out. The client sending these never resends by itself (see
        :func:`abe_redis._connection.unresent_client`)."""
        for stream in streams:
            if stream in self._refreshed_at:
                self._refreshed_at[stream] = float("-inf")

    async def verify(self, stream: str) -> list[str]:
        """Re-check ownership of a stale stream's leases; drop and return the ids lost to a peer.

        Claiming with ``min-idle-time = 0`` would steal back what a peer has rightly claimed, so
        ownership is read first (``XPENDING`` per entry) and only what is still ours is renewed —
        each with its idle time just seen as ``min-idle-time``: a peer that claims the entry
        between the two commands restarts its idle clock, so the renewal skips it instead of
        stealing it back (and two consumers handing it out, the later with a lower count).
        """
        held = self._held.get(stream)
        if not held:
            return []
        ids = list(held)
        sent = time.monotonic()
        owners = await self._owners(stream, ids)
        mine = {i: idle for i, (owner, idle) in owners.items() if owner == self.consumer}
        # Another consumer's now, or no longer pending at all (a peer took it over and has
        # already acknowledged it): either way not this consumer's to hand out.
        lost = [i for i, (owner, _) in owners.items() if owner != self.consumer]
        if mine:
            # What is still this consumer's is renewed as of this command, not of the read: a
            # verification over a slow link takes long enough that, timed from the read, the
            # stream would be stale again at once and only ever verified, never renewed in one
            # command, until a lease lapsed under a handler (simulate seed 644).
            sent = time.monotonic()
            async with self._client.pipeline(transaction=False) as pipe:
                for entry_id, idle in mine.items():
                    pipe.xclaim(stream, self._group, self.consumer, idle, [entry_id], justid=True)
                replies = await pipe.execute(raise_on_error=False)
            skipped = [
                entry_id
                for entry_id, reply in zip(mine, replies, strict=True)
                if not isinstance(reply, Exception) and not reply
            ]
            if skipped:
                # Touched since the XPENDING: a peer claimed it, or this consumer renewed it
                # meanwhile (its background refresh, a retry). A second look tells which.
                again = await self._owners(stream, skipped)
                lost += [i for i, (owner, _) in again.items() if owner != self.consumer]
        self.drop(stream, lost)
        if stream in self._refreshed_at:
            self._refreshed_at[stream] = sent
        return lost

    async def _owners(self, stream: str, ids: list[str]) -> dict[str, tuple[str | None, int]]:
        """(owner or None if not pending, idle ms) of each entry; unreadable ones are left out.

        Only reads, so sent again after a connection error (the lease client never resends by
        itself): a verification that fails leaves its entries unreleased and unhanded, and an
        entry left to lapse is counted one delivery more when a peer claims it (simulate seed 42:
        releases on close failed three times over on a lossy link, and entries were dead-lettered
        after two handler deliveries)."""
        for attempt in range(_READ_ATTEMPTS):
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for entry_id in ids:
                        pipe.xpending_range(stream, self._group, min=entry_id, max=entry_id, count=1)
                    replies = await pipe.execute(raise_on_error=False)
                break
            except (RedisConnectionError, RedisTimeoutError):
                if attempt == _READ_ATTEMPTS - 1:
                    raise
        owners: dict[str, tuple[str | None, int]] = {}
        for entry_id, reply in zip(ids, replies, strict=True):
            if isinstance(reply, Exception):
                continue  # unknown: keep it and look again next time
            if reply:
                owners[entry_id] = (to_str(reply[0]["consumer"]), int(reply[0]["time_since_delivered"]))
            else:
                owners[entry_id] = (None, 0)
        return owners

    def count(self, stream: str, entry_id: str) -> int | None:
        lease = self._held.get(stream, {}).get(entry_id)
        return lease.count if lease is not None else None

    async def hand_again(self, stream: str, entry_id: str) -> int:
        """Count one more delivery of a held entry (a retry within this consumer), in Redis too,
        so that the attempt survives a restart. Returns the new count."""
        lease = self._held[stream][entry_id]
        try:
            await self._client.xclaim(
                stream, self._group, self.consumer, 0, [entry_id], retrycount=lease.count + 1, justid=True
            )
        except BaseException:
            self._unsure([stream])
            raise
        lease.count += 1
        lease.handed = True
        return lease.count

    def _adopt_uncounted(self) -> None:
        """Lease what a lost counting claim may have taken, as never handed (count: the one seen
        before the claim, plus one) and stale: the release verifies they are this consumer's
        (a peer may hold them, or the claim never ran on another's) and sets the count back."""
        for (stream, entry_id), count in self.uncounted.items():
            held = self._held.setdefault(stream, {})
            if entry_id not in held:
                held[entry_id] = Lease(count + 1)
                self._refreshed_at[stream] = float("-inf")
        self.uncounted.clear()

    async def release(self, entries: Iterable[tuple[str, str]] | None = None) -> None:
        """Make held entries (default: all) claimable at once, counting no delivery for the
        ones never handed out."""
        wanted = None if entries is None else set(entries)
        if entries is None:
            self._adopt_uncounted()
        streams = [s for s in self.streams() if wanted is None or any(w == s for w, _ in wanted)]
        # A released entry is claimed with min-idle 0: once a peer may have claimed it (its lease
        # went stale), that would steal it back and set its count lower. So the fresh streams go
        # at once, in one round trip, and each stale one straight after its own verification
        # (which drops what a peer took and renews the rest, each guarded by its idle time): not
        # after verifying every other, which can take long enough for any of them to lapse.
        fresh = [stream for stream in streams if not self.stale(stream)]
        await self._release(fresh, wanted)
        for stream in streams:
            if stream not in fresh:
                await self.verify(stream)
                await self._release([stream], wanted)
        if entries is None:
            self.clear()
        while len(self.released) > _RELEASED_LIMIT:  # most are long acknowledged by peers
            del self.released[next(iter(self.released))]

    async def _release(self, streams: list[str], wanted: set[tuple[str, str]] | None) -> None:
        """One round trip: release what is held (and wanted) of ``streams``, and forget it."""
        chosen: dict[str, dict[str, Lease]] = {}
        for stream in streams:
            for entry_id, lease in self._held.get(stream, {}).items():
                if wanted is None or (stream, entry_id) in wanted:
                    chosen.setdefault(stream, {})[entry_id] = lease
        if not chosen:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for stream, held in chosen.items():
                by_count: dict[int, list[str]] = {}
                for entry_id, lease in held.items():
                    # The counter is set, never left as it is: a handed entry keeps exactly the
                    # deliveries this consumer knows of (a retry whose reply was lost may have
                    # raised it in Redis), an unhanded one gives back the take's +1.
                    key = lease.count if lease.handed else max(0, lease.count - 1)
                    by_count.setdefault(key, []).append(entry_id)
                for retry_count, ids in by_count.items():
                    pipe.xclaim(
                        stream,
                        self._group,
                        self.consumer,
                        0,
                        ids,
                        idle=self._claim_idle_ms,
                        retrycount=retry_count,
                        justid=True,
                    )
            try:
                await pipe.execute()
            except BaseException:
                self._unsure(chosen)
                raise
        for stream, held in chosen.items():
            if wanted is not None:
                self.released.update(dict.fromkeys((stream, i) for i, lease in held.items() if lease.handed))
            # Released ones are forgotten at once: a later step of the same release may fail,
            # and trying again must not claim these, claimable by peers now, once more.
            self.drop(stream, list(held))
