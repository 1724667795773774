"""One seed, one schedule: run a workload against the backend on the simulated network.

:func:`run_seed` builds everything from the seed (workload, faults, scheduling, network and
handler decisions, names, clocks), runs it on a :class:`SimLoop`, and checks the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
from redis.exceptions import RedisError, ResponseError

from abe_redis import DeadLetter, RedisStreamsBackend

from ._fastpaths import lean_redis_py
from ._faults import FAULT_KINDS, FaultPlan, choose_faults
from ._history import DEFAULT_FAILING, DeadLettered, Handling, History, Verdict, check
from ._loop import SimLoop, SimulationDeadlock, SimulationStuck, virtual_world
from ._model import ModelObserver, ModelServer
from ._network import SimNetwork, current_node, sim_connections
from ._workload import Workload, choose_workload

__all__ = ["SERVERS", "SimulationResult", "replay_command", "run_seed"]

SERVERS = ("model", "fakeredis")
"""The in-process servers a run can use: the lean model (default) or fakeredis."""

_URL = "redis://simulated:6379/0"
_OBSERVER = "observer"

BackendFactory = Callable[..., RedisStreamsBackend]


@dataclass(frozen=True, slots=True)
class SimulationResult:
    seed: int
    workload_name: str
    allowed_faults: tuple[str, ...]
    server: str
    workload: Workload
    plan: FaultPlan
    verdict: Verdict
    trace_hash: str
    virtual_seconds: float
    wall_seconds: float
    stats: dict[str, int] = field(default_factory=dict)
    trace: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    def replay(self) -> str:
        return replay_command(
            self.seed,
            workload=self.workload_name,
            faults=self.allowed_faults,
            messages=self.workload.messages,
            server=self.server,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "ok": self.ok,
            "workload": self.workload_name,
            "server": self.server,
            "faults_on": list(self.plan.kinds),
            "trace_sha256": self.trace_hash,
            "virtual_seconds": round(self.virtual_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 4),
            "stats": self.stats,
            "verdict": self.verdict.to_json(),
            "replay": self.replay(),
        }


def replay_command(
    seed: int, *, workload: str, faults: Iterable[str], messages: int = 200, server: str = "model"
) -> str:
    kinds = tuple(faults)
    spec = "all" if set(kinds) == set(FAULT_KINDS) else (",".join(kinds) or "none")
    extra = "" if messages == 200 else f" --messages {messages}"
    extra += "" if server == "model" else f" --server {server}"
    return f"abe-redis simulate --seed {seed} --workload {workload} --faults {spec}{extra}"


def run_seed(
    seed: int,
    *,
    workload: str = "default",
    faults: Iterable[str] = FAULT_KINDS,
    messages: int = 200,
    backend_factory: BackendFactory | None = None,
    failing: Iterable[str] = DEFAULT_FAILING,
    keep_trace: bool = False,
    log_level: int | None = None,
    server: str = "model",
) -> SimulationResult:
    """Run one seed; the same arguments give the same trace (and ``trace_hash``) every time.

    ``backend_factory(url, **settings)`` builds each simulated process's backend (default
    ``RedisStreamsBackend.from_url``): pass a subclass to simulate a variant of the engine.
    ``server`` is the in-process Redis: ``"model"`` (the lean model, default) or ``"fakeredis"``.
    """
    if server not in SERVERS:
        raise ValueError(f"unknown server {server!r}; choose from {', '.join(SERVERS)}")
    allowed = tuple(faults)
    spec = choose_workload(random.Random(f"{seed}:workload"), workload, messages=messages)
    processes = spec.groups * spec.processes_per_group
    horizon = spec.messages * spec.publish_gap_ms / 1000 / spec.publishers + 1.0
    plan = choose_faults(
        random.Random(f"{seed}:faults"),
        allowed,
        horizon=horizon,
        processes=processes,
        claim_idle_s=spec.claim_idle_s,
    )
    loop = SimLoop(random.Random(f"{seed}:schedule"))
    sim = _Simulation(seed, spec, plan, loop, backend_factory or RedisStreamsBackend.from_url, server)
    started = time.perf_counter()
    with _no_gc(), virtual_world(loop, seed), sim_connections(sim.network), lean_redis_py(), _logs(log_level):
        try:
            loop.run_until_complete(sim.main())
        except (SimulationStuck, SimulationDeadlock) as exc:
            # The run cannot go on; what it recorded so far is still judged.
            sim.history.crashes.append((loop.time(), "event loop", f"{type(exc).__name__}: {exc}"))
            sim.record(f"aborted {type(exc).__name__}: {exc}")
        finally:
            _close_loop(loop)
    unsupported = getattr(sim.server, "unsupported", ())
    if unsupported:
        # The model answered a command it does not implement with an error: the run is not one
        # Redis would have made.
        sim.history.crashes.append(
            (loop.time(), "model", f"unsupported commands: {sorted(set(unsupported))}")
        )
    wall = time.perf_counter() - started
    verdict = check(
        sim.history,
        claim_idle_s=spec.claim_idle_s,
        max_deliveries=spec.max_deliveries,
        failing=failing,
    )
    digest = hashlib.sha256("\n".join(sim.trace).encode()).hexdigest()
    stats = {
        "published": len(sim.history.published),
        "publish_failed": len(sim.history.failed),
        "handlings": len(sim.history.handlings),
        "loop_iterations": loop.iterations,
        "commands": sum(sim.network.commands.values()),
        **{f"net_{k}": v for k, v in sorted(sim.network.injected.items())},
    }
    return SimulationResult(
        seed=seed,
        workload_name=workload,
        allowed_faults=allowed,
        server=server,
        workload=spec,
        plan=plan,
        verdict=verdict,
        trace_hash=digest,
        virtual_seconds=loop.time(),
        wall_seconds=wall,
        stats=stats,
        trace=tuple(sim.trace) if keep_trace else (),
    )


_frozen = False


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    # A collection mid-run finalizes objects (connections, generators) at a moment that depends
    # on what ran before in the process; their finalizers can schedule callbacks. Collect after
    # each run instead, so a seed replays the same in a fresh process and after other seeds.
    # What exists before the first run (modules, mostly) is frozen out of every collection:
    # collecting it each time cost a tenth of a schedule.
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


@contextlib.contextmanager
def _logs(level: int | None) -> Iterator[None]:
    # The backend warns on every fault; thousands of records per run cost more than the run.
    logger = logging.getLogger("abe_redis")
    saved = logger.level
    logger.setLevel(level if level is not None else logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(saved)


def _close_loop(loop: SimLoop) -> None:
    try:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(SimulationStuck, SimulationDeadlock):
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


class _Simulation:
    def __init__(
        self, seed: int, spec: Workload, plan: FaultPlan, loop: SimLoop, factory: BackendFactory, server: str
    ) -> None:
        self.seed = seed
        self.spec = spec
        self.plan = plan
        self.loop = loop
        self.factory = factory
        self.trace: list[str] = []
        self.history = History(groups={f"g{g}" for g in range(spec.groups)})
        self.server: Any
        self.observer: Any
        if server == "model":
            self.server = ModelServer(version=(7, 4))
            self.observer = ModelObserver(self.server)
        else:
            self.server = fakeredis.FakeServer(version=(7, 4))
            self.observer = fakeredis.FakeRedis(server=self.server)
        self.network = SimNetwork(
            self.server,
            random.Random(f"{seed}:network"),
            plan.links,
            now=loop.time,
            record=self.record,
        )
        self.handlers = random.Random(f"{seed}:handlers")
        self.streams = [f"s{i}" for i in range(spec.streams)]
        self.completed: dict[str, set[int]] = {f"g{g}": set() for g in range(spec.groups)}
        self.dead: dict[str, set[int]] = {f"g{g}": set() for g in range(spec.groups)}
        self.processes: dict[int, list[asyncio.Task[None]]] = {}
        self.incarnation: dict[int, int] = {}
        self.alive: set[int] = set()
        self.in_handler: set[asyncio.Task[None]] = set()
        self.backends: list[RedisStreamsBackend] = []
        self.stopping = False
        self.last_fault = 0.0
        self._expected: set[int] = set()
        self._expected_for = (-1, -1)

    def record(self, event: str) -> None:
        self.trace.append(f"{self.loop.time():.6f} {event}")

    def spawn(self, node: str, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        context = contextvars.copy_context()
        context.run(current_node.set, node)
        return self.loop.create_task(coroutine, context=context)

    def new_backend(self) -> RedisStreamsBackend:
        settings = dict(self.spec.settings)
        if self.spec.consumer_name is not None:
            settings["consumer_name"] = self.spec.consumer_name
        backend = self.factory(_URL, **settings)
        self.backends.append(backend)
        return backend

    # -- the run ---------------------------------------------------------------------

    async def main(self) -> None:
        spec = self.spec
        self.record(f"seed {self.seed} workload {json.dumps(spec.to_json(), sort_keys=True)}")
        self.record(f"faults {self.plan.describe()} {self.plan!r}")
        publisher = self.new_backend()
        numbers = iter(range(spec.messages))
        publishers = [self.spawn(f"pub{i}", self.publish(publisher, numbers)) for i in range(spec.publishers)]
        for index in range(spec.groups * spec.processes_per_group):
            self.start_process(index, 0)
        faults = self.spawn(_OBSERVER, self.inject_faults())
        await asyncio.gather(*publishers)
        self.record("published")
        await faults
        await self.drain()
        await self.stop()
        self.observe_end()

    async def publish(self, backend: RedisStreamsBackend, numbers: Iterator[int]) -> None:
        spec = self.spec
        for n in numbers:
            await asyncio.sleep(self.handlers.expovariate(1000 / spec.publish_gap_ms) * spec.publishers)
            stream = self.streams[n % len(self.streams)]
            self.history.publish_started[n] = self.loop.time()
            try:
                await backend.publish(stream, {"n": n})
            except RedisError as exc:
                self.history.failed[n] = type(exc).__name__
                self.record(f"publish {n} failed {type(exc).__name__}")
            else:
                self.history.published[n] = self.loop.time()
                self.record(f"publish {n} ok")

    def start_process(self, index: int, incarnation: int) -> None:
        spec = self.spec
        group = f"g{index // spec.processes_per_group}"
        node = f"p{index}.{incarnation}"
        self.incarnation[index] = incarnation
        self.alive.add(index)
        backend = self.new_backend()
        slow = self.plan.slow_consumer == index
        self.processes[index] = [
            self.spawn(node, self.consume(backend, f"{node}.c{k}", group, slow))
            for k in range(spec.consumers_per_process)
        ]
        self.record(f"start {node} {group}")

    async def consume(self, backend: RedisStreamsBackend, label: str, group: str, slow: bool) -> None:
        spec, plan, rng = self.spec, self.plan, self.handlers
        task = asyncio.current_task()
        assert task is not None
        while not self.stopping:
            stream = backend.consume(group=group)
            try:
                async for message in stream:
                    n = int(message.get("n", -1))
                    count = getattr(message, "delivery_count", None)
                    entry_id = str(getattr(message, "message_id", ""))
                    start = self.loop.time()
                    self.record(f"deliver {label} {group} {n} {entry_id} {count}")
                    duration = rng.uniform(*spec.handler_ms) / 1000
                    if slow:
                        duration *= 10
                    if plan.slow_handler_rate and rng.random() < plan.slow_handler_rate:
                        duration = spec.claim_idle_s * rng.uniform(1.2, 3.0)
                    fail = bool(plan.handler_error_rate) and rng.random() < plan.handler_error_rate
                    self.in_handler.add(task)
                    outcome = "failed" if fail else "ok"
                    try:
                        await asyncio.sleep(duration)
                    except asyncio.CancelledError:
                        outcome = "killed"
                        raise
                    finally:
                        self.in_handler.discard(task)
                        self.history.handlings.append(
                            Handling(n, label, start, self.loop.time(), group, entry_id, count, outcome)
                        )
                        self.record(f"handled {label} {group} {n} {outcome}")
                    if fail:
                        break  # the handler raised: leave the loop, and enter it again
                    self.completed[group].add(n)
                    if self.stopping:
                        await backend.ack(message)
                        break
            except Exception as exc:  # consume() must not raise: a supervisor restarts it
                self.history.crashes.append((self.loop.time(), label, f"{type(exc).__name__}: {exc}"[:300]))
                self.record(f"crashed {label} {type(exc).__name__}")
                await asyncio.sleep(1.0)
            finally:
                await stream.aclose()

    async def inject_faults(self) -> None:
        plan = self.plan
        events: list[tuple[float, str, Any]] = []
        events += [(at, "partition", seconds) for at, seconds in plan.partitions]
        events += [(at, "restart", None) for at in plan.restarts]
        events += [(at, "kill", (index, after)) for at, index, after in plan.kills]
        restarts: list[asyncio.Task[None]] = []
        for at, kind, arg in sorted(events, key=lambda e: (e[0], e[1])):
            await asyncio.sleep(max(0.0, at - self.loop.time()))
            if kind == "partition":
                self.network.partition(arg)
                self.history.excused.append((self.loop.time(), self.loop.time() + arg))
                self.last_fault = max(self.last_fault, self.loop.time() + arg)
            elif kind == "restart":
                self.network.restart()
                self.history.restarts.append(self.loop.time())
            else:
                index, after = arg
                restarts.append(self.spawn(_OBSERVER, self.kill(index, after)))
            self.last_fault = max(self.last_fault, self.loop.time())
        await asyncio.gather(*restarts)

    async def kill(self, index: int, after: float) -> None:
        if index not in self.alive:
            return  # already dead, waiting for its restart
        self.alive.discard(index)
        tasks = self.processes.get(index, [])
        incarnation = self.incarnation[index]
        self.network.kill(f"p{index}.{incarnation}")
        now = self.loop.time()
        # A crashed holder's messages are claimed by peers: that is recovery, not a double handling.
        self.history.excused.append((now, now + self.spec.claim_idle_s))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(after)
        self.last_fault = max(self.last_fault, self.loop.time())
        if not self.stopping:
            self.start_process(index, incarnation + 1)

    # -- the end -----------------------------------------------------------------------

    def waiting(self) -> dict[str, set[int]]:
        # A message published (started) before the last restart is excused: the restart may have
        # taken it. Publishes and restarts only accumulate, and the drain asks twenty times a
        # virtual second: the expected set is rebuilt only when either has grown.
        history = self.history
        grown = (len(history.published), len(history.restarts))
        if grown != self._expected_for:
            last_restart = max(history.restarts, default=-1.0)
            started = history.publish_started
            self._expected = {n for n in history.published if started[n] > last_restart}
            self._expected_for = grown
        expected = self._expected
        return {g: expected - done - self.dead[g] for g, done in self.completed.items()}

    async def drain(self) -> None:
        # Give up once nothing has progressed for a while after the last fault: long enough for
        # backoff, group recreation and a claim of a dead consumer's messages.
        patience = 10.0 + 6 * self.spec.claim_idle_s
        checked = 0.0
        remaining = -1
        progress = self.loop.time()
        while True:
            waiting = self.waiting()
            left = sum(map(len, waiting.values()))
            if not left and self.settled():
                break
            now = self.loop.time()
            if left != remaining:
                remaining, progress = left, now
            if now >= max(progress, self.last_fault) + patience:
                self.record(f"drain deadline, waiting for {sum(map(len, waiting.values()))}")
                break
            if now - checked >= 1.0:
                checked = now
                self.read_dead_letters()
            await asyncio.sleep(0.05)
        self.record("drained")

    def settled(self) -> bool:
        """Every entry of every stream read by every group, and none pending: a duplicate entry
        of a publish retried after a lost reply gets handled before the run ends."""
        for stream in self.streams:
            try:
                groups = self.observer.xinfo_groups(stream)
                last = self.observer.xrevrange(stream, count=1)
            except ResponseError:
                continue  # the stream is gone (a restart): nothing left in it
            last_id = last[0][0] if last else b"0-0"
            for info in groups:
                if info["pending"] or info["last-delivered-id"] != last_id:
                    return False
            if len(groups) < len(self.completed) and last:
                return False
        return True

    async def stop(self) -> None:
        self.stopping = True
        tasks = [t for ts in self.processes.values() for t in ts if not t.done()]
        for task in tasks:
            if task not in self.in_handler:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for backend in self.backends:
            with contextlib.suppress(RedisError, OSError):
                await backend.aclose()
        self.record("stopped")

    def read_dead_letters(self) -> list[DeadLettered]:
        letters: list[DeadLettered] = []
        config = self.backends[0].config
        for stream in self.streams:
            target = config.dead_letter_stream(stream)
            for entry_id, raw in self.observer.xrange(target):
                letter = DeadLetter.from_entry(target, entry_id, raw)
                n = _message_number(letter.fields)
                if n is None:
                    continue
                letters.append(DeadLettered(n, letter.group, letter.delivery_count))
                self.dead.setdefault(letter.group, set()).add(n)
        return letters

    def observe_end(self) -> None:
        self.history.dead_letters = self.read_dead_letters()
        for stream in self.streams:
            for group in self.completed:
                try:
                    pending = self.observer.xpending_range(stream, group, "-", "+", 100_000)
                except ResponseError:
                    continue  # no such group (or stream): nothing pending
                for entry in pending:
                    self.history.stranded.append((group, entry["message_id"].decode()))
        for group, entry_id in self.history.stranded:
            self.record(f"stranded {group} {entry_id}")
        for letter in self.history.dead_letters:
            self.record(f"dead-lettered {letter.group} {letter.msg} {letter.delivery_count}")


def _message_number(fields: dict[bytes, bytes]) -> int | None:
    for value in fields.values():
        try:
            decoded = json.loads(value)
        except ValueError:
            continue
        if isinstance(decoded, dict) and isinstance(decoded.get("n"), int):
            return int(decoded["n"])
    return None
