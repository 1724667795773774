"""The scenarios: a fault each, injected while a producer and a consumer group are running.

Every scenario checks the same invariant (every publish that returned is delivered at least
once), counts duplicates, measures recovery after the fault against a bound derived from the
client settings, and, when Redis is unreachable, bounds CPU time and log records (no hot loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio

from abe_redis import RedisConfig
from abe_redis._delivery import MAX_BACKOFF_S  # how long a consumer may wait between reconnects
from abe_redis_testing.faults import FaultProxy
from abe_redis_testing.servers import RedisServer, ServerBinaryNotFound, redact_url

from . import _failover
from ._harness import Environment, Workload, start_local_server
from ._ledger import first_delivery_after
from ._profiles import ClientSettings, Profile
from ._result import ScenarioResult
from .consumer_process import SETTINGS_ENV


@dataclass(frozen=True)
class Context:
    env: Environment
    profile: Profile
    settings: ClientSettings

    @property
    def network_bound_s(self) -> float:
        """Fault end -> consumption resumes: a timed-out command, the longest consumer back-off
        (twice, as the jitter and a retry inside redis-py can stack) and a blocking read."""
        s = self.settings
        return round(s.socket_timeout + 2 * MAX_BACKOFF_S + s.block_ms / 1000 + 1.0, 1)

    @property
    def claim_bound_s(self) -> float:
        """Crash -> another consumer has the crashed one's messages: idle time, claim interval,
        a blocking read, and slack for a loaded CI machine."""
        s = self.settings
        return round((s.claim_idle_ms + s.claim_interval_ms + s.block_ms) / 1000 + 2.0, 1)


ScenarioFn = Callable[[Context], Awaitable[ScenarioResult]]
NIGHTLY = frozenset({"long"})


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    run: ScenarioFn
    profiles: frozenset[str] = frozenset({"quick", "long"})
    """The profiles that run it when no ``--scenario`` is named."""


async def _cleanup_keys(url: str, workload: Workload) -> None:
    # On an external server the scenario's keys would otherwise pile up night after night.
    client = redis.asyncio.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        await client.delete(
            workload.stream, workload.registry_key, RedisConfig().dead_letter_stream(workload.stream)
        )
    except redis.RedisError:
        pass
    finally:
        await client.aclose()


# -- network faults through the proxy ---------------------------------------------------------

ToxicFactory = Callable[[FaultProxy], AbstractContextManager[Any]]


async def _network(
    ctx: Context,
    name: str,
    fault: str,
    toxic: ToxicFactory,
    *,
    outage: bool,
    fault_s: float | None = None,
    during: Callable[[Workload], Awaitable[None]] | None = None,
) -> ScenarioResult:
    proxy = ctx.env.proxy(name)
    workload = Workload(
        name,
        fault,
        ctx.env.proxied_url(proxy),
        ctx.profile,
        ctx.settings,
        recovery_bound_s=ctx.network_bound_s,
        outage=outage,
        side_url=ctx.env.direct_url,
    )
    length = fault_s if fault_s is not None else ctx.profile.fault_s

    async def inject(w: Workload) -> None:
        loop = asyncio.get_running_loop()
        with toxic(proxy):
            w.fault_started()
            until = loop.time() + length
            if during is not None:
                await during(w)
            await asyncio.sleep(max(0.0, until - loop.time()))
        w.fault_ended()

    try:
        return await workload.run(inject)
    finally:
        proxy.delete()
        await _cleanup_keys(ctx.env.direct_url, workload)


async def latency(ctx: Context) -> ScenarioResult:
    ms, jitter = (100, 50) if ctx.profile.name == "quick" else (300, 150)
    return await _network(
        ctx,
        "latency",
        f"latency {ms}±{jitter} ms each way, {ctx.profile.fault_s:g} s",
        lambda p: p.latency(ms, jitter, stream="both"),
        outage=False,
    )


async def proxy_down(ctx: Context) -> ScenarioResult:
    seconds = ctx.profile.fault_s if ctx.profile.name == "quick" else max(5.0, ctx.profile.fault_s)
    return await _network(
        ctx,
        "proxy-down",
        f"proxy down (refused, connections closed) {seconds:g} s",
        lambda p: p.down(),
        outage=True,
        fault_s=seconds,
    )


async def reset_peer(ctx: Context) -> ScenarioResult:
    burst = ctx.profile.burst

    async def publish_batch(w: Workload) -> None:
        # Published straight to Redis so they all succeed, while every reply the consumers get
        # through the proxy is cut by a reset: the batch sits in their pending lists, unread.
        direct = w.backend(ctx.env.direct_url)
        returned = await w.burst(direct, burst)
        w.note(f"{returned} of {burst} messages published directly during the fault (the batch)")

    return await _network(
        ctx,
        "reset-peer",
        f"reset_peer on replies while a batch of {burst} is read, {ctx.profile.fault_s:g} s",
        lambda p: p.reset_peer(0, stream="downstream"),
        outage=True,
        during=publish_batch,
    )


async def black_hole(ctx: Context) -> ScenarioResult:
    # Longer than the socket timeout, or the clients would never notice.
    seconds = max(ctx.profile.fault_s, ctx.settings.socket_timeout + 1.0)
    return await _network(
        ctx,
        "black-hole",
        f"black hole on replies (timeout toxic, connections kept open) {seconds:g} s",
        lambda p: p.black_hole(0, stream="downstream"),
        outage=True,
        fault_s=seconds,
    )


async def bandwidth(ctx: Context) -> ScenarioResult:
    rate = 4 if ctx.profile.name == "quick" else 8
    return await _network(
        ctx,
        "bandwidth",
        f"bandwidth {rate} KB/s each way, {ctx.profile.fault_s:g} s",
        lambda p: p.bandwidth(rate, stream="both"),
        outage=False,
    )


async def slicer(ctx: Context) -> ScenarioResult:
    return await _network(
        ctx,
        "slicer",
        f"slicer 8±4 byte pieces 100 µs apart each way, {ctx.profile.fault_s:g} s",
        lambda p: p.slicer(8, 4, 100, stream="both"),
        outage=False,
    )


async def limit_data(ctx: Context) -> ScenarioResult:
    limit = 4096
    return await _network(
        ctx,
        "limit-data",
        f"limit_data: connections closed after {limit} reply bytes, {ctx.profile.fault_s:g} s",
        lambda p: p.limit_data(limit, stream="downstream"),
        outage=False,
    )


# -- the server killed ---------------------------------------------------------------------------


async def redis_kill(ctx: Context) -> ScenarioResult:
    fault = f"redis-server SIGKILL, down {ctx.profile.fault_s:g} s, restarted from AOF (appendfsync always)"
    try:
        server = await asyncio.to_thread(start_local_server, appendonly=True)
    except ServerBinaryNotFound as exc:
        return ScenarioResult(
            "redis-kill", fault, verdict="skip", problems=[f"no local server binary: {exc}"]
        )
    workload = Workload(
        "redis-kill",
        fault,
        server.url,
        ctx.profile,
        ctx.settings,
        recovery_bound_s=ctx.network_bound_s,
        outage=True,
    )
    if not ctx.env.owns_redis:
        workload.note("runs on its own local server: the runner never kills a --redis-url server")

    async def inject(w: Workload) -> None:
        await asyncio.to_thread(server.kill)
        w.fault_started()
        await asyncio.sleep(ctx.profile.fault_s)
        await asyncio.to_thread(server.start)
        w.fault_ended()

    try:
        return await workload.run(inject)
    finally:
        await asyncio.to_thread(_cleanup_server, server)


def _cleanup_server(server: RedisServer) -> None:
    server.cleanup()


# -- a consumer process killed -------------------------------------------------------------------

_REPO_ROOT = Path(__file__).resolve().parent.parent
HOLD_TIMEOUT_S = 20.0


class _Victim:
    """The consumer process this scenario kills: it reports each message it handled ("done") and
    the one it gets stuck on ("hold"), and is SIGKILLed the moment it holds one."""

    def __init__(self, workload: Workload, process: asyncio.subprocess.Process) -> None:
        self.workload = workload
        self.process = process
        self.held: tuple[int, str] | None = None
        self.killed_at: float | None = None
        self.killed = asyncio.Event()

    @classmethod
    async def start(cls, ctx: Context, workload: Workload) -> _Victim:
        settings = ctx.settings.backend_kwargs()
        settings.update(
            url=workload.url,
            group=workload.group,
            streams=[workload.stream],
            registry_key=workload.registry_key,
            consumer_name="victim",
            hold_after=5,
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
        # Through the environment, not argv: a URL's password would show in ps.
        env[SETTINGS_ENV] = json.dumps(settings)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chaos.consumer_process",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            cwd=str(_REPO_ROOT),
        )
        victim = cls(workload, process)
        workload.spawn(victim.read_reports(), "victim-reports")
        return victim

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no finally blocks, no ack, no release of its batch
        if self.killed_at is None:
            self.killed_at = self.workload.now()
        self.killed.set()

    async def read_reports(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            word, *fields = raw.decode().split()
            if word == "done":
                self.workload.record("victim", int(fields[0]), fields[1], int(fields[2]))
            elif word == "hold" and self.held is None:
                self.held = (int(fields[0]), fields[1])
                # At once: a handler stuck for claim_idle_ms is claimed from a *live* consumer
                # too, and that is not the crash this scenario is about.
                self.kill()

    async def inject(self, w: Workload) -> None:
        try:
            async with asyncio.timeout(HOLD_TIMEOUT_S):
                await self.killed.wait()
        except TimeoutError:
            w.result.fail(f"the consumer process did not get stuck on a message within {HOLD_TIMEOUT_S:g} s")
            self.kill()
        await self.process.wait()
        assert self.killed_at is not None
        w.fault_started(self.killed_at)
        w.fault_ended(self.killed_at)

    async def reap(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def _judge_reclaim(result: ScenarioResult, workload: Workload, held: tuple[int, str] | None) -> None:
    """The held message must reach another consumer within the claim bound after the kill."""
    if held is None or result.fault_end_s is None:
        return
    msg, entry_id = held
    others = [d for d in workload.ledger.deliveries if d.consumer != "victim"]
    again = first_delivery_after(others, msg, result.fault_end_s)
    result.extra["held_message"] = {"n": msg, "entry_id": entry_id}
    result.extra["reclaim_s"] = None if again is None else round(again - result.fault_end_s, 3)
    if again is None:
        result.fail(f"the message the killed consumer held (#{msg}) was never redelivered")
        return
    bound = result.recovery_bound_s or 0.0
    taken = again - result.fault_end_s
    result.notes.append(f"held message #{msg} redelivered to another consumer {taken:.2f} s after the kill")
    if taken > bound:
        result.fail(f"held message reclaimed after {taken:.2f} s, bound {bound:g} s")


async def consumer_kill(ctx: Context) -> ScenarioResult:
    proxy = ctx.env.proxy("consumer-kill")
    workload = Workload(
        "consumer-kill",
        "consumer process SIGKILLed while its handler holds an unacked message",
        ctx.env.proxied_url(proxy),
        ctx.profile,
        ctx.settings,
        recovery_bound_s=ctx.claim_bound_s,
        outage=False,
    )
    victim = await _Victim.start(ctx, workload)
    try:
        result = await workload.run(victim.inject)
    finally:
        await victim.reap()
        proxy.delete()
        await _cleanup_keys(ctx.env.direct_url, workload)
    _judge_reclaim(result, workload, victim.held)
    return result


# -- the group deleted ---------------------------------------------------------------------------


async def group_destroy(ctx: Context) -> ScenarioResult:
    proxy = ctx.env.proxy("group-destroy")
    workload = Workload(
        "group-destroy",
        "XGROUP DESTROY under running consumers",
        ctx.env.proxied_url(proxy),
        ctx.profile,
        ctx.settings,
        recovery_bound_s=ctx.network_bound_s,
        outage=False,
    )

    async def inject(w: Workload) -> None:
        admin = redis.asyncio.Redis.from_url(ctx.env.direct_url)
        try:
            w.fault_started()
            destroyed = await admin.xgroup_destroy(w.stream, w.group)
            w.fault_ended()
        finally:
            await admin.aclose()
        if not destroyed:
            w.result.fail("XGROUP DESTROY found no group to destroy")

    try:
        result = await workload.run(inject)
    finally:
        proxy.delete()
        await _cleanup_keys(ctx.env.direct_url, workload)
    if result.tally is not None and result.tally.duplicates:
        result.notes.append(
            f"{result.tally.duplicates} duplicates expected: the group is recreated at 0, so the "
            "stream's history is delivered again (docs/delivery.md)"
        )
    return result


_sentinel, _sentinel_wait = _failover.variants(_failover.sentinel_failover)
_cluster, _cluster_wait = _failover.variants(_failover.cluster_failover)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("latency", "latency with jitter on both directions", latency),
        Scenario("proxy-down", "proxy disabled: connections refused and closed", proxy_down),
        Scenario("reset-peer", "TCP resets on every reply while a batch is delivered", reset_peer),
        Scenario("black-hole", "bytes swallowed, connections kept open (timeout toxic)", black_hole),
        Scenario("bandwidth", "bandwidth cap", bandwidth),
        Scenario("slicer", "replies and commands cut into tiny delayed pieces", slicer),
        Scenario("limit-data", "connections closed after a few KB", limit_data),
        Scenario("redis-kill", "redis-server SIGKILL + restart with AOF", redis_kill),
        Scenario(
            "consumer-kill", "consumer process SIGKILL mid-handler, reclaimed by XAUTOCLAIM", consumer_kill
        ),
        Scenario("group-destroy", "XGROUP DESTROY under a running consumer group", group_destroy),
        Scenario(
            "sentinel-failover",
            "Sentinel: master killed while its replica lags, replica promoted (no WAIT)",
            _sentinel,
        ),
        Scenario(
            "sentinel-failover-wait",
            "the same with REDIS_WAIT_REPLICAS=1: no acknowledged publish lost",
            _sentinel_wait,
        ),
        Scenario(
            "cluster-failover",
            "Cluster: a stream's master killed while its replica lags, replica promoted (no WAIT)",
            _cluster,
            NIGHTLY,
        ),
        Scenario("cluster-failover-wait", "the same with REDIS_WAIT_REPLICAS=1", _cluster_wait),
    )
}


def scenarios_of(profile: str) -> list[str]:
    """The scenarios a profile runs when none is named."""
    return [name for name, scenario in SCENARIOS.items() if profile in scenario.profiles]


async def run_scenario(scenario: Scenario, ctx: Context) -> ScenarioResult:
    """Run one scenario; an exception becomes an ``error`` verdict with the reason, never a crash."""
    try:
        return await scenario.run(ctx)
    except Exception as exc:
        tail = traceback.format_exception_only(exc)[-1].strip()
        result = ScenarioResult(scenario.name, scenario.summary, verdict="error")
        result.problems.append(redact_url(tail))
        with contextlib.suppress(Exception):
            result.extra["traceback"] = redact_url("".join(traceback.format_exception(exc))[-2000:])
        return result
