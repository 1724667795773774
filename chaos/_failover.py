"""Failover scenarios: the master under a running producer and consumer group dies, a replica is
promoted, and everything must carry on.

Replication is asynchronous: a master acknowledges a write before any replica has it, so a write
acknowledged in the last moments before the master dies can be gone after the promotion. On
loopback that window is microseconds, so each scenario first *stalls the replica* (SIGSTOP) for
``LAG_S`` — what a replica behind on a slow or congested link looks like — and kills the master
(SIGKILL) during the stall. Every publish acknowledged during the stall is then on the master only.

Each scenario runs twice, with ``REDIS_WAIT_REPLICAS=0`` and ``=1``:

* without ``WAIT``, the publishes of the stall are lost; the run passes if no more were lost than
  the stall can explain (:func:`loss_bound`), and the report says how many;
* with ``WAIT 1``, ``publish`` returns only once a replica confirmed the write (or raises
  ``ReplicationTimeoutError`` after ``REDIS_WAIT_TIMEOUT_MS``), so every publish that *returned*
  is on the replica that gets promoted: the allowance is 0.

``WAIT`` is not strong consistency: a publish that raised may still have been written (and be
delivered, or lost); a replica that confirmed may itself die before it is promoted (with one
replica per master, as here, it is the one promoted); and with several replicas, Sentinel or the
cluster may promote one that did not confirm.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import redis

from abe_redis import ConfigurationError, RedisStreamsBackend
from abe_redis_testing.servers import (
    RedisClusterHandle,
    RedisSentinelHandle,
    RedisServer,
    ServerBinaryNotFound,
    TopologyNotReady,
)

from ._harness import Workload, find_server_binary
from ._result import ScenarioResult

if TYPE_CHECKING:
    from ._scenarios import Context

LAG_S = 0.5
"""How long the replica is stalled before (and while) the master is killed. Below the sentinels'
``down-after-milliseconds`` and the cluster's ``cluster-node-timeout`` (1 s each in the
toolkit's deployments), so the stalled replica is not itself marked down and stays electable."""
FILLER_BYTES = 16 * 1024 * 1024
"""Written to the master at the start of the stall (see :func:`_fill`). Loopback socket buffers
hold a few MB at most; the replica's output buffer limit (``client-output-buffer-limit replica
256mb 64mb 60``) is far above this, so the replica is not disconnected for it."""
WAIT_TIMEOUT_MS = 200
"""``REDIS_WAIT_TIMEOUT_MS`` of the ``WAIT 1`` runs: a publish during the stall waits this long
for the replica, then raises ``ReplicationTimeoutError``. Shorter than ``LAG_S``, so that several
publishes time out before the master dies: a ``WAIT`` whose timeout were taken for a
confirmation (or that counted another shard's replicas) would show as acknowledged loss."""


def loss_bound(rate: float, lag_s: float = LAG_S) -> int:
    """How many acknowledged publishes a failover after a stall of ``lag_s`` may lose without
    ``WAIT``: everything the one producer had acknowledged during the stall (``rate * lag_s``),
    half as much again for the producer catching up after a slow publish, and a few in flight
    on the replication link when the stall began."""
    return math.ceil(rate * lag_s * 1.5) + 5


class _Stall:
    """SIGSTOP a process now, SIGCONT it on :meth:`resume` (idempotent, and on any exit)."""

    def __init__(self, node: RedisServer) -> None:
        self.pid = node.pid
        self.stopped = False

    def __enter__(self) -> _Stall:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)
            self.stopped = True
        return self

    def resume(self) -> None:
        if self.stopped and self.pid is not None:
            self.stopped = False
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)

    def __exit__(self, *exc: object) -> None:
        self.resume()


def _fill(master: RedisServer, key: str) -> None:
    """Write ``FILLER_BYTES`` to ``master`` in one value: more than the kernel's socket buffers
    between it and its stalled replica hold, so what the master acknowledges next waits in its
    own output buffer for the replica and dies with it."""
    client = redis.Redis(host=master.host, port=master.port, password=master.password, socket_timeout=5)
    try:
        client.set(key, b"x" * FILLER_BYTES)
    finally:
        client.close()


