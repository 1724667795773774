"""The history checker: what a run published and handled, and what went wrong with it.

Shared by the simulator and the chaos runner. It keeps Jepsen's total-queue categories and adds
the anomalies that matter for Redis Streams consumer groups:

=======================  ===================================================================
``lost``                 a publish that returned was never handled to completion in some group
                         (no handler finished it, and it was not dead-lettered)
``unexpected``           delivered, but never published
``duplicated``           a delivery beyond the first of a message in a group (at-least-once:
                         counted, not failed, by default)
``recovered``            a publish that raised (outcome unknown) was delivered anyway
``stranded``             still pending in a group after the final drain
``concurrently_handled`` two handlers on the same message at the same time, while neither had
                         exceeded the claim timeout and no partition excused it
``falsely_dead_lettered`` dead-lettered before handlers had received it ``max_deliveries`` times,
                         unless cut-off holders account for every missing delivery (below)
``dead_lettered_after_cut_off`` dead-lettered short of ``max_deliveries`` where each missing
                         handler delivery is a count skip made while a holder was cut off
                         (killed, or partitioned past its lease): it could not set back the
                         count of entries it had read but not handed out. The engine's known
                         limit; counted, not failed by default
``count_backwards``      a later delivery of an entry carried a smaller delivery count
``count_skipped``        a delivery count above the number of deliveries a handler saw (the
                         target semantics: only a hand-over to a caller counts)
``crashed``              ``consume()`` raised out of the loop (a consumer died of an error)
=======================  ===================================================================

``lost_to_restart`` is reported, never failed: a publish that reached a server restarted without
persistence before any handler got it is gone by design. What fails is ``failing`` (per
category); the rest are figures.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CATEGORIES",
    "DEFAULT_FAILING",
    "DeadLettered",
    "Handling",
    "History",
    "Verdict",
    "check",
]

CATEGORIES: tuple[str, ...] = (
    "lost",
    "unexpected",
    "duplicated",
    "recovered",
    "stranded",
    "concurrently_handled",
    "falsely_dead_lettered",
    "dead_lettered_after_cut_off",
    "count_backwards",
    "count_skipped",
    "crashed",
    "lost_to_restart",
)
DEFAULT_FAILING: frozenset[str] = frozenset(
    {
        "lost",
        "unexpected",
        "stranded",
        "concurrently_handled",
        "falsely_dead_lettered",
        "count_backwards",
        "crashed",
    }
)
_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class Handling:
    """One message handed to a handler. ``end`` is ``None`` when unknown (the chaos runner
    records hand-overs only) — such handlings are not checked for concurrency."""

    msg: int
    consumer: str
    start: float
    end: float | None = None
    group: str = ""
    entry_id: str = ""
    delivery_count: int | None = None
    outcome: str = "ok"
    """``ok``, ``failed`` (the handler raised), ``killed`` (its process died), ``running``."""


@dataclass(frozen=True, slots=True)
class DeadLettered:
    msg: int
    group: str
    delivery_count: int


@dataclass(slots=True)
class History:
    """Everything recorded in one run, in run time (seconds)."""

    publish_started: dict[int, float] = field(default_factory=dict)
    published: dict[int, float] = field(default_factory=dict)
    """Message number -> when its publish returned."""
    failed: dict[int, str] = field(default_factory=dict)
    """Message number -> the error its publish raised (outcome unknown)."""
    handlings: list[Handling] = field(default_factory=list)
    dead_letters: list[DeadLettered] = field(default_factory=list)
    stranded: list[tuple[str, str]] = field(default_factory=list)
    """(group, entry id) still pending after the final drain."""
    groups: set[str] = field(default_factory=set)
    restarts: list[float] = field(default_factory=list)
    crashes: list[tuple[float, str, str]] = field(default_factory=list)
    """(when, consumer, the error) for every exception ``consume()`` raised."""
    excused: list[tuple[float, float]] = field(default_factory=list)
    """Windows (partitions, crashes) in which a holder may legitimately lose a message to a peer."""


@dataclass(frozen=True, slots=True)
class Verdict:
    counts: Mapping[str, int]
    examples: Mapping[str, tuple[str, ...]]
    failing: frozenset[str]
    messages: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """The message numbers behind each per-message category, sorted."""

    @property
    def failures(self) -> dict[str, int]:
        return {name: n for name, n in self.counts.items() if n and name in self.failing}

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": dict(self.counts),
            "failures": self.failures,
            "examples": {k: list(v) for k, v in self.examples.items() if v},
        }


class _Tally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.messages: dict[str, set[int]] = defaultdict(set)

    def add(self, category: str, example: str, n: int = 1, *, msg: int | None = None) -> None:
        self.counts[category] += n
        if msg is not None:
            self.messages[category].add(msg)
        if len(self.examples[category]) < _EXAMPLES:
            self.examples[category].append(example)


def check(
    history: History,
    *,
    claim_idle_s: float | None = None,
    max_deliveries: int | None = None,
    failing: Iterable[str] = DEFAULT_FAILING,
) -> Verdict:
    """Classify ``history``. Concurrency is checked only with ``claim_idle_s``, false
    dead-lettering only with ``max_deliveries``."""
    failing = frozenset(failing)
    unknown = failing - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown anomaly categories: {sorted(unknown)}; known: {list(CATEGORIES)}")
    tally = _Tally()
    groups = sorted(history.groups | {h.group for h in history.handlings}) or [""]
    by_group: dict[str, dict[int, list[Handling]]] = {g: defaultdict(list) for g in groups}
    for handling in sorted(history.handlings, key=lambda h: (h.start, h.consumer)):
        by_group[handling.group][handling.msg].append(handling)
    dead: dict[str, dict[int, list[DeadLettered]]] = {g: defaultdict(list) for g in groups}
    for letter in history.dead_letters:
        dead.setdefault(letter.group, defaultdict(list))[letter.msg].append(letter)
    known = history.published.keys() | history.failed.keys() | history.publish_started.keys()

    for group in groups:
        handled = by_group[group]
        _lost(history, group, handled, dead[group], tally)
        for msg, handlings in handled.items():
            if msg not in known:
                tally.add("unexpected", f"{group}: message {msg} delivered, never published", msg=msg)
            if len(handlings) > 1:
                tally.add(
                    "duplicated", f"{group}: message {msg} x{len(handlings)}", len(handlings) - 1, msg=msg
                )
            _counts(group, msg, handlings, tally)
            if claim_idle_s is not None:
                # Per entry: a publish retried after a lost reply is two entries of one message,
                # and two consumers may rightly handle one each at the same time.
                by_entry: dict[str, list[Handling]] = defaultdict(list)
                for handling in handlings:
                    by_entry[handling.entry_id].append(handling)
                for same_entry in by_entry.values():
                    _concurrency(history, group, msg, same_entry, claim_idle_s, tally)
        if max_deliveries is not None:
            for msg, letters in dead[group].items():
                seen = len(handled.get(msg, ()))
                if seen >= max_deliveries:
                    continue
                since = history.publish_started.get(msg, history.published.get(msg, 0.0))
                skipped = _skips_while_cut_off(
                    history, handled.get(msg, []), since, letters[0].delivery_count
                )
                if skipped >= max_deliveries - seen:
                    tally.add(
                        "dead_lettered_after_cut_off",
                        f"{group}: message {msg} dead-lettered (count {letters[0].delivery_count}) "
                        f"after {seen} handler deliveries, the rest counted while a holder was cut off",
                        msg=msg,
                    )
                else:
                    tally.add(
                        "falsely_dead_lettered",
                        f"{group}: message {msg} dead-lettered (count {letters[0].delivery_count}) "
                        f"after {seen} handler deliveries, max_deliveries={max_deliveries}",
                    )
    delivered = {h.msg for h in history.handlings}
    for msg in sorted(history.failed):
        if msg in delivered:
            tally.add(
                "recovered", f"message {msg}: publish raised {history.failed[msg]}, delivered anyway", msg=msg
            )
    for t, consumer, error in history.crashes:
        tally.add("crashed", f"{consumer} at {t:.3f}s: {error}")
    for group, entry_id in history.stranded:
        tally.add("stranded", f"{group}: entry {entry_id} pending after the final drain")
    return Verdict(
        counts=tally.counts,
        examples={k: tuple(v) for k, v in tally.examples.items()},
        failing=failing,
        messages={k: tuple(sorted(v)) for k, v in tally.messages.items()},
    )


def _lost(
    history: History,
    group: str,
    handled: Mapping[int, list[Handling]],
    dead: Mapping[int, list[DeadLettered]],
    tally: _Tally,
) -> None:
    for msg in sorted(history.published):
        if msg in dead or any(h.outcome in ("ok", "running") for h in handled.get(msg, ())):
            continue
        started = history.publish_started.get(msg, history.published[msg])
        if any(started <= restart for restart in history.restarts):
            tally.add("lost_to_restart", f"{group}: message {msg} published before a restart", msg=msg)
        else:
            tally.add("lost", f"{group}: message {msg} published at {history.published[msg]:.3f}s", msg=msg)


def _skips_while_cut_off(history: History, handlings: list[Handling], since: float, final: int) -> int:
    """Deliveries counted but never handed to a handler, in gaps (from ``since``, the publish,
    to each handler delivery, then to the dead letter counted ``final``) that overlap a window
    where a holder was cut off. A holder that is killed or partitioned past its lease cannot set
    back the count of what it read but had not handed out, so the peer that takes it over counts
    it once more."""
    skipped = 0
    previous = 0
    start = since
    gaps: list[tuple[int, float, float]] = []
    for handling in handlings:
        count = handling.delivery_count
        if count is None:
            continue
        gaps.append((count - previous - 1, start, handling.start))
        previous = count
        start = handling.start
    # The dead letter itself is taken by a claim that counts once more (past max_deliveries).
    gaps.append((final - previous - 1, start, float("inf")))
    for gap, t_start, t_end in gaps:
        if gap > 0 and any(t0 < t_end and t1 > t_start for t0, t1 in history.excused):
            skipped += gap
    return skipped


def _counts(group: str, msg: int, handlings: list[Handling], tally: _Tally) -> None:
    by_entry: dict[str, list[Handling]] = defaultdict(list)
    for handling in handlings:
        by_entry[handling.entry_id].append(handling)
    for entry_id, seen in by_entry.items():
        highest = 0
        for index, handling in enumerate(seen):
            count = handling.delivery_count
            if count is None:
                continue
            if count < highest:
                tally.add(
                    "count_backwards",
                    f"{group}: message {msg} ({entry_id}) delivery count {count} after {highest}",
                )
            if count > index + 1:
                tally.add(
                    "count_skipped",
                    f"{group}: message {msg} ({entry_id}) delivery count {count} "
                    f"at its handler delivery {index + 1}",
                )
            highest = max(highest, count)


def _concurrency(
    history: History, group: str, msg: int, handlings: list[Handling], claim_idle_s: float, tally: _Tally
) -> None:
    for i, first in enumerate(handlings):
        if first.end is None or first.end - first.start > claim_idle_s:
            continue
        for second in handlings[i + 1 :]:
            if second.start >= first.end:
                break
            if second.end is None or second.end - second.start > claim_idle_s:
                continue
            since = first.start - claim_idle_s
            if any(t0 < second.start and t1 > since for t0, t1 in history.excused):
                continue
            tally.add(
                "concurrently_handled",
                f"{group}: message {msg} handled by {first.consumer} [{first.start:.3f}, {first.end:.3f}] "
                f"and {second.consumer} from {second.start:.3f}",
            )
            return
