"""Recovery: taking over entries nobody is handling — and the one place delivery counts are set.

Three sources, all turned into :class:`Taken` entries with their delivery count:

* **own pending at start** — a consumer that restarts under its old name resumes what its
  previous incarnation held. That process may have died handling them, so the take counts.
* **orphans** — entries in this consumer's own pending list that it does not hold: a read whose
  reply was lost in transit. Nobody handled them; they are taken back without a new count.
* **the sweep** — every ``claim_interval_ms``: entries of consumers that are gone (their
  alive-until mark passed, or they closed) on the streams they recorded, then a budget of
  ``sweep_streams`` streams in rotation for anything else idle past ``claim_idle_ms``. Idle cost
  is therefore a handful of commands per interval, whatever the number of streams.

Redis counts a delivery on every non-``JUSTID`` claim; leases keep that counter equal to "times
handed to a caller" (see :mod:`abe_redis._lease`), so a take's count is the counter plus one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from ._codec import to_str
from ._config import RedisConfig
from ._connection import is_missing_group
from ._lease import LeaseTable
from ._membership import FORGETTING, PROCESS_TOKEN, free_lock

log = logging.getLogger("abe_redis")

_DEAD_PER_SWEEP = 20
_FORGET_CRASHED_AFTER = 10
"""A crashed consumer's name is deleted from its groups once it has been gone this many TTLs."""


@dataclass(frozen=True, slots=True)
class Taken:
    stream: str
    entry_id: str
    fields: dict[Any, Any] | None
    count: int


