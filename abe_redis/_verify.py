"""``abe-redis verify``: publish a batch through the real backend and prove none of it is lost.

Everything it writes lives under a per-run namespace (its own keys, registry and group) and is
deleted afterwards, so it is safe to point at a server that applications use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis

from ._backend import RedisStreamsBackend
from ._cli_common import CliError, connection_environment
from ._config import RedisConfig

BackendFactory = Callable[..., RedisStreamsBackend]


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class VerifyReport:
    target: str
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


FAKE_NEEDS_EXTRA = (
    "verify without --url or REDIS_URL runs on the embedded fake, which needs the testing extra: "
    "pip install 'abe-redis[testing]'"
)


def fake_client() -> Redis:
    try:
        import fakeredis
    except ImportError:
        raise CliError(FAKE_NEEDS_EXTRA) from None
    # A blocking pool, as the real backend uses: the fake's default pool refuses a burst.
    client: Redis = fakeredis.FakeAsyncRedis(connection_pool_class=BlockingConnectionPool, max_connections=10)
    return client


def verify_config(url: str | None, ns: str, environ: Mapping[str, str] | None = None) -> RedisConfig:
    """The run's settings: connection settings from the environment (password, TLS, pool), and a
    namespace of its own for everything else, whatever the environment says about streams."""
    env = connection_environment(environ)
    env.pop("REDIS_URL", None)
    return RedisConfig.from_env(
        env,
        # The fake is handed its client; this URL only has to be valid.
        url=url or "redis://embedded-fake/0",
        # Every key the backend keeps for itself (registry, consumer records) under the run's name.
        key_prefix=f"{ns}:backend:",
        consumer_group=f"{ns}:group",
        block_ms=100,
        discovery_interval_ms=100,
        claim_idle_ms=300,
        claim_interval_ms=100,
        max_deliveries=3,
    )


async def run_verify(
    *,
    url: str | None,
    count: int = 1000,
    keys: int = 4,
    consumers: int = 2,
    wait_s: float = 30.0,
    progress: Callable[[str], None] = lambda _: None,
    environ: Mapping[str, str] | None = None,
) -> VerifyReport:
    """Run the checks on ``url`` (None: the embedded fake); connection settings other than the
    URL come from ``environ`` (default: the process environment)."""
    ns = f"abe-redis-verify:{uuid.uuid4().hex[:10]}"
    base = verify_config(url, ns, environ)
    client = fake_client() if url is None else None
    target = "in-memory fake (fakeredis)" if url is None else base.redacted_url

    def backend(**overrides: Any) -> RedisStreamsBackend:
        return RedisStreamsBackend(base.with_overrides(**overrides), client=client)

    checks: list[CheckResult] = []
    owner = backend()
    try:
        progress("delivery: publish and consume in competing consumers")
        checks.append(await _check_delivery(backend, ns, count, keys, consumers, wait_s))
        progress("redelivery: a consumer leaves mid-handler")
        checks.append(await _check_redelivery(backend, ns, wait_s))
        progress("poison: a non-JSON entry is dead-lettered")
        checks.append(await _check_poison(backend, ns, wait_s))
    finally:
        await _cleanup(owner.client, ns)
        await owner.aclose()
        if client is not None:
            await client.aclose()
    return VerifyReport(target=target, checks=checks)


async def _check_delivery(
    backend: BackendFactory, ns: str, count: int, keys: int, consumers: int, wait_s: float
) -> CheckResult:
    publisher = backend()
    sent = [
        {"n": i, "key": f"{ns}:k{i % keys}", "text": "héllo ✓", "nested": {"list": [i, None, True]}}
        for i in range(count)
    ]
    started = time.perf_counter()
    await asyncio.gather(*(publisher.publish(str(p["key"]), p) for p in sent))
    publish_s = time.perf_counter() - started

    seen: Counter[int] = Counter()
    mismatched = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal mismatched
        stream = backend().consume()
        try:
            async for message in stream:
                n = int(message["n"])
                if dict(message) != sent[n]:
                    mismatched += 1
                seen[n] += 1
                if len(seen) >= count:
                    done.set()
        finally:
            await stream.aclose()

    started = time.perf_counter()
    tasks = [asyncio.create_task(consume()) for _ in range(consumers)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), wait_s)
    consume_s = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lost = count - len(seen)
    duplicates = sum(seen.values()) - len(seen)
    ok = lost == 0 and mismatched == 0 and duplicates == 0
    return CheckResult(
        "delivery",
        ok,
        f"{count} published to {keys} keys, {len(seen)} delivered to {consumers} consumers, "
        f"{lost} lost, {duplicates} duplicates, {mismatched} altered",
        publish_s + consume_s,
        {
            "published": count,
            "delivered": len(seen),
            "lost": lost,
            "duplicates": duplicates,
            "publish_per_s": count / publish_s if publish_s else 0.0,
            "consume_per_s": len(seen) / consume_s if consume_s else 0.0,
        },
    )


async def _check_redelivery(backend: BackendFactory, ns: str, wait_s: float) -> CheckResult:
    key = f"{ns}:redelivery"
    # A registry of its own: the delivery check's consumers left their last messages in flight
    # (as any consumer that leaves its loop does), and those must not be what comes back here.
    backend = functools.partial(backend, registry_key=f"{ns}:redelivery-streams")
    publisher = backend()
    await publisher.publish(key, {"job": "abandoned"})
    started = time.perf_counter()
    first = backend().consume()
    message = await asyncio.wait_for(anext(first), wait_s)
    # Leave the loop without asking for the next message: the handler "crashed".
    await first.aclose()
    second = backend().consume()
    try:
        again = await asyncio.wait_for(anext(second), wait_s)
    except TimeoutError:
        return CheckResult(
            "redelivery", False, "abandoned message was not redelivered", time.perf_counter() - started
        )
    finally:
        await second.aclose()
    ok = dict(again) == dict(message) and again.delivery_count == 2
    return CheckResult(
        "redelivery",
        ok,
        f"abandoned message redelivered to another consumer (delivery {again.delivery_count})",
        time.perf_counter() - started,
    )


async def _check_poison(backend: BackendFactory, ns: str, wait_s: float) -> CheckResult:
    key = f"{ns}:poison"
    # A registry of its own, so this group sees only the poison stream.
    b = backend(registry_key=f"{ns}:poison-streams")
    client: Any = b.client
    stream_name = b.stream_name(key)  # in a Redis Cluster, the key with its partition's hash tag
    await client.xadd(stream_name, {"payload": b"{not json"})
    await b.registry.register(stream_name)
    await b.publish(key, {"after": "poison"})
    started = time.perf_counter()
    stream = b.consume(group=f"{ns}:poison-group")
    try:
        with _expected_warnings_about(key):
            message = await asyncio.wait_for(anext(stream), wait_s)
    finally:
        await stream.aclose()
    dead = await client.xrange(b.config.dead_letter_stream(stream_name))
    ok = dict(message) == {"after": "poison"} and len(dead) == 1
    reason = dead[0][1].get(b"reason", b"").decode() if dead else "nothing dead-lettered"
    return CheckResult("poison", ok, f"dead-lettered, not yielded ({reason})", time.perf_counter() - started)


@contextlib.contextmanager
def _expected_warnings_about(key: str) -> Iterator[None]:
    """Drop the backend's warning about dead-lettering ``key``: the check puts poison there on
    purpose and reports the outcome itself, so a passing run prints no warning."""

    def other(record: logging.LogRecord) -> bool:
        return key not in record.getMessage()

    logger = logging.getLogger("abe_redis")
    logger.addFilter(other)
    try:
        yield
    finally:
        logger.removeFilter(other)


async def _cleanup(client: Redis, ns: str) -> None:
    names = [key async for key in client.scan_iter(match=f"{ns}:*", count=1000)]
    if names:
        await client.delete(*names)