async def _stall_and_kill(
    w: Workload,
    master: RedisServer,
    replica: RedisServer,
    filler_key: str,
    promoted: Callable[[], None],
    restart: Callable[[RedisServer], object],
) -> None:
    """Stall ``replica`` and put it ``FILLER_BYTES`` behind, let the producer run ``LAG_S``,
    SIGKILL ``master``, resume the replica, wait until ``promoted`` returns, then ``restart``
    the killed node (it rejoins as a replica of the new master, as an orchestrator would bring
    it back). The fault window is the kill to the rejoin; blocking calls run in a thread."""
    with _Stall(replica) as stall:
        await asyncio.to_thread(_fill, master, filler_key)
        await asyncio.sleep(LAG_S)
        await asyncio.to_thread(master.kill)
        w.fault_started()
        stall.resume()
    await asyncio.to_thread(promoted)
    started = w.result.fault_start_s or 0.0
    w.result.extra["promoted_after_s"] = round(w.now() - started, 2)
    await asyncio.to_thread(restart, master)
    w.fault_ended()
    w.note(
        f"replica promoted {w.result.extra['promoted_after_s']:.1f} s after the kill; the killed "
        f"node was back as a replica {w.now() - started:.1f} s after it"
    )


def _variant(wait: bool, rate: float) -> tuple[dict[str, int], int, str]:
    """Backend settings, the loss allowance, and the words for the report."""
    if wait:
        overrides = {"wait_replicas": 1, "wait_timeout_ms": WAIT_TIMEOUT_MS}
        return overrides, 0, f"REDIS_WAIT_REPLICAS=1 (timeout {WAIT_TIMEOUT_MS} ms)"
    return {}, loss_bound(rate), "REDIS_WAIT_REPLICAS=0"


def _explain(result: ScenarioResult, wait: bool) -> None:
    """The note the report shows under the scenario: how many were lost and why."""
    gone = result.gone
    if gone is None:
        return
    if wait:
        result.notes.append(
            f"{gone} acknowledged publishes lost. With WAIT 1 a publish returns only once the "
            "replica has the write; publishes during the stall waited, then raised "
            "ReplicationTimeoutError or a connection error (counted as failed, not acknowledged)"
        )
    else:
        early = int(result.extra.get("gone_but_delivered", 0))
        result.notes.append(
            f"{gone} acknowledged publishes lost (allowed ≤ {result.lost_allowed}): replication "
            f"is asynchronous, and what the master acknowledged while the replica was stalled "
            f"({LAG_S:g} s) died with it; {early} of them had reached a consumer from the old "
            "master before it died, the others never will. REDIS_WAIT_REPLICAS=1 closes this window"
        )
    t = result.tally
    if t is not None and t.failed_publishes:
        result.notes.append(
            f"{t.failed_publishes} publishes raised during the failover (not acknowledged; "
            f"{t.failed_but_delivered} of them were written anyway and delivered)"
        )


async def _deploy[H: (RedisSentinelHandle, RedisClusterHandle)](
    name: str, fault: str, deployment: type[H], what: str
) -> H | ScenarioResult:
    """The replicated deployment, started; or the result saying why the scenario cannot run."""
    found = find_server_binary()
    if found is None:
        return ScenarioResult(name, fault, verdict="skip", problems=["no redis-server or valkey-server"])
    kind, binary = found
    try:
        return await asyncio.to_thread(deployment(binary, kind=kind).start)
    except (ServerBinaryNotFound, TopologyNotReady) as exc:
        return ScenarioResult(name, fault, verdict="error", problems=[f"{what}: {exc}"])


def _workload(
    ctx: Context,
    name: str,
    fault: str,
    url: str,
    overrides: dict[str, int],
    allowed: int,
    *,
    consumers: int | None = None,
) -> Workload:
    """A failover run: no outage (the promoted replica serves on), the stream read back after it
    to tell Redis' loss from a consumer's, and retention off so that read-back sees every entry."""
    return Workload(
        name,
        fault,
        url,
        ctx.profile,
        ctx.settings,
        recovery_bound_s=ctx.network_bound_s,
        outage=False,
        consumers=consumers,
        backend_overrides={**overrides, "retention": "off"},
        lost_allowed=allowed,
        check_stream=True,
    )


# -- Sentinel --------------------------------------------------------------------------------