class Recovery:
    def __init__(
        self,
        client: Any,
        taker: Any,
        config: RedisConfig,
        *,
        group: str,
        leases: LeaseTable,
        membership_ttl_ms: int,
    ) -> None:
        self._client = client  # shared pool: reads that change nothing
        self._taker = taker  # the consumer's own connection: commands that take entries
        self._config = config
        self._group = group
        self._leases = leases
        self._keys = config.keys
        self._ttl_ms = membership_ttl_ms
        self._rotation = 0
        self.more = False
        """True when the last sweep left claimable entries behind (no room): sweep again soon."""
        self._collected: list[Taken] = []

    def collect(self) -> list[Taken]:
        """Every entry taken (and leased) since the last call, whatever failed after it."""
        collected, self._collected = self._collected, []
        return collected

    @property
    def consumer(self) -> str:
        return self._leases.consumer

    # -- own pending ---------------------------------------------------------------------

    async def own_pending(self, streams: list[str], room: int, *, counted: bool) -> list[Taken]:
        """This consumer's pending entries that it does not hold, up to ``room``.

        ``counted``: the previous incarnation's entries (a take that counts), or orphans of a
        lost reply (taken back as they are).
        """
        found: list[tuple[str, list[dict[str, Any]]]] = []
        for chunk in _chunks(streams, 500):
            async with self._client.pipeline(transaction=False) as pipe:
                for stream in chunk:
                    pipe.xpending_range(
                        stream, self._group, min="-", max="+", count=room, consumername=self.consumer
                    )
                replies = await pipe.execute(raise_on_error=False)
            for stream, reply in zip(chunk, replies, strict=True):
                if isinstance(reply, Exception) or not reply:
                    continue
                mine = [p for p in reply if not self._leases.holds(stream, to_str(p["message_id"]))]
                if mine:
                    found.append((stream, mine))
        taken: list[Taken] = []
        for stream, pending in found:
            if len(taken) >= room:
                self.more = True
                break
            pending = pending[: room - len(taken)]
            uncounted = self._leases.uncounted
            if counted and any((stream, to_str(p["message_id"])) in uncounted for p in pending):
                # Taken before by a claim whose reply was lost: counted already, or it never
                # ran; either way taking them again sets the count, not adds to it.
                again = [p for p in pending if (stream, to_str(p["message_id"])) in uncounted]
                pending = [p for p in pending if (stream, to_str(p["message_id"])) not in uncounted]
                taken += await self._take_back(stream, again)
                if not pending:
                    continue
            if counted:
                # Guard with the idle time seen: if a peer's sweep claimed one meanwhile, its
                # idle clock restarted and this claim skips it.
                min_idle = min(int(p["time_since_delivered"]) for p in pending) // 2
                taken += await self._claim(stream, pending, min_idle)
            else:
                taken += await self._take_back(stream, pending)
        return taken

    async def _take_back(self, stream: str, pending: list[dict[str, Any]]) -> list[Taken]:
        """Entries of this consumer's own pending list that it does not hold."""
        released, uncounted = self._leases.released, self._leases.uncounted
        keys = [(stream, to_str(p["message_id"])) for p in pending]
        # An entry of a lost counting claim is set to the count of that one take, below.
        again = [p for p, key in zip(pending, keys, strict=True) if key in released and key not in uncounted]
        taken: list[Taken] = []
        if again:
            # Handed out before and given back by this consumer: taking one again is a delivery.
            again_ids = {to_str(p["message_id"]) for p in again}
            for entry_id in again_ids:
                released.pop((stream, entry_id), None)
            pending = [p for p in pending if to_str(p["message_id"]) not in again_ids]
            taken = await self._claim(stream, again, self._config.claim_idle_ms // 2)
            if not pending:
                return taken
        counts = {to_str(p["message_id"]): int(p["times_delivered"]) for p in pending}
        idle = {to_str(p["message_id"]): int(p["time_since_delivered"]) for p in pending}
        # An entry a counting claim of this consumer may have taken (its reply was lost) gets
        # the count of that one take, set explicitly: Redis may hold one more or not.
        recount = {i: uncounted[(stream, i)] + 1 for i in counts if (stream, i) in uncounted}
        counts.update(recount)
        sent = time.monotonic()
        # JUSTID: restart the idle clock, leave the counter as the lost read set it. Each entry is
        # guarded by the idle time just seen: a peer that claimed it since the XPENDING restarted
        # that clock, and the entry is the peer's now, not an orphan to steal back.
        async with self._taker.pipeline(transaction=False) as pipe:
            for entry_id, seen in idle.items():
                pipe.xclaim(
                    stream,
                    self._group,
                    self.consumer,
                    seen,
                    [entry_id],
                    retrycount=recount.get(entry_id),
                    justid=True,
                )
            replies = await pipe.execute()
        for entry_id in recount:
            uncounted.pop((stream, entry_id), None)
        claimed_ids = [to_str(i) for reply in replies for i in reply]
        async with self._client.pipeline(transaction=False) as pipe:
            for entry_id in claimed_ids:
                pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
            replies = await pipe.execute()
        data = {to_str(r[0][0]): r[0][1] for r in replies if r}
        orphans = [Taken(stream, i, data.get(i), max(1, counts[i])) for i in claimed_ids]
        self._leases.take(stream, [(t.entry_id, t.count) for t in orphans], at=sent)
        self._collected += orphans
        return taken + orphans

    async def _claim(self, stream: str, pending: list[dict[str, Any]], min_idle: int) -> list[Taken]:
        """Claim (counting a delivery) entries seen in ``XPENDING``; the count is the one seen
        plus one, valid because ``min_idle`` excludes any entry someone touched since."""
        counts = {to_str(p["message_id"]): int(p["times_delivered"]) for p in pending}
        sent = time.monotonic()
        try:
            claimed = await self._taker.xclaim(stream, self._group, self.consumer, min_idle, list(counts))
        except BaseException:
            # Outcome unknown: Redis may have counted a delivery of each, and this consumer may
            # hold them. Remembered, so that neither a second take nor the next incarnation's
            # counts another (see LeaseTable.may_hold).
            self._leases.may_hold(stream, counts)
            raise
        for entry_id in counts:
            self._leases.uncounted.pop((stream, entry_id), None)
        taken = [
            Taken(stream, to_str(i), f, counts.get(to_str(i), 0) + 1) for i, f in claimed if i is not None
        ]
        self._leases.take(stream, [(t.entry_id, t.count) for t in taken], at=sent)
        self._collected += taken
        return taken

    # -- the sweep -----------------------------------------------------------------------

    async def sweep(self, streams: list[str], room: int) -> list[Taken]:
        self.more = False
        if room <= 0 or not streams:
            self.more = bool(streams)
            return []
        taken = await self._from_gone_consumers(set(streams), room)
        if len(taken) < room:
            taken += await self._rotate(streams, room - len(taken))
        return taken

    async def _from_gone_consumers(self, readable: set[str], room: int) -> list[Taken]:
        now_ms = int(time.time() * 1000)
        gone = await self._client.zrangebyscore(
            self._keys.consumers(self._group), "-inf", now_ms, start=0, num=_DEAD_PER_SWEEP, withscores=True
        )
        taken: list[Taken] = []
        for raw_name, score in gone:
            name = to_str(raw_name)
            if name == self.consumer:
                continue
            holdings = self._keys.holdings(self._group, name)
            streams = sorted(to_str(s) for s in await self._client.smembers(holdings))
            left = False
            for stream in streams:
                if stream not in readable:
                    continue
                if len(taken) >= room:
                    self.more = True
                    return taken
                pending = await self._client.xpending_range(
                    stream,
                    self._group,
                    min="-",
                    max="+",
                    count=room - len(taken),
                    consumername=name,
                    idle=self._config.claim_idle_ms,
                )
                if pending:
                    taken += await self._claim(stream, pending, self._config.claim_idle_ms)
                    left = True
                elif await self._has_pending(stream, name):
                    left = True  # pending but not idle long enough yet
            if not left:
                await self._forget(name, streams, closed=score == 0, gone_since_ms=now_ms - int(score))
        return taken

    async def _has_pending(self, stream: str, name: str) -> bool:
        reply = await self._client.xpending_range(
            stream, self._group, min="-", max="+", count=1, consumername=name
        )
        return bool(reply)

    async def _forget(self, name: str, streams: Iterable[str], *, closed: bool, gone_since_ms: int) -> None:
        """A gone consumer with nothing pending: stop tracking it, and delete its name from the
        groups once it surely will not come back (deleting a live name would drop its entries).

        The name may be taken again meanwhile (a configured name, by a restarted consumer): it is
        deleted only under its lock, held with a :data:`FORGETTING` token so that no consumer can
        join under it meanwhile, and only if still nothing is pending. Without the lock, a
        consumer that joined and read between the look at its pending list and ``XGROUP
        DELCONSUMER`` had what it read deleted from the pending list — acknowledged by nobody.
        """
        streams = list(streams)
        delete_name = closed or gone_since_ms > _FORGET_CRASHED_AFTER * self._ttl_ms
        lock = self._keys.consumer_lock(self._group, name)
        token = f"{FORGETTING}{PROCESS_TOKEN}:{uuid.uuid4().hex[:8]}"
        if not await self._client.set(lock, token, nx=True, px=self._ttl_ms):
            return  # live again, or another sweep is at it
        # If a step fails (or the task is cancelled), the lock lapses with its TTL: no cleanup
        # that waits on Redis after a cancellation.
        async with self._client.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xpending_range(stream, self._group, min="-", max="+", count=1, consumername=name)
            replies = await pipe.execute(raise_on_error=False)
        # Anything pending: a new incarnation read under the name before the lock was taken.
        if not any(_may_hold(reply) for reply in replies):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.zrem(self._keys.consumers(self._group), name)
                pipe.delete(self._keys.holdings(self._group, name))
                if delete_name:
                    for stream in streams:
                        pipe.xgroup_delconsumer(stream, self._group, name)
                await pipe.execute(raise_on_error=False)
        await free_lock(self._client, lock, token)

    async def _rotate(self, streams: list[str], room: int) -> list[Taken]:
        """A budget of streams, in rotation: entries idle past the claim timeout, whoever holds them
        (consumers of other programs, or whose records were lost)."""
        budget = min(len(streams), self._config.sweep_streams)
        start = self._rotation % len(streams)
        chosen = [streams[(start + i) % len(streams)] for i in range(budget)]
        self._rotation = start + budget
        async with self._client.pipeline(transaction=False) as pipe:
            for stream in chosen:
                pipe.xpending_range(
                    stream, self._group, min="-", max="+", count=room, idle=self._config.claim_idle_ms
                )
            replies = await pipe.execute(raise_on_error=False)
        taken: list[Taken] = []
        for stream, reply in zip(chosen, replies, strict=True):
            if isinstance(reply, Exception) or not reply:
                continue
            if len(taken) >= room:
                self.more = True
                break
            reply = reply[: room - len(taken)]
            # Our own idle entries that we do not hold are orphans of a lost reply: no new count.
            orphans = [p for p in reply if to_str(p["consumer"]) == self.consumer]
            orphans = [p for p in orphans if not self._leases.holds(stream, to_str(p["message_id"]))]
            others = [p for p in reply if to_str(p["consumer"]) != self.consumer]
            if orphans:
                taken += await self._take_back(stream, orphans)
            if others:
                log.info("claiming %d idle entries of %s in group %s", len(others), stream, self._group)
                taken += await self._claim(stream, others, self._config.claim_idle_ms)
        if len(taken) >= room:
            self.more = True
        return taken


def _may_hold(reply: Any) -> bool:
    """An XPENDING reply that shows (or cannot rule out) a pending entry; a stream or group that
    no longer exists holds none."""
    if isinstance(reply, ResponseError) and is_missing_group(reply):
        return False
    return isinstance(reply, Exception) or bool(reply)


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
