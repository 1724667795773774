"""The redis_cluster fixture and RedisClusterHandle: shape, slot ownership, faults, cleanup."""

from __future__ import annotations

import functools

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from abe_redis_testing.containers import DEFAULT_IMAGE, ContainerRedisServer
from abe_redis_testing.servers import (
    CLUSTER_SLOTS,
    RedisClusterHandle,
    RedisServer,
    TopologyNotReady,
    parse_cluster_nodes,
)

from .docker_double import DockerDouble


def _client(node: RedisServer, password: str | None = None) -> redis.Redis:
    return redis.Redis(host=node.host, port=node.port, password=password, decode_responses=True)


def _raw(node: RedisServer, *args: str, password: str | None = None) -> str:
    """A reply as the server sends it (redis-py would parse CLUSTER INFO / NODES into dicts)."""
    with _client(node, password) as client:
        client.response_callbacks.clear()
        return str(client.execute_command(*args))  # type: ignore[no-untyped-call]


def _cluster_info(node: RedisServer, password: str | None = None) -> dict[str, str]:
    text = _raw(node, "CLUSTER", "INFO", password=password)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def test_three_masters_each_with_a_replica_cover_every_slot(redis_cluster: RedisClusterHandle) -> None:
    assert len(redis_cluster.nodes) == 6
    masters, replicas = redis_cluster.masters, redis_cluster.replicas
    assert len(masters) == 3 and len(replicas) == 3
    for master in masters:
        assert len(redis_cluster.replicas_of(master)) == 1
    for node in redis_cluster.nodes:
        info = _cluster_info(node)
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_ok"] == str(CLUSTER_SLOTS)
        assert info["cluster_known_nodes"] == "6"
    views = parse_cluster_nodes(_raw(masters[0], "CLUSTER", "NODES"))
    served = sum(hi - lo + 1 for v in views if v.is_master for lo, hi in v.slots)
    assert served == CLUSTER_SLOTS


def test_url_names_every_node_as_a_seed(redis_cluster: RedisClusterHandle) -> None:
    assert redis_cluster.url == "redis+cluster://" + ",".join(
        f"{n.host}:{n.port}" for n in redis_cluster.nodes
    )
    assert (
        redis_cluster.node_urls[0] == f"redis://{redis_cluster.nodes[0].host}:{redis_cluster.nodes[0].port}/0"
    )


def test_keys_spread_over_masters_and_hash_tags_pin_them(redis_cluster: RedisClusterHandle) -> None:
    spread = {redis_cluster.master_for(f"orders-{i}").port for i in range(20)}
    assert len(spread) == 3
    pinned = {redis_cluster.master_for(f"{{registry}}:orders-{i}").port for i in range(20)}
    assert len(pinned) == 1
    # A key lands where master_for says: the cluster refuses it anywhere else.
    key = "orders-7"
    owner = redis_cluster.master_for(key)
    with _client(owner) as client:
        client.set(key, "here")
    other = next(m for m in redis_cluster.masters if m is not owner)
    with _client(other) as client, pytest.raises(redis.exceptions.MovedError):
        client.get(key)


def test_kill_master_promotes_its_replica_and_restart_rejoins_as_replica(
    redis_cluster: RedisClusterHandle,
) -> None:
    key = "payments"
    old = redis_cluster.master_for(key)
    (replica,) = redis_cluster.replicas_of(old)
    with _client(old) as client:
        client.set(key, "kept")
        assert client.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]
    killed = redis_cluster.kill_master(key)
    assert killed is old and not old.is_running
    assert redis_cluster.master_for(key) is replica
    with _client(replica) as client:
        assert client.get(key) == "kept"
    redis_cluster.restart(old)
    assert old.is_running
    assert old in redis_cluster.replicas_of(replica)


