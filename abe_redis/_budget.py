"""One consumer's prefetch bound, shared by the readers of its partitions as they need it.

A consumer of a Redis Cluster reads its partitions side by side; together they may hold at most
``prefetch`` entries. A fixed share each (``prefetch / P``) would keep one busy stream to a few
entries per read while idle partitions sit on the rest, so the bound is lent out instead:

* every reader always may hold one entry (a blocking read needs room for one), so the budget
  must be at least the number of readers;
* a reader asks for its limit before each read, when it has no read in flight: only then can
  its grant change without a reply exceeding it;
* a reader whose last grant was filled at least half (a backlog) gets twice as much room, up to
  what the others do not hold granted, and to an equal split between the readers that are
  filling theirs; one that got less (drained) goes back to one entry of room.

So the sum of the grants never exceeds the budget, and a reply never exceeds its grant.

A merging reader can also let its readers take **turns** (:meth:`PrefetchBudget.release`,
:meth:`~PrefetchBudget.ready`, :meth:`~PrefetchBudget.reserve`): when every partition has a
backlog, an equal split of a default bound of 100 over 16 partitions reads six entries at a time,
and each read costs the client far more than the entries it brings. A reader that drained gives
back its room; one with a backlog then waits until at least ``total / TURN_SHARES`` (or what it
needs) is free, and reads that much, while a reader without a backlog needs only one entry and
never waits. Room lent to readers comes back as they drain, so the first in line always gets it.
"""

from __future__ import annotations

from collections.abc import Callable

TURN_SHARES = 4
"""A reader with a backlog waits for its turn until this share of the budget is free for it."""


class PrefetchBudget:
    def __init__(self, total: int, readers: int, *, on_return: Callable[[], None] | None = None) -> None:
        if total < readers:
            raise ValueError(f"a budget of {total} cannot give each of {readers} readers one entry")
        self.total = total
        self._on_return = on_return
        """Called when a grant shrinks: room came back, for which a reader may be waiting its turn."""
        self._granted = [1] * readers
        self._room = [0] * readers
        self._filling = [False] * readers
        self._delivered = [0] * readers
        self._seen = [0] * readers
        # For turns: whether the last read's outcome was already learned (at release), whether a
        # reserved grant awaits the reader's next limit(), and whether its grant is lent out (it
        # may hold more than one entry until it next releases).
        self._learned = [False] * readers
        self._reserved = [False] * readers
        self._lent = [False] * readers

    def delivered(self, reader: int) -> None:
        """Count an entry the reader handed out (read or recovered under its last grant)."""
        self._delivered[reader] += 1

    def limit(self, reader: int, held: int) -> int:
        """The most entries ``reader`` may hold until its next call; it holds ``held`` now and
        has no read in flight."""
        self._lent[reader] = True
        if self._reserved[reader]:
            self._reserved[reader] = False
            self._learned[reader] = False
            granted = max(held, self._granted[reader])
            self._granted[reader] = granted
            self._room[reader] = granted - held
            return granted
        self._learn(reader)
        self._learned[reader] = False
        others = sum(self._granted) - self._granted[reader]
        filling = max(1, sum(self._filling))
        if self._filling[reader]:
            wanted = held + 2 * self._room[reader]
            cap = max(self.total // filling, held + 1)
        else:
            wanted = cap = held + 1
        granted = max(held, min(wanted, cap, self.total - others))
        self._grant(reader, granted)
        self._room[reader] = granted - held
        return granted

    def _grant(self, reader: int, granted: int) -> None:
        returned = granted < self._granted[reader]
        self._granted[reader] = granted
        if returned and self._on_return is not None:
            self._on_return()

    def _learn(self, reader: int) -> None:
        """Whether the reader's last grant was filled (a backlog), from what it handed out since."""
        if self._learned[reader]:
            return
        got = self._delivered[reader] - self._seen[reader]
        self._seen[reader] = self._delivered[reader]
        # Half counts as filled: a read spreads its room over the reader's streams in equal
        # whole counts (room 4 over 3 streams reads one each), so a backlog rarely fills it all.
        self._filling[reader] = self._room[reader] > 0 and 2 * got >= self._room[reader]

    # -- turns ---------------------------------------------------------------------------

    def release(self, reader: int, held: int) -> None:
        """The reader drained what it read and has no read in flight: it gives back the room it
        does not hold (keeping one entry), before it waits for its turn to read again."""
        self._learn(reader)
        self._learned[reader] = True
        self._reserved[reader] = False
        self._lent[reader] = False
        self._granted[reader] = max(held, 1)
        # Told even when the grant kept its size (the reader still holds it, say): it is no
        # longer lent, which may be what the first in line waits for (see ready()).
        if self._on_return is not None:
            self._on_return()

    def filling(self, reader: int) -> bool:
        """Whether the reader's last read found a backlog (it then waits its turn)."""
        return self._filling[reader]

    def ready(self, reader: int, held: int) -> bool:
        """Whether a released reader may read now: it has no backlog, or what it needs is free,
        or nothing lent to others is left to come back."""
        if not self._filling[reader]:
            return True
        if self._free(reader) >= self._need(reader, held):
            return True
        return not any(
            lent and granted > 1
            for other, (lent, granted) in enumerate(zip(self._lent, self._granted, strict=True))
            if other != reader
        )

    def reserve(self, reader: int, held: int) -> int:
        """Grant a released reader its turn's room now; its next :meth:`limit` returns it."""
        want = self._need(reader, held) if self._filling[reader] else held + 1
        granted = max(held, min(want, self._free(reader)))
        self._granted[reader] = granted
        self._room[reader] = granted - held
        self._reserved[reader] = True
        self._lent[reader] = True
        return granted

    def _free(self, reader: int) -> int:
        return self.total - (sum(self._granted) - self._granted[reader])

    def _need(self, reader: int, held: int) -> int:
        filling = max(1, sum(self._filling))
        cap = max(self.total // filling, self.total // TURN_SHARES, held + 1)
        return min(held + max(1, 2 * self._room[reader]), cap)

    @property
    def granted(self) -> int:
        return sum(self._granted)
