"""RedisConsumer: retries, dead letters, heartbeats, concurrency, drain, crashes, sync handlers."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from abe_redis import (
    ConfigurationError,
    DeadLetters,
    InMemoryMetrics,
    InvalidKeyError,
    PermanentError,
    ReceivedMessage,
    RedisConsumer,
)
from abe_redis_testing import RedisBackendFactory
from abe_redis_testing._timings import FAST_SETTINGS
from abe_redis_testing.servers import RedisEndpoint

WAIT_S = 15.0


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, wait_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + wait_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {wait_s}s waiting for {what}")
        await asyncio.sleep(0.02)


async def pending(client: Any, stream: str, group: str) -> int:
    return int((await client.xpending(stream, group))["pending"])


class Running:
    """A consumer's run() in a task, stopped and awaited at the end of the test."""

    def __init__(self, consumer: RedisConsumer, handler: Any) -> None:
        self.consumer = consumer
        self.task = asyncio.create_task(consumer.run(handler))

    async def stop(self) -> None:
        await asyncio.wait_for(self.consumer.shutdown(), WAIT_S)
        await asyncio.wait_for(self.task, WAIT_S)


async def test_failing_handler_is_retried_with_the_configured_delays_then_dead_lettered(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory(max_deliveries=4)
    await backend.publish("jobs", {"n": 1})
    await backend.publish("jobs", {"n": 2})
    calls: list[tuple[int, int, float]] = []

    async def handler(message: ReceivedMessage) -> None:
        calls.append((message["n"], message.delivery_count, time.monotonic()))
        if message["n"] == 1:
            raise RuntimeError("card declined")

    consumer = RedisConsumer(backend, group="g", retry_delay_s=0.1, retry_max_delay_s=0.25, jitter=0)
    running = Running(consumer, handler)
    dead = DeadLetters(backend)
    await wait_until(lambda: _count_is(dead, "jobs", 1), "the dead letter")
    await running.stop()

    failing = [c for c in calls if c[0] == 1]
    assert [c[1] for c in failing] == [1, 2, 3, 4]  # the delivery count is the attempt number
    gaps = [b[2] - a[2] for a, b in itertools.pairwise(failing)]
    for gap, expected in zip(gaps, [0.1, 0.2, 0.25], strict=True):  # 0.1 * 2**n, capped at 0.25
        assert expected <= gap < expected + 0.5, (gaps, expected)
    assert [c[0] for c in calls].count(2) == 1  # the good message flowed meanwhile, once
    [letter] = await dead.entries("jobs")
    assert letter.payload == {"n": 1}
    assert letter.error_type == "RuntimeError"
    assert "card declined" in letter.reason and "4 of 4 attempts" in letter.reason
    assert letter.delivery_count == 4
    assert letter.consumer and letter.group == "g" and letter.dead_lettered_at_ms > 0
    assert await pending(queue_backend_factory.client(), "jobs", "g") == 0


async def _count_is(dead: DeadLetters, key: str, n: int) -> bool:
    return await dead.count(key) == n


async def test_waiting_retry_does_not_block_other_messages_with_concurrency_one(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory()
    await backend.publish("q", {"n": 0})
    for n in range(1, 6):
        await backend.publish("q", {"n": n})
    order: list[tuple[int, int]] = []

    async def handler(message: ReceivedMessage) -> None:
        order.append((message["n"], message.delivery_count))
        if message["n"] == 0 and message.delivery_count == 1:
            raise RuntimeError("transient")

    consumer = RedisConsumer(backend, group="g", concurrency=1, retry_delay_s=0.3, jitter=0)
    running = Running(consumer, handler)
    await wait_until(lambda: asyncio.sleep(0, len(order) >= 7), "all handlers")
    await running.stop()
    # The retry of message 0 came after the five others: they ran during its delay.
    assert order[0] == (0, 1)
    assert order[-1] == (0, 2)
    assert sorted(n for n, _ in order[1:-1]) == [1, 2, 3, 4, 5]


async def test_a_shutdown_that_only_releases_a_retry_wait_says_so_and_no_timeout(
    fake_backend_factory: RedisBackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    backend = fake_backend_factory()
    await backend.publish("q", {"n": 1})
    attempts: list[int] = []

    async def handler(message: ReceivedMessage) -> None:
        attempts.append(message.delivery_count)
        raise RuntimeError("transient")

    consumer = RedisConsumer(backend, group="g", retry_delay_s=30, jitter=0)
    running = Running(consumer, handler)
    await wait_until(lambda: asyncio.sleep(0, attempts == [1]), "the first attempt")
    with caplog.at_level("WARNING", logger="abe_redis"):
        await running.stop()
    [line] = [r.getMessage() for r in caplog.records if "stopping" in r.getMessage()]
    assert "1 message(s) waited for a retry" in line
    # No handler was running: the grace period did not run out, so it is not mentioned.
    assert "did not finish" not in line


@pytest.mark.parametrize("how", ["PermanentError", "permanent=(ValueError,)"])
async def test_permanent_error_is_dead_lettered_at_once(
    queue_backend_factory: RedisBackendFactory, how: str
) -> None:
    backend = queue_backend_factory()
    await backend.publish("jobs", {"n": 1})
    calls = 0

    class Unprocessable(PermanentError):
        pass

    async def handler(message: ReceivedMessage) -> None:
        nonlocal calls
        calls += 1
        if how == "PermanentError":
            raise Unprocessable("schema v1 is no longer accepted")
        raise ValueError("bad amount")

    consumer = RedisConsumer(backend, group="g", permanent=(ValueError,), retry_delay_s=5)
    running = Running(consumer, handler)
    dead = DeadLetters(backend)
    await wait_until(lambda: _count_is(dead, "jobs", 1), "the dead letter")
    await running.stop()
    assert calls == 1
    [letter] = await dead.entries("jobs")
    assert letter.delivery_count == 1
    assert "permanent error" in letter.reason
    assert letter.error_type.endswith("Unprocessable" if how == "PermanentError" else "ValueError")


async def test_attempt_count_survives_a_restart(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory(max_deliveries=3)
    await backend.publish("jobs", {"n": 1})
    seen: list[int] = []
    failed = asyncio.Event()

    async def failing(message: ReceivedMessage) -> None:
        seen.append(message.delivery_count)
        failed.set()
        raise RuntimeError("down")

    first = Running(RedisConsumer(backend, group="g", retry_delay_s=60), failing)
    await asyncio.wait_for(failed.wait(), WAIT_S)
    await first.stop()  # stops while the message waits out its 60 s delay: released, attempt kept

    second = Running(RedisConsumer(queue_backend_factory(max_deliveries=3), group="g", jitter=0), failing)
    dead = DeadLetters(backend)
    await wait_until(lambda: _count_is(dead, "jobs", 1), "the dead letter")
    await second.stop()
    assert seen[0] == 1
    assert seen[1:] == [2, 3]  # the restart went on from attempt 2, and stopped at max_attempts=3


async def test_handler_running_three_claim_timeouts_is_not_redelivered(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    claim_idle_ms = FAST_SETTINGS["claim_idle_ms"]
    backend = queue_backend_factory()
    await backend.publish("slow", {"n": 1})
    calls: list[tuple[str, int]] = []
    started = asyncio.Event()

    async def slow(message: ReceivedMessage) -> None:
        calls.append(("slow", message.delivery_count))
        started.set()
        await asyncio.sleep(3 * claim_idle_ms / 1000)

    async def peer(message: ReceivedMessage) -> None:
        calls.append(("peer", message.delivery_count))

    worker = Running(RedisConsumer(backend, group="g"), slow)
    await asyncio.wait_for(started.wait(), WAIT_S)
    # A peer sweeping for idle entries the whole time must not get it.
    rival = Running(RedisConsumer(queue_backend_factory(), group="g"), peer)
    client = queue_backend_factory.client()
    await wait_until(lambda: _is_zero(pending(client, "slow", "g")), "the slow handler's ack")
    await rival.stop()
    await worker.stop()
    assert calls == [("slow", 1)]


async def _is_zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def test_concurrency_overlaps_handlers(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory()
    for n in range(8):
        await backend.publish("work", {"n": n})
    active = 0
    peak = 0
    all_in = asyncio.Event()
    spans: list[tuple[float, float]] = []

    async def handler(message: ReceivedMessage) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        began = time.monotonic()
        if peak == 8:
            all_in.set()
        await asyncio.sleep(0.1)
        spans.append((began, time.monotonic()))
        active -= 1

    running = Running(RedisConsumer(backend, group="g", concurrency=8), handler)
    await asyncio.wait_for(all_in.wait(), WAIT_S)
    await wait_until(lambda: asyncio.sleep(0, len(spans) == 8), "eight handlers")
    await running.stop()
    assert peak == 8
    # Every handler started before any had finished: they overlapped, not ran one by one.
    assert max(b for b, _ in spans) < min(e for _, e in spans)


async def test_concurrency_is_a_bound(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory()
    for n in range(12):
        await backend.publish("work", {"n": n})
    active = 0
    peak = 0
    done = 0

    async def handler(message: ReceivedMessage) -> None:
        nonlocal active, peak, done
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        done += 1

    running = Running(RedisConsumer(backend, group="g", concurrency=3), handler)
    await wait_until(lambda: asyncio.sleep(0, done == 12), "twelve handlers")
    await running.stop()
    assert peak == 3


async def test_sync_handlers_run_in_their_own_thread_pool(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory()
    for n in range(4):
        await backend.publish("sync", {"n": n})
    barrier = threading.Barrier(4, timeout=WAIT_S)
    threads: set[str] = set()
    handled: list[int] = []
    lock = threading.Lock()

    def handler(message: ReceivedMessage) -> None:  # plain def: blocking is fine here
        barrier.wait()  # only passes if four run at once, each in a thread
        with lock:
            threads.add(threading.current_thread().name)
            handled.append(message["n"])

    running = Running(RedisConsumer(backend, group="g", concurrency=4), handler)
    await wait_until(lambda: asyncio.sleep(0, len(handled) == 4), "four sync handlers")
    await running.stop()
    assert sorted(handled) == [0, 1, 2, 3]
    assert len(threads) == 4 and all(t.startswith("abe-redis-g") for t in threads)
    await wait_until(lambda: _is_zero(pending(queue_backend_factory.client(), "sync", "g")), "acks")


async def test_shutdown_during_fifty_in_flight_handlers_loses_nothing_and_acks_nothing_unfinished(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory()
    for n in range(50):
        await backend.publish("inflight", {"n": n})
    release_even = asyncio.Event()
    started: set[int] = set()
    finished: set[int] = set()

    async def handler(message: ReceivedMessage) -> None:
        started.add(message["n"])
        if message["n"] % 2:
            await asyncio.sleep(3600)  # odd ones never finish
        await release_even.wait()
        await asyncio.sleep(0.05 * (message["n"] % 3))
        finished.add(message["n"])

    consumer = RedisConsumer(backend, group="g", concurrency=50, shutdown_grace_s=1.0)
    running = Running(consumer, handler)
    await wait_until(lambda: asyncio.sleep(0, len(started) == 50), "fifty handlers in flight")
    release_even.set()
    stopped = time.monotonic()
    await running.stop()
    assert time.monotonic() - stopped < 1.0 + 2.0  # the grace period, plus closing
    assert finished == set(range(0, 50, 2))

    client = queue_backend_factory.client()
    assert await pending(client, "inflight", "g") == 25  # the unfinished: never acknowledged
    # They were released: another consumer gets exactly them, each handed out once before.
    rescued: list[tuple[int, int]] = []

    async def rescue(message: ReceivedMessage) -> None:
        rescued.append((message["n"], message.delivery_count))

    after = Running(RedisConsumer(queue_backend_factory(), group="g"), rescue)
    await wait_until(lambda: asyncio.sleep(0, len(rescued) == 25), "the released messages")
    await after.stop()
    assert sorted(rescued) == [(n, 2) for n in range(1, 50, 2)]
    assert await pending(client, "inflight", "g") == 0


async def test_replay_delivers_dead_letters_once(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory()
    for n in range(3):
        await backend.publish("orders", {"n": n})
    broken = True
    handled: list[int] = []

    async def handler(message: ReceivedMessage) -> None:
        if broken:
            raise PermanentError("downstream rejected it")
        handled.append(message["n"])

    dead = DeadLetters(backend)
    first = Running(RedisConsumer(backend, group="g"), handler)
    await wait_until(lambda: _count_is(dead, "orders", 3), "three dead letters")
    await first.stop()
    broken = False
    # Two replays of the same entries at once: each dead letter is delivered once.
    counts = await asyncio.gather(
        dead.replay("orders"), DeadLetters(queue_backend_factory()).replay("orders")
    )
    assert sum(counts) == 3
    second = Running(RedisConsumer(queue_backend_factory(), group="g"), handler)
    await wait_until(lambda: asyncio.sleep(0, len(handled) >= 3), "the replayed messages")
    await asyncio.sleep(0.3)  # would let a duplicate arrive
    await second.stop()
    assert sorted(handled) == [0, 1, 2]
    assert await dead.count("orders") == 0


async def test_metrics_hook_sees_every_event(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory(retention_interval_ms=100)
    metrics = InMemoryMetrics()
    backend.metrics = metrics  # publish, consume() and consumers of this backend report here
    for n in range(3):
        await backend.publish("m", {"n": n})
    assert metrics.total("published", stream="m") == 3

    async def handler(message: ReceivedMessage) -> None:
        if message["n"] == 0:
            raise RuntimeError("always")

    consumer = RedisConsumer(backend, group="g", max_attempts=2, retry_delay_s=0.01, jitter=0)
    running = Running(consumer, handler)
    await wait_until(lambda: asyncio.sleep(0, metrics.total("dead_lettered") == 1), "the dead letter")
    await wait_until(lambda: asyncio.sleep(0, metrics.total("trimmed", stream="m") == 3), "retention")
    # Gauges come from the periodic retention pass: wait for one that ran after the last ack.
    await wait_until(
        lambda: asyncio.sleep(0, metrics.gauge("pending", stream="m", group="g") == 0), "pending back to 0"
    )
    await running.stop()
    assert metrics.total("delivered", stream="m", group="g") == 4  # 3 + one retry
    assert metrics.total("acked", stream="m", group="g") == 2
    assert metrics.total("retried", stream="m", group="g", attempt=1) == 1
    assert metrics.total("dead_lettered", stream="m", group="g", error_type="RuntimeError") == 1
    assert metrics.gauge("pending", stream="m", group="g") == 0
    assert metrics.gauge("lag", stream="m", group="g") == 0
    # A message held by a consumer that is gone is reclaimed by a peer's sweep.
    await backend.publish("m", {"n": 9})
    abandoned = queue_backend_factory(consumer_name="gone").consume(group="g")
    [message] = [await anext(abandoned)]
    assert message["n"] == 9
    peer = Running(RedisConsumer(backend, group="g"), handler)
    await abandoned.aclose()  # closing releases it: the peer takes it over at once
    await wait_until(lambda: asyncio.sleep(0, metrics.total("reclaimed", stream="m") == 1), "a reclaim")
    await wait_until(lambda: asyncio.sleep(0, metrics.total("acked") == 3), "its ack")
    await peer.stop()
    assert {name for name, _, _ in metrics.events} == {
        "published",
        "delivered",
        "acked",
        "retried",
        "dead_lettered",
        "reclaimed",
        "trimmed",
        "pending",
        "lag",
    }  # trimmed_unread: see test_retention


def test_settings_are_validated(fake_backend_factory: RedisBackendFactory) -> None:
    backend = fake_backend_factory(max_deliveries=3)
    with pytest.raises(ConfigurationError, match="max_attempts"):
        RedisConsumer(backend, max_attempts=4)
    with pytest.raises(ConfigurationError, match="concurrency"):
        RedisConsumer(backend, concurrency=0)
    with pytest.raises(ConfigurationError, match="permanent"):
        RedisConsumer(backend, permanent=("ValueError",))  # type: ignore[arg-type]
    consumer = RedisConsumer.from_env(
        {"REDIS_URL": "redis://localhost:1/0", "REDIS_CONSUMER_CONCURRENCY": "7", "REDIS_MAX_ATTEMPTS": "2"}
    )
    assert consumer.concurrency == 7 and consumer.max_attempts == 2 and consumer.sync_handler_threads == 7


# -- other processes ---------------------------------------------------------------------------

SCRIPT = Path(__file__).with_name("consumer_script.py")


def _spawn(endpoint: RedisEndpoint, handler_s: float) -> subprocess.Popen[str]:
    settings = {**FAST_SETTINGS, "url": endpoint.url, "group": "g", "handler_s": handler_s}
    env = {**os.environ, "ABE_REDIS_TEST_CONSUMER": json.dumps(settings)}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT)], stdout=subprocess.PIPE, text=True, env=env, cwd=Path.cwd()
    )


async def _line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), WAIT_S)
    assert line, f"the consumer process ended (exit {process.poll()})"
    return line.strip()


@pytest.mark.abe_redis_targets("redis")
async def test_kill_9_mid_handler_another_process_finishes_the_work(
    queue_backend_factory: RedisBackendFactory, redis_server: RedisEndpoint
) -> None:
    backend = queue_backend_factory()
    await backend.publish("crash", {"n": 1})
    victim = _spawn(redis_server, handler_s=3600)
    try:
        assert await _line(victim) == "ready"
        assert await _line(victim) == "start 1"
        victim.send_signal(signal.SIGKILL)
        victim.wait(WAIT_S)
    finally:
        victim.kill()
    # Another process (this one) takes it over once the claim timeout has passed.
    handled: list[tuple[int, int]] = []

    async def handler(message: ReceivedMessage) -> None:
        handled.append((message["n"], message.delivery_count))

    rescuer = Running(RedisConsumer(queue_backend_factory(), group="g"), handler)
    await wait_until(lambda: asyncio.sleep(0, bool(handled)), "the rescued message")
    await rescuer.stop()
    assert handled == [(1, 2)]
    assert await pending(queue_backend_factory.client(), "crash", "g") == 0


@pytest.mark.abe_redis_targets("redis")
async def test_sigterm_lets_the_running_handler_finish_and_acknowledges_it(
    queue_backend_factory: RedisBackendFactory, redis_server: RedisEndpoint
) -> None:
    backend = queue_backend_factory()
    await backend.publish("term", {"n": 1})
    process = _spawn(redis_server, handler_s=0.5)
    try:
        assert await _line(process) == "ready"
        assert await _line(process) == "start 1"
        process.send_signal(signal.SIGTERM)
        assert await _line(process) == "sigterm"
        assert await _line(process) == "end 1"
        assert await _line(process) == "stopped"
        assert await asyncio.to_thread(process.wait, WAIT_S) == 0
    finally:
        process.kill()
    assert await pending(queue_backend_factory.client(), "term", "g") == 0


@pytest.mark.abe_redis_targets("redis")
async def test_dlq_cli_counts_pages_and_purges_single_dead_letters(
    queue_backend_factory: RedisBackendFactory,
    redis_server: RedisEndpoint,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from abe_redis.cli import main

    backend = queue_backend_factory()
    for n in range(3):
        await backend.publish("cli", {"n": n})

    async def handler(message: ReceivedMessage) -> None:
        raise PermanentError("no")

    dead = DeadLetters(backend)
    running = Running(RedisConsumer(backend, group="g"), handler)
    await wait_until(lambda: _count_is(dead, "cli", 3), "three dead letters")
    await running.stop()
    letters = await dead.entries("cli")
    url = ["--url", redis_server.url]
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["dlq", "count", "cli", *url]) == 0
    assert capsys.readouterr().out.strip() == "3"
    assert await asyncio.to_thread(main, ["dlq", "list", "cli", "--after", letters[0].id, *url]) == 0
    listed = capsys.readouterr().out
    assert letters[0].id not in listed and letters[1].id in listed and letters[2].id in listed
    assert await asyncio.to_thread(main, ["dlq", "purge", "cli", "--id", letters[1].id, *url]) == 0
    assert [letter.id for letter in await dead.entries("cli")] == [letters[0].id, letters[2].id]


async def test_a_failure_to_record_a_dead_letter_releases_the_message_for_another_try(
    queue_backend_factory: RedisBackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from abe_redis._delivery import GroupReader

    backend = queue_backend_factory()
    await backend.publish("flaky", {"n": 1})
    real = GroupReader.dead_letter
    refusals = 0

    async def refuse_once(self: GroupReader, *args: Any, **kwargs: Any) -> None:
        nonlocal refusals
        if not refusals:
            refusals += 1
            raise RedisConnectionError("connection reset")
        await real(self, *args, **kwargs)

    monkeypatch.setattr(GroupReader, "dead_letter", refuse_once)
    calls: list[int] = []

    async def handler(message: ReceivedMessage) -> None:
        calls.append(message.delivery_count)
        raise PermanentError("no")

    dead = DeadLetters(backend)
    running = Running(RedisConsumer(backend, group="g"), handler)
    await wait_until(lambda: _count_is(dead, "flaky", 1), "the dead letter, written on the second try")
    await running.stop()
    assert len(calls) == 2  # released after the failed write, then taken and handled again


async def test_a_replay_to_a_key_of_another_type_is_refused_and_keeps_the_dead_letter(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory()
    await backend.publish("secrets", {"card": "4111 1111 1111 1111"})

    async def handler(message: ReceivedMessage) -> None:
        raise PermanentError("no")

    dead = DeadLetters(backend)
    running = Running(RedisConsumer(backend, group="g"), handler)
    await wait_until(lambda: _count_is(dead, "secrets", 1), "the dead letter")
    await running.stop()
    client: Any = queue_backend_factory.client()
    await client.set("not-a-stream", "x")
    with pytest.raises(InvalidKeyError, match="holds a Redis string") as caught:
        await dead.replay("secrets", to="not-a-stream")
    assert "4111" not in str(caught.value)
    assert await dead.count("secrets") == 1  # nothing half-done: the dead letter is still there


@pytest.mark.abe_redis_targets("redis")
async def test_a_second_sigterm_stops_at_once_and_releases_the_unfinished_message(
    queue_backend_factory: RedisBackendFactory, redis_server: RedisEndpoint
) -> None:
    backend = queue_backend_factory()
    await backend.publish("term2", {"n": 1})
    process = _spawn(redis_server, handler_s=3600)
    try:
        assert await _line(process) == "ready"
        assert await _line(process) == "start 1"
        process.send_signal(signal.SIGTERM)  # the handler would need an hour: the grace is 30 s
        assert await _line(process) == "sigterm"
        process.send_signal(signal.SIGTERM)
        assert await _line(process) == "stopped"
        assert await asyncio.to_thread(process.wait, WAIT_S) == 0
    finally:
        process.kill()
    client: Any = queue_backend_factory.client()
    assert await pending(client, "term2", "g") == 1  # not acknowledged: it never finished
    handled: list[tuple[int, int]] = []

    async def handler(message: ReceivedMessage) -> None:
        handled.append((message["n"], message.delivery_count))

    rescuer = Running(RedisConsumer(queue_backend_factory(), group="g"), handler)
    await wait_until(lambda: asyncio.sleep(0, bool(handled)), "the released message")
    await rescuer.stop()
    assert handled == [(1, 2)]


async def test_shutdown_awaited_inside_a_handler_returns_at_once_and_acknowledges_it(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """The README's "until consumer.shutdown()": a handler that decides to stop must not stall
    the drain that waits for it, and its own message is acknowledged."""
    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    await backend.publish("stop", {"n": 1})
    consumer = RedisConsumer(backend, group="g", shutdown_grace_s=30)

    async def handler(message: ReceivedMessage) -> None:
        await consumer.shutdown()

    started = time.monotonic()
    await asyncio.wait_for(consumer.run(handler), 10)
    assert time.monotonic() - started < 5
    assert await pending(client, "stop", "g") == 0