def test_graceful_failover_swaps_master_and_replica(redis_cluster: RedisClusterHandle) -> None:
    old = redis_cluster.master_for(0)
    new = redis_cluster.failover(0)
    assert new is not old
    assert redis_cluster.master_for(0) is new
    assert old in redis_cluster.replicas_of(new)


def test_heal_restarts_stopped_nodes(redis_cluster: RedisClusterHandle) -> None:
    replica = redis_cluster.replicas[0]
    replica.kill()
    redis_cluster.heal()
    assert all(node.is_running for node in redis_cluster.nodes)
    assert replica in redis_cluster.replicas


def test_flushall_empties_every_master(redis_cluster: RedisClusterHandle) -> None:
    keys = [f"k{i}" for i in range(10)]
    for key in keys:
        with _client(redis_cluster.master_for(key)) as client:
            client.set(key, "v")
    redis_cluster.flushall()
    for master in redis_cluster.masters:
        with _client(master) as client:
            assert client.dbsize() == 0


def test_factory_starts_a_second_differently_configured_cluster(
    redis_cluster_factory: object, redis_cluster: RedisClusterHandle
) -> None:
    secret = "cluster-s3cret"
    small: RedisClusterHandle = redis_cluster_factory(  # type: ignore[operator]
        masters=1, replicas_per_master=0, password=secret
    )
    assert small is not redis_cluster
    assert len(small.nodes) == 1 and small.replicas == []
    assert secret in small.url and secret not in small.redacted_url and secret not in repr(small)
    node = small.nodes[0]
    # No retries: redis-py 8 retries an AuthenticationError (a ConnectionError) with backoff.
    with (
        redis.Redis(host=node.host, port=node.port, retry=Retry(NoBackoff(), 0)) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()
    assert _cluster_info(node, secret)["cluster_state"] == "ok"
    assert small.boot_seconds is not None and small.boot_seconds < 20


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one master"):
        RedisClusterHandle("redis-server", masters=0)


def test_cluster_of_containers_through_the_docker_double(monkeypatch: pytest.MonkeyPatch) -> None:
    """The container path: each node is ``docker run --network host <image> redis-server …``;
    the Engine API double runs that command as a local process, as a Linux engine would."""
    with DockerDouble() as double:
        monkeypatch.setenv("DOCKER_HOST", double.docker_host)
        factory = functools.partial(ContainerRedisServer, image=DEFAULT_IMAGE)
        with RedisClusterHandle(
            "redis-server", masters=2, replicas_per_master=0, node_factory=factory
        ) as cluster:
            assert all(isinstance(node, ContainerRedisServer) for node in cluster.nodes)
            assert len(cluster.masters) == 2
            created = list(double.containers.values())
            assert len(created) == 2
            assert {c.network_mode for c in created} == {"host"}
            assert all(c.image == DEFAULT_IMAGE and c.cmd[0] == "redis-server" for c in created)
            node = cluster.nodes[1]
            node.kill()
            assert not node.is_running
            cluster.restart(node)
            assert node.is_running and len(cluster.masters) == 2
        assert double.containers == {}, "every container is removed with the cluster"


def test_valkey_nodes_form_a_cluster(redis_cluster_factory: object) -> None:
    cluster: RedisClusterHandle = redis_cluster_factory(  # type: ignore[operator]
        kind="valkey", masters=3, replicas_per_master=0
    )
    assert {node.kind for node in cluster.nodes} == {"valkey"}
    assert {cluster.master_for(f"k{i}").port for i in range(20)} == {n.port for n in cluster.nodes}
    with pytest.raises(TopologyNotReady, match="no running replica"):
        cluster.kill_master("k")


def test_kill_master_refuses_when_no_majority_could_elect_a_replica(redis_cluster_factory: object) -> None:
    cluster: RedisClusterHandle = redis_cluster_factory(masters=1, replicas_per_master=1)  # type: ignore[operator]
    with pytest.raises(TopologyNotReady, match="majority"):
        cluster.kill_master("k")
    assert all(node.is_running for node in cluster.nodes), "nothing was killed"
