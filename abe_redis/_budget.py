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
"""

from __future__ import annotations


class PrefetchBudget:
    def __init__(self, total: int, readers: int) -> None:
        if total < readers:
            raise ValueError(f"a budget of {total} cannot give each of {readers} readers one entry")
        self.total = total
        self._granted = [1] * readers
        self._room = [0] * readers
        self._filling = [False] * readers
        self._delivered = [0] * readers
        self._seen = [0] * readers

    def delivered(self, reader: int) -> None:
        """Count an entry the reader handed out (read or recovered under its last grant)."""
        self._delivered[reader] += 1

    def limit(self, reader: int, held: int) -> int:
        """The most entries ``reader`` may hold until its next call; it holds ``held`` now and
        has no read in flight."""
        got = self._delivered[reader] - self._seen[reader]
        self._seen[reader] = self._delivered[reader]
        # Half counts as filled: a read spreads its room over the reader's streams in equal
        # whole counts (room 4 over 3 streams reads one each), so a backlog rarely fills it all.
        self._filling[reader] = self._room[reader] > 0 and 2 * got >= self._room[reader]
        others = sum(self._granted) - self._granted[reader]
        filling = max(1, sum(self._filling))
        if self._filling[reader]:
            wanted = held + 2 * self._room[reader]
            cap = max(self.total // filling, held + 1)
        else:
            wanted = cap = held + 1
        granted = max(held, min(wanted, cap, self.total - others))
        self._granted[reader] = granted
        self._room[reader] = granted - held
        return granted

    @property
    def granted(self) -> int:
        return sum(self._granted)