async def sentinel_failover(ctx: Context, *, wait: bool) -> ScenarioResult:
    name = "sentinel-failover-wait" if wait else "sentinel-failover"
    overrides, allowed, words = _variant(wait, ctx.profile.rate)
    fault = (
        f"Sentinel: replica stalled {LAG_S:g} s, master SIGKILLed during the stall, replica promoted; {words}"
    )
    handle = await _deploy(name, fault, RedisSentinelHandle, "sentinel deployment")
    if isinstance(handle, ScenarioResult):
        return handle
    try:
        workload = _workload(ctx, name, fault, handle.url, overrides, allowed)
        master, replica = handle.master, handle.replicas[0]

        def promoted() -> None:
            handle.wait_ready()
            workload.note(f"promoted {replica.port} (was replica of {master.port})")

        result = await workload.run(
            lambda w: _stall_and_kill(w, master, replica, "chaos:filler", promoted, handle.restart)
        )
    finally:
        await asyncio.to_thread(handle.cleanup)
    _explain(result, wait)
    return result


# -- Cluster ---------------------------------------------------------------------------------


async def _cluster_consumes(url: str) -> bool:
    """Whether this version of the backend consumes from a cluster (it once refused)."""
    backend = RedisStreamsBackend.from_url(url)
    try:
        stream = backend.consume()
    except ConfigurationError:
        return False
    else:
        await stream.aclose()  # never started: consume() reads nothing until iterated
        return True
    finally:
        await backend.aclose()


def _stream_key(handle: RedisClusterHandle, stream: str) -> str | None:
    """The key the backend stored ``stream`` under (its own name, or with a hash tag added)."""
    for node in handle.masters:
        client = redis.Redis(host=node.host, port=node.port, password=handle.password, socket_timeout=2)
        try:
            for key in client.scan_iter(match=f"{stream}*", _type="stream", count=1000):
                text = key.decode() if isinstance(key, bytes) else str(key)
                if not text.endswith(":dead-letter"):
                    return text
        finally:
            client.close()
    return None


def _key_on(handle: RedisClusterHandle, master: RedisServer) -> str:
    """A key whose slot ``master`` serves."""
    for index in range(10_000):
        key = f"chaos:filler:{index}"
        if handle.master_for(key) is master:
            return key
    raise TopologyNotReady(f"no key of 10000 tried hashes to master {master.port}")


async def cluster_failover(ctx: Context, *, wait: bool) -> ScenarioResult:
    name = "cluster-failover-wait" if wait else "cluster-failover"
    overrides, allowed, words = _variant(wait, ctx.profile.rate)
    fault = (
        f"Cluster 3+3: the stream's replica stalled {LAG_S:g} s, its master SIGKILLed during "
        f"the stall, replica promoted; {words}"
    )
    handle = await _deploy(name, fault, RedisClusterHandle, "cluster")
    if isinstance(handle, ScenarioResult):
        return handle
    try:
        consumes = await _cluster_consumes(handle.url)
        workload = _workload(
            ctx, name, fault, handle.url, overrides, allowed, consumers=None if consumes else 0
        )
        if not consumes:
            workload.note(
                "this version does not consume from a cluster: publishers only, and the stream "
                "is read back with XRANGE after the run (a returned publish missing there is lost)"
            )

        async def inject(w: Workload) -> None:
            key = await asyncio.to_thread(_stream_key, handle, w.stream)
            if key is None:
                w.result.fail(f"the stream {w.stream} was not found on any master before the fault")
                w.fault_started()
                return
            w.stream_key = key
            master = await asyncio.to_thread(handle.master_for, key)
            replica = (await asyncio.to_thread(handle.replicas_of, master))[0]

            def promoted() -> None:
                handle.wait_ready()
                now = handle.master_for(key)
                w.note(f"slot of {key!r}: {master.port} killed, {now.port} promoted")

            filler = await asyncio.to_thread(_key_on, handle, master)
            await _stall_and_kill(w, master, replica, filler, promoted, handle.restart)

        result = await workload.run(inject)
    finally:
        await asyncio.to_thread(handle.cleanup)
    _explain(result, wait)
    return result


def variants(
    run: Callable[..., Awaitable[ScenarioResult]],
) -> tuple[Callable[[Context], Awaitable[ScenarioResult]], Callable[[Context], Awaitable[ScenarioResult]]]:
    """``run`` without and with ``WAIT 1``, as two scenario functions."""

    async def without(ctx: Context) -> ScenarioResult:
        return await run(ctx, wait=False)

    async def with_wait(ctx: Context) -> ScenarioResult:
        return await run(ctx, wait=True)

    return without, with_wait
