"""A Sentinel-watched master with replicas, all local processes, with failover and restart."""

from __future__ import annotations

import contextlib
import time
from types import TracebackType
from typing import Self

from ._topologies import (
    _FAST_SYNC,
    _SENTINEL_PERIODS,
    DEFAULT_MASTER_NAME,
    DEFAULT_READY_TIMEOUT,
    NodeFactory,
    _address,
    _command,
    _fields,
    _lookup_problem,
    _pairs,
    _wait,
)
from .servers import (
    DEFAULT_HOST,
    DEFAULT_STARTUP_TIMEOUT,
    BinaryKind,
    RedisServer,
    redact_url,
)


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


__all__ = ["RedisSentinelHandle"]
