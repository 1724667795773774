"""The invariant and the numbers derived from it, as pure functions over what was recorded.

A scenario records every publish attempt (returned, or raised) and every delivery; nothing here
touches Redis, so the checker is tested with synthetic data.

The invariant: **every publish that returned is delivered at least once.** Publishes that raised
are "failed" and may or may not be delivered (the write may have reached Redis before the reply
was lost). Every delivery beyond the first of a message is a duplicate.

The classification itself is the simulator's history checker
(:func:`abe_redis_testing.simulation.check`): :meth:`Ledger.history` hands it what was recorded,
and :func:`tally` reads its categories, so chaos runs and simulated runs judge alike.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from abe_redis_testing.simulation import DEFAULT_FAILING, Handling, History, Verdict, check


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to a handler: ``t`` is seconds since the scenario started."""

    t: float
    consumer: str
    msg: int
    entry_id: str = ""
    delivery_count: int = 1


@dataclass(slots=True)
class Ledger:
    """What one scenario published and received, in scenario time (seconds since start)."""

    published: dict[int, float] = field(default_factory=dict)
    """Message number -> when its publish returned."""
    failed: dict[int, str] = field(default_factory=dict)
    """Message number -> the exception type its publish raised."""
    deliveries: list[Delivery] = field(default_factory=list)
    _undelivered: set[int] = field(default_factory=set)
    _seen: set[int] = field(default_factory=set)

    def publish_returned(self, msg: int, t: float) -> None:
        self.published[msg] = t
        if msg not in self._seen:
            self._undelivered.add(msg)

    def publish_failed(self, msg: int, error: str) -> None:
        self.failed[msg] = error

    def delivered(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._seen.add(delivery.msg)
        self._undelivered.discard(delivery.msg)

    @property
    def outstanding(self) -> int:
        """Publishes that returned and have not been delivered yet."""
        return len(self._undelivered)

    @property
    def undelivered(self) -> frozenset[int]:
        """The message numbers behind :attr:`outstanding`."""
        return frozenset(self._undelivered)

    def history(self) -> History:
        """What was recorded, for the shared checker. A chaos delivery has no handler end (the
        consumer process reports hand-overs only), so concurrency is not judged from it."""
        return History(
            published=dict(self.published),
            failed=dict(self.failed),
            handlings=[
                Handling(d.msg, d.consumer, d.t, None, "", d.entry_id, d.delivery_count)
                for d in self.deliveries
            ],
        )

    def check(self, *, failing: Iterable[str] = DEFAULT_FAILING) -> Verdict:
        return check(self.history(), failing=failing)


@dataclass(frozen=True, slots=True)
class Tally:
    published: int
    """Publishes that returned."""
    failed_publishes: int
    delivered: int
    """Distinct messages delivered (returned or failed publishes)."""
    deliveries: int
    """Every delivery, duplicates included."""
    duplicates: int
    """Deliveries beyond the first of each message."""
    duplicate_entries: int
    """Messages that exist as more than one stream entry (a publish retried after its reply was lost)."""
    lost: int
    lost_ids: tuple[int, ...]
    failed_but_delivered: int
    """Failed publishes whose write reached Redis anyway."""
    unknown: int
    """Delivered message numbers that were never published: must be 0."""
    anomalies: dict[str, int] = field(default_factory=dict)
    """Every non-zero category of the shared history checker (``count_backwards`` ...)."""


def tally(ledger: Ledger, *, max_lost_ids: int = 20) -> Tally:
    verdict = ledger.check()
    counts = Counter(d.msg for d in ledger.deliveries)
    entries: dict[int, set[str]] = {}
    for d in ledger.deliveries:
        entries.setdefault(d.msg, set()).add(d.entry_id)
    lost = verdict.messages.get("lost", ())
    return Tally(
        published=len(ledger.published),
        failed_publishes=len(ledger.failed),
        delivered=len(counts),
        deliveries=sum(counts.values()),
        duplicates=verdict.counts["duplicated"],
        duplicate_entries=sum(1 for ids in entries.values() if len(ids) > 1),
        lost=verdict.counts["lost"],
        lost_ids=tuple(lost[:max_lost_ids]),
        failed_but_delivered=verdict.counts["recovered"],
        unknown=verdict.counts["unexpected"],
        anomalies={name: n for name, n in verdict.counts.items() if n},
    )


@dataclass(frozen=True, slots=True)
class Recovery:
    resume_s: float | None
    """Fault end -> the first delivery after it (None: nothing was delivered after the fault)."""
    drain_s: float | None
    """Fault end -> every publish that returned before the fault ended has been delivered
    (0 when they all were delivered during the fault; None: some never were)."""


def recovery(ledger: Ledger, fault_end: float) -> Recovery:
    first: dict[int, float] = {}
    resume: float | None = None
    for d in ledger.deliveries:
        if d.msg not in first or d.t < first[d.msg]:
            first[d.msg] = d.t
        if d.t >= fault_end and (resume is None or d.t < resume):
            resume = d.t
    before = [msg for msg, t in ledger.published.items() if t <= fault_end]
    drain: float | None = None
    if all(msg in first for msg in before):
        drain = max([0.0, *(first[msg] - fault_end for msg in before)])
    return Recovery(
        resume_s=None if resume is None else round(resume - fault_end, 3),
        drain_s=None if drain is None else round(drain, 3),
    )


def throughput(times: Iterable[float], *, bin_s: float, duration: float) -> list[int]:
    """Events per bin of ``bin_s`` seconds over ``[0, duration)``; later events go to the last bin."""
    bins = [0] * max(1, math.ceil(duration / bin_s))
    for t in times:
        if t < 0:
            continue
        bins[min(len(bins) - 1, int(t / bin_s))] += 1
    return bins


def log_budget(consumers: int, window_s: float) -> int:
    """How many ``abe_redis`` log records an outage of ``window_s`` may cause.

    The backend logs a consumer's connection trouble at most once per 5 s (``_Throttle``), so
    each consumer may log about ``window_s / 5`` repeats plus a first warning and a recovery
    notice (e.g. a claim); the constant absorbs acks retried and group recreation. A hot loop
    logs hundreds.
    """
    return consumers * (math.ceil(window_s / 5.0) + 3) + 10


def first_delivery_after(deliveries: Sequence[Delivery], msg: int, after: float) -> float | None:
    times = [d.t for d in deliveries if d.msg == msg and d.t >= after]
    return min(times) if times else None
