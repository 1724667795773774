"""OpenTelemetry metrics for abe-redis: ``pip install 'abe-redis[otel]'``.

::

    from abe_redis.otel import OpenTelemetryMetrics
    consumer = RedisConsumer(backend, metrics=OpenTelemetryMetrics())

Counters become OpenTelemetry counters named ``abe_redis.<event>`` (``abe_redis.acked``, …) and
``pending`` / ``lag`` become gauges; the event's fields (stream, group, error type) are the
attributes. Only the OpenTelemetry *API* is used: the application's SDK and exporter decide
where the figures go.
"""

from __future__ import annotations

from typing import Any

from .metrics import COUNTERS, GAUGES, FieldValue

__all__ = ["OpenTelemetryMetrics"]

_DESCRIPTIONS = {
    "published": "entries appended to a stream",
    "delivered": "messages handed to a handler, retries included",
    "acked": "messages whose handler returned",
    "retried": "failed handler calls that will be retried",
    "dead_lettered": "messages moved to a dead-letter stream",
    "reclaimed": "messages taken over from a consumer that is gone",
    "trimmed": "entries removed by retention",
    "trimmed_unread": "entries the hard cap removed before a group read them",
    "pending": "entries read by a group and not yet acknowledged",
    "lag": "entries a group has not read yet",
}


class OpenTelemetryMetrics:
    """A :class:`~abe_redis.metrics.MetricsHook` that records into an OpenTelemetry ``Meter``.

    ``meter`` defaults to ``opentelemetry.metrics.get_meter("abe_redis")``. Gauges use the
    synchronous gauge of opentelemetry-api 1.23+ (``create_gauge``).
    """

    def __init__(self, meter: Any = None, *, prefix: str = "abe_redis") -> None:
        if meter is None:
            try:
                from opentelemetry import metrics  # type: ignore[import-not-found,unused-ignore]
            except ImportError as exc:  # pragma: no cover - depends on the extra
                raise ImportError(
                    "OpenTelemetryMetrics needs opentelemetry-api: pip install 'abe-redis[otel]'"
                ) from exc
            meter = metrics.get_meter("abe_redis")
        self._instruments: dict[str, Any] = {}
        for name in sorted(COUNTERS):
            self._instruments[name] = meter.create_counter(
                f"{prefix}.{name}", unit="{entry}", description=_DESCRIPTIONS[name]
            )
        for name in sorted(GAUGES):
            self._instruments[name] = meter.create_gauge(
                f"{prefix}.{name}", unit="{entry}", description=_DESCRIPTIONS[name]
            )

    def event(self, name: str, value: float = 1, **fields: FieldValue) -> None:
        instrument = self._instruments.get(name)
        if instrument is None:
            return
        if name in GAUGES:
            instrument.set(value, attributes=fields)
        else:
            instrument.add(value, attributes=fields)
