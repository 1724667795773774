"""Counters and gauges through one small hook.

Everything that happens to a message is reported as ``hook.event(name, value, **fields)``:

=================  =======  =================================================================
name               kind     fields / meaning
=================  =======  =================================================================
``published``      counter  ``stream``: an entry was appended
``delivered``      counter  ``stream``, ``group``: a message was handed to a handler (retries too)
``acked``          counter  ``stream``, ``group``: a handler returned; the ack is queued
``retried``        counter  ``stream``, ``group``, ``attempt``: a failed handler will run again
``dead_lettered``  counter  ``stream``, ``group``, ``error_type``: moved to the dead letters
``reclaimed``      counter  ``stream``, ``group``: taken over from a consumer that is gone or idle
``trimmed``        counter  ``stream``: entries removed by retention (every group had acked them)
``trimmed_unread`` counter  ``stream``, ``group``: entries the hard cap removed before that group
                            read them — data loss, also logged at WARNING
``pending``        gauge    ``stream``, ``group``: entries read but not acknowledged
``lag``            gauge    ``stream``, ``group``: entries not yet read by the group
=================  =======  =================================================================

Fields never carry payload text. A hook must be cheap and must not raise: it is called inline,
on the consumer's event loop (a raising hook is logged once and otherwise ignored).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Protocol, runtime_checkable

__all__ = [
    "COUNTERS",
    "GAUGES",
    "NULL_METRICS",
    "InMemoryMetrics",
    "MetricsHook",
    "emit",
]

log = logging.getLogger("abe_redis")

COUNTERS = frozenset(
    {"published", "delivered", "acked", "retried", "dead_lettered", "reclaimed", "trimmed", "trimmed_unread"}
)
GAUGES = frozenset({"pending", "lag"})

FieldValue = str | int


@runtime_checkable
class MetricsHook(Protocol):
    """Receives every event; ``value`` is the increment of a counter or the level of a gauge."""

    def event(self, name: str, value: float = 1, **fields: FieldValue) -> None: ...


class _NullMetrics:
    def event(self, name: str, value: float = 1, **fields: FieldValue) -> None:
        return None


NULL_METRICS: MetricsHook = _NullMetrics()
"""The default hook: does nothing."""

_warned: set[int] = set()


def emit(hook: MetricsHook, name: str, value: float = 1, **fields: FieldValue) -> None:
    """Call ``hook`` without letting a broken hook break delivery."""
    try:
        hook.event(name, value, **fields)
    except Exception as exc:
        if id(hook) not in _warned:
            _warned.add(id(hook))
            log.warning(
                "metrics hook %s raised %s on %r; further errors of this hook are not logged",
                type(hook).__name__,
                type(exc).__name__,
                name,
            )


class InMemoryMetrics:
    """A hook that keeps counters and the last gauge values in memory, keyed by name and fields.

    Useful in tests, in ``abe-redis`` tooling and as a template for a real exporter::

        metrics = InMemoryMetrics()
        consumer = RedisConsumer(backend, metrics=metrics)
        ...
        metrics.total("acked")  # every acked message, across streams and groups
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: Counter[tuple[str, tuple[tuple[str, FieldValue], ...]]] = Counter()
        self.gauges: dict[tuple[str, tuple[tuple[str, FieldValue], ...]], float] = {}
        self.events: list[tuple[str, float, dict[str, FieldValue]]] = []

    def event(self, name: str, value: float = 1, **fields: FieldValue) -> None:
        key = (name, tuple(sorted(fields.items())))
        with self._lock:
            self.events.append((name, value, dict(fields)))
            if name in GAUGES:
                self.gauges[key] = value
            else:
                self.counters[key] += value  # type: ignore[assignment]

    def total(self, name: str, **fields: FieldValue) -> float:
        """Sum of counter ``name`` over every series whose fields include ``fields``."""
        wanted = set(fields.items())
        with self._lock:
            return sum(v for (n, f), v in self.counters.items() if n == name and wanted <= set(f))

    def gauge(self, name: str, **fields: FieldValue) -> float | None:
        with self._lock:
            return self.gauges.get((name, tuple(sorted(fields.items()))))
