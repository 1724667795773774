"""The metrics hook: the in-memory hook, a broken hook, and the OpenTelemetry adapter."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from abe_redis import InMemoryMetrics, MetricsHook
from abe_redis.metrics import COUNTERS, GAUGES, NULL_METRICS, emit
from abe_redis.otel import OpenTelemetryMetrics


def test_in_memory_metrics_sums_counters_and_keeps_the_last_gauge() -> None:
    metrics = InMemoryMetrics()
    emit(metrics, "acked", stream="a", group="g")
    emit(metrics, "acked", stream="b", group="g")
    emit(metrics, "trimmed", 5, stream="a")
    emit(metrics, "pending", 7, stream="a", group="g")
    emit(metrics, "pending", 3, stream="a", group="g")
    assert metrics.total("acked") == 2
    assert metrics.total("acked", stream="a") == 1
    assert metrics.total("trimmed") == 5
    assert metrics.gauge("pending", stream="a", group="g") == 3
    assert isinstance(metrics, MetricsHook) and isinstance(NULL_METRICS, MetricsHook)


def test_a_raising_hook_is_logged_once_and_never_breaks_delivery(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def event(self, name: str, value: float = 1, **fields: Any) -> None:
            raise RuntimeError("exporter down")

    hook = Broken()
    with caplog.at_level(logging.WARNING, logger="abe_redis"):
        emit(hook, "acked", stream="s")
        emit(hook, "acked", stream="s")
    assert len([r for r in caplog.records if "metrics hook" in r.getMessage()]) == 1


class FakeInstrument:
    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        self.calls: list[tuple[float, dict[str, Any]]] = []

    def add(self, value: float, attributes: dict[str, Any]) -> None:
        assert self.kind == "counter"
        self.calls.append((value, attributes))

    def set(self, value: float, attributes: dict[str, Any]) -> None:
        assert self.kind == "gauge"
        self.calls.append((value, attributes))


class FakeMeter:
    """The two calls of opentelemetry-api's Meter that the adapter uses."""

    def __init__(self) -> None:
        self.instruments: dict[str, FakeInstrument] = {}

    def create_counter(self, name: str, unit: str = "", description: str = "") -> FakeInstrument:
        self.instruments[name] = FakeInstrument("counter", name)
        return self.instruments[name]

    def create_gauge(self, name: str, unit: str = "", description: str = "") -> FakeInstrument:
        self.instruments[name] = FakeInstrument("gauge", name)
        return self.instruments[name]


def test_open_telemetry_adapter_records_counters_and_gauges_with_attributes() -> None:
    meter = FakeMeter()
    hook = OpenTelemetryMetrics(meter)
    assert set(meter.instruments) == {f"abe_redis.{n}" for n in COUNTERS | GAUGES}
    hook.event("dead_lettered", stream="orders", group="g", error_type="ValueError")
    hook.event("lag", 42, stream="orders", group="g")
    hook.event("not-a-metric")
    assert meter.instruments["abe_redis.dead_lettered"].calls == [
        (1, {"stream": "orders", "group": "g", "error_type": "ValueError"})
    ]
    assert meter.instruments["abe_redis.lag"].calls == [(42, {"stream": "orders", "group": "g"})]


def test_pipeline_errors_lose_the_payload_redis_py_put_into_them() -> None:
    from redis.exceptions import ResponseError

    from abe_redis._scrub import scrub_pipeline_error

    exc = ResponseError(
        'Command # 1 (XADD k * payload {"card": "4111 1111 1111 1111"}) of pipeline caused error: '
        "('WRONGTYPE Operation against a key holding the wrong kind of value',)"
    )
    text = str(scrub_pipeline_error(exc))
    assert "4111" not in text and "payload" not in text
    assert text.startswith("Command # 1 (XADD …)") and "WRONGTYPE" in text
    assert str(scrub_pipeline_error(ResponseError("plain error"))) == "plain error"
