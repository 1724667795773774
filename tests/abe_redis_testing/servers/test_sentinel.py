"""The redis_sentinel fixture and RedisSentinelHandle: who watches whom, failover, restart."""

from __future__ import annotations

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from abe_redis_testing.servers import RedisSentinelHandle, RedisServer


def _client(node: RedisServer) -> redis.Redis:
    return redis.Redis(host=node.host, port=node.port, password=node.password, decode_responses=True)


def _sentinel_view(sentinel: RedisServer, name: str) -> dict[str, str]:
    with _client(sentinel) as client:
        state = client.execute_command("SENTINEL", "MASTER", name)  # type: ignore[no-untyped-call]
    return {str(k): str(v) for k, v in state.items()} if isinstance(state, dict) else {}


def test_master_replica_and_three_sentinels_that_know_each_other(redis_sentinel: RedisSentinelHandle) -> None:
    master = redis_sentinel.master
    (replica,) = redis_sentinel.replicas
    assert {master, replica} == set(redis_sentinel.data_nodes)
    with _client(replica) as client:
        info = client.info("replication")
    assert (info["role"], info["master_port"], info["master_link_status"]) == ("slave", master.port, "up")
    assert len(redis_sentinel.sentinels) == 3
    for sentinel in redis_sentinel.sentinels:
        with _client(sentinel) as client:
            address = client.sentinel_get_master_addr_by_name(redis_sentinel.master_name)
            state = client.sentinel_master(redis_sentinel.master_name)
        assert int(address[1]) == master.port
        assert state["num-other-sentinels"] == 2
        assert state["num-slaves"] == 1


def test_url_lists_the_sentinels_and_the_master_name(redis_sentinel: RedisSentinelHandle) -> None:
    hosts = ",".join(f"{s.host}:{s.port}" for s in redis_sentinel.sentinels)
    assert redis_sentinel.url == f"redis+sentinel://{hosts}/abe-master/0"


def test_failover_promotes_the_replica_and_keeps_the_data(redis_sentinel: RedisSentinelHandle) -> None:
    old = redis_sentinel.master
    with _client(old) as client:
        client.set("k", "v")
        assert client.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]
    new = redis_sentinel.failover()
    assert new is not old
    with _client(new) as client:
        assert client.info("replication")["role"] == "master"
        assert client.get("k") == "v"
    assert redis_sentinel.replicas == [old]


def test_kill_master_then_restart_brings_it_back_as_a_replica(redis_sentinel: RedisSentinelHandle) -> None:
    old = redis_sentinel.master
    killed = redis_sentinel.kill_master()
    assert killed is old and not old.is_running
    new = redis_sentinel.master
    assert new is not old
    redis_sentinel.restart(old)
    assert redis_sentinel.replicas == [old]
    with _client(old) as client:
        assert client.info("replication")["master_port"] == new.port


def test_a_sentinel_can_be_killed_and_healed(redis_sentinel: RedisSentinelHandle) -> None:
    sentinel = redis_sentinel.sentinels[1]
    sentinel.kill()
    redis_sentinel.heal()
    assert sentinel.is_running
    with _client(sentinel) as client:
        assert int(client.sentinel_get_master_addr_by_name("abe-master")[1]) == redis_sentinel.master.port


def test_factory_with_passwords_for_data_nodes_and_sentinels(redis_sentinel_factory: object) -> None:
    deployment: RedisSentinelHandle = redis_sentinel_factory(  # type: ignore[operator]
        master_name="billing", password="data-pw", sentinel_password="sentinel-pw", sentinels=1, replicas=0
    )
    assert deployment.url.startswith("redis+sentinel://:data-pw@") and deployment.url.endswith("/billing/0")
    assert "data-pw" not in deployment.redacted_url and "data-pw" not in repr(deployment)
    (sentinel,) = deployment.sentinels
    with (
        redis.Redis(host=sentinel.host, port=sentinel.port, retry=Retry(NoBackoff(), 0)) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()
    with _client(sentinel) as client:
        assert int(client.sentinel_get_master_addr_by_name("billing")[1]) == deployment.master.port


def test_valkey_nodes_under_sentinel(redis_sentinel_factory: object) -> None:
    deployment: RedisSentinelHandle = redis_sentinel_factory(kind="valkey", sentinels=1)  # type: ignore[operator]
    assert {node.kind for node in deployment.data_nodes + deployment.sentinels} == {"valkey"}
    (sentinel,) = deployment.sentinels
    with _client(sentinel) as client:
        assert int(client.sentinel_get_master_addr_by_name("abe-master")[1]) == deployment.master.port
        assert client.sentinel_master("abe-master")["num-slaves"] == 1
