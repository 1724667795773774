"""Cluster and Sentinel URLs, and the clients built from them, against real deployments."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError

from abe_redis import ConfigurationError
from abe_redis._topology import (
    ClosedTransportSafeConnection,
    SentinelMasterRedis,
    Topology,
    build_client_for_url,
    build_topology_client,
    check_access,
    hash_tag_for_slots,
    parse_cluster_flag,
    parse_topology,
)
from abe_redis_testing.servers import (
    STREAMS_BACKEND_COMMAND_NAMES,
    AclUser,
    RedisClusterHandle,
    RedisEndpoint,
    RedisSentinelHandle,
)

SECRET = "s3cret-Pa55"

# -- parsing ------------------------------------------------------------------------------------


def test_cluster_url_lists_every_seed_with_default_ports_and_ipv6() -> None:
    topology = parse_topology(f"rediss+cluster://app:{SECRET}@a:7000,b,[::1]:7002/0")
    assert topology.kind == "cluster"
    assert topology.nodes == (("a", 7000), ("b", 6379), ("::1", 7002))
    assert topology.tls is True
    assert (topology.username, topology.password, topology.db) == ("app", SECRET, 0)


def test_plain_seed_url_is_a_cluster_only_with_the_flag() -> None:
    url = "redis://:pw@10.0.0.1:7000"
    assert parse_topology(url).kind == "standalone"
    seeded = parse_topology(url, cluster=parse_cluster_flag("true"))
    assert (seeded.kind, seeded.nodes, seeded.password) == ("cluster", (("10.0.0.1", 7000),), "pw")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("ON", True), ("false", False), ("0", False), ("", False), (None, False)],
)
def test_cluster_flag_values(raw: str | None, expected: bool) -> None:
    assert parse_cluster_flag(raw) is expected


def test_bad_cluster_flag_names_the_setting() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_cluster_flag("maybe")
    assert caught.value.setting == "REDIS_CLUSTER"
    assert "true/false" in caught.value.problem


def test_sentinel_url_names_master_and_db() -> None:
    topology = parse_topology(f"redis+sentinel://:{SECRET}@s1:26379,s2,s3:26381/my-master/3")
    assert topology.kind == "sentinel"
    assert topology.nodes == (("s1", 26379), ("s2", 26379), ("s3", 26381))
    assert (topology.master_name, topology.db, topology.password, topology.username) == (
        "my-master",
        3,
        SECRET,
        None,
    )
    assert parse_topology("redis+sentinel://s1/m").db == 0


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"redis+sentinel://:{SECRET}@s1:26379", "names no master"),
        (f"redis+sentinel://:{SECRET}@s1/m/x", "database 'x'"),
        (f"redis+sentinel://:{SECRET}@s1/m/0/extra", "too many path segments"),
        (f"redis+cluster://:{SECRET}@a:7000/2", "only database 0"),
        (f"redis+cluster://:{SECRET}@a:70000", "1..65535"),
        (f"redis+cluster://:{SECRET}@a:7000,,b", "empty host"),
        (f"redis+cluster://:{SECRET}@a:7000?ssl=true", "query parameters"),
        (f"redis+cluster://:{SECRET}@[::1:7000", "IPv6 URL"),
        (f"memcached://:{SECRET}@a:11211", "unknown scheme"),
        (f"unix://:{SECRET}@/tmp/redis.sock", None),
    ],
)
def test_bad_urls_name_the_problem_without_the_password(url: str, problem: str | None) -> None:
    if problem is None:  # a unix socket is fine alone, refused only as a cluster seed
        parse_topology(url)
        with pytest.raises(ConfigurationError) as caught:
            parse_topology(url, cluster=True)
        problem = "cluster seed"
    else:
        with pytest.raises(ConfigurationError) as caught:
            parse_topology(url)
    assert caught.value.setting == "REDIS_URL"
    assert problem in caught.value.problem
    assert SECRET not in str(caught.value)
    assert "***" in str(caught.value)


def test_topology_repr_hides_the_password() -> None:
    topology = parse_topology(f"redis+cluster://app:{SECRET}@a:7000")
    assert SECRET not in repr(topology)
    assert SECRET not in topology.redacted_url
    assert "password='***'" in repr(topology)


# -- single server: client name is opt-in -------------------------------------------------------


async def test_no_client_name_unless_asked(redis_server: object) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    plain = build_client_for_url(url)
    named = build_client_for_url(url, client_name="orders-worker")
    try:
        assert isinstance(plain, Redis) and isinstance(named, Redis)
        assert await plain.client_getname() is None
        assert await named.client_getname() == "orders-worker"
    finally:
        await plain.aclose()
        await named.aclose()


# -- cluster ------------------------------------------------------------------------------------


@pytest.fixture
async def cluster_client(redis_cluster: RedisClusterHandle) -> AsyncIterator[RedisCluster]:
    client = build_client_for_url(redis_cluster.url)
    assert isinstance(client, RedisCluster)
    try:
        yield client
    finally:
        await client.aclose()


async def _round_trip(client: Redis | RedisCluster, stream: str, payload: bytes) -> None:
    """XADD, XGROUP CREATE, XREADGROUP, XACK on one stream; fails unless the entry comes back."""
    entry_id = await client.xadd(stream, {b"data": payload})
    await client.xgroup_create(stream, "workers", id="0")
    reply = await client.xreadgroup("workers", "w1", {stream: ">"}, count=10)
    ((name, entries),) = reply
    assert name == stream.encode()
    assert entries == [(entry_id, {b"data": payload})]
    assert await client.xack(stream, "workers", entry_id) == 1
    pending = await client.xpending(stream, "workers")
    assert pending["pending"] == 0


async def test_cluster_round_trip_on_streams_of_every_shard(
    redis_cluster: RedisClusterHandle, cluster_client: RedisCluster
) -> None:
    streams = [f"orders-{i}" for i in range(12)]
    owners = {redis_cluster.master_for(s).port for s in streams}
    assert len(owners) == len(redis_cluster.masters) == 3, "the streams must span every shard"
    for stream in streams:
        await _round_trip(cluster_client, stream, stream.encode())
    # Each stream lives on the master the cluster assigns its slot to, not on a default node.
    for stream in streams:
        node = redis_cluster.master_for(stream)
        direct = Redis(host=node.host, port=node.port)
        try:
            assert await direct.xlen(stream) == 1
        finally:
            await direct.aclose()


async def test_cluster_client_keeps_writing_after_a_master_is_killed(
    redis_cluster: RedisClusterHandle, cluster_client: RedisCluster
) -> None:
    stream = "payments"
    # Replication is asynchronous: WAIT makes the first entry's survival a fact, not luck. WAIT
    # counts the replicas that have the writes of its own connection, so it follows the XADD on
    # one connection to the master (on another, with no writes of its own, it would count a
    # replica that has not got the entry).
    master = redis_cluster.master_for(stream)
    async with Redis(host=master.host, port=master.port, single_connection_client=True) as direct:
        before = await direct.xadd(stream, {b"n": b"1"})
        assert await direct.execute_command("WAIT", 1, 5000) == 1
    killed = redis_cluster.kill_master(stream)
    assert redis_cluster.master_for(stream) is not killed
    after = await cluster_client.xadd(stream, {b"n": b"2"})
    entries = await cluster_client.xrange(stream)
    assert [entry_id for entry_id, _ in entries] == [before, after]


async def test_per_node_keys_land_on_the_node_whose_slots_their_tag_hashes_to(
    redis_cluster: RedisClusterHandle, cluster_client: RedisCluster
) -> None:
    masters = redis_cluster.masters
    assert len(masters) == 3
    for master in masters:
        slots = redis_cluster.slots_of(master)
        tag = hash_tag_for_slots(slots)
        assert tag == hash_tag_for_slots(slots), "every process must derive the same tag"
        key = f"abe-redis:{{{tag}}}:new-streams"
        await cluster_client.xadd(key, {b"stream": b"orders"})
        assert redis_cluster.master_for(key) is master
    with pytest.raises(ValueError, match="no slot"):
        hash_tag_for_slots([(20000, 30000)])


# -- sentinel -----------------------------------------------------------------------------------


@pytest.fixture
async def sentinel_client(redis_sentinel: RedisSentinelHandle) -> AsyncIterator[Redis]:
    client = build_client_for_url(redis_sentinel.url)
    assert isinstance(client, SentinelMasterRedis)
    try:
        yield client
    finally:
        await client.aclose()


async def test_sentinel_round_trip_reaches_the_master(
    redis_sentinel: RedisSentinelHandle, sentinel_client: Redis
) -> None:
    await _round_trip(sentinel_client, "orders", b"via sentinel")
    master = redis_sentinel.master
    direct = Redis(host=master.host, port=master.port)
    try:
        assert await direct.xlen("orders") == 1
    finally:
        await direct.aclose()


@pytest.mark.parametrize("how", ["failover", "kill_master"])
async def test_sentinel_client_follows_the_new_master(
    redis_sentinel: RedisSentinelHandle, sentinel_client: Redis, how: str
) -> None:
    old = redis_sentinel.master
    before = await sentinel_client.xadd("orders", {b"n": b"1"})
    assert await sentinel_client.execute_command("WAIT", 1, 5000) == 1
    if how == "failover":
        new = redis_sentinel.failover()
    else:
        assert redis_sentinel.kill_master() is old
        new = redis_sentinel.master
    assert new is not old
    after = await sentinel_client.xadd("orders", {b"n": b"2"})
    assert [entry_id for entry_id, _ in await sentinel_client.xrange("orders")] == [before, after]
    info = await sentinel_client.info("server")
    assert info["tcp_port"] == new.port


async def test_sentinel_with_data_and_sentinel_passwords(redis_sentinel_factory: object) -> None:
    deployment: RedisSentinelHandle = redis_sentinel_factory(  # type: ignore[operator]
        password=SECRET, sentinel_password="sentinel-" + SECRET, sentinels=1, replicas=0
    )
    assert SECRET in deployment.url and SECRET not in deployment.redacted_url
    good = build_client_for_url(deployment.url, sentinel_password="sentinel-" + SECRET)
    try:
        await check_access(good, parse_topology(deployment.url))
        await _round_trip(good, "orders", b"authenticated")
    finally:
        await good.aclose()

    # The URL's password is the data nodes' one; the sentinels' is separate (REDIS_SENTINEL_PASSWORD).
    wrong = build_client_for_url(deployment.url, sentinel_password="nope")
    try:
        with pytest.raises(ConfigurationError) as caught:
            await check_access(wrong, parse_topology(deployment.url))
    finally:
        await wrong.aclose()
    assert "REDIS_SENTINEL_PASSWORD" in caught.value.problem
    assert SECRET not in str(caught.value)

    # With REDIS_PASSWORD instead of a password in the URL.
    host, port = deployment.sentinel_addresses[0]
    bare = f"redis+sentinel://{host}:{port}/{deployment.master_name}"
    via_setting = build_client_for_url(bare, password=SECRET, sentinel_password="sentinel-" + SECRET)
    try:
        assert await via_setting.xlen("orders") == 1
    finally:
        await via_setting.aclose()


# -- ACL users ----------------------------------------------------------------------------------


async def test_acl_user_runs_the_stream_commands_without_client_setname(redis_acl_user: AclUser) -> None:
    assert "client|setname" not in STREAMS_BACKEND_COMMAND_NAMES
    client = build_client_for_url(redis_acl_user.url)
    try:
        topology = parse_topology(redis_acl_user.url)
        await check_access(client, topology, key_prefix=redis_acl_user.key_prefix)
        await _round_trip(client, "app:orders", b"least privilege")
        with pytest.raises(NoPermissionError):
            await client.xadd("other:orders", {b"k": b"v"})
    finally:
        await client.aclose()
    named = build_client_for_url(redis_acl_user.url, client_name="worker-1")
    try:
        with pytest.raises(NoPermissionError, match=r"(?i)client"):
            await named.ping()
    finally:
        await named.aclose()


async def test_wrong_password_fails_at_once_with_a_typed_error_and_no_secret(redis_acl_user: AclUser) -> None:
    wrong = redis_acl_user.url_with_password(SECRET)
    client = build_client_for_url(wrong)
    began = time.monotonic()
    try:
        with pytest.raises(ConfigurationError) as caught:
            await check_access(client, parse_topology(wrong))
    finally:
        await client.aclose()
    elapsed = time.monotonic() - began
    assert elapsed < 1.0, f"a refused password must not be retried with backoff ({elapsed:.2f}s)"
    message = str(caught.value)
    assert caught.value.setting == "REDIS_URL"
    assert "refused the credentials" in message and repr(redis_acl_user.username) in message
    assert SECRET not in message and redis_acl_user.password not in message


async def test_missing_rights_name_the_command_and_hide_the_password(redis_acl_user_factory: object) -> None:
    no_reads = [c for c in STREAMS_BACKEND_COMMAND_NAMES if c != "xlen"]
    user: AclUser = redis_acl_user_factory("no-xlen", "app:", commands=no_reads)  # type: ignore[operator]
    client = build_client_for_url(user.url)
    try:
        with pytest.raises(ConfigurationError) as caught:
            await check_access(client, parse_topology(user.url), key_prefix="app:")
    finally:
        await client.aclose()
    assert "xlen" in caught.value.problem.lower()
    assert user.password not in str(caught.value)


async def test_acl_user_outside_its_prefix_fails_the_access_check(redis_acl_user: AclUser) -> None:
    client = build_client_for_url(redis_acl_user.url)
    try:
        with pytest.raises(ConfigurationError) as caught:
            await check_access(client, parse_topology(redis_acl_user.url), key_prefix="billing:")
    finally:
        await client.aclose()
    assert "lacks a right" in caught.value.problem


def test_client_kind_follows_the_url() -> None:
    assert isinstance(build_topology_client(Topology("cluster", (("127.0.0.1", 1),))), RedisCluster)


async def test_a_fresh_cluster_client_survives_many_first_commands_at_once(
    redis_cluster: RedisClusterHandle,
) -> None:
    # redis-py 8.1's RedisCluster fails such a burst with TypeError from asyncio's transport
    # (the lazy initialize of one command closes the seed connections of the others).
    client = build_topology_client(parse_topology(redis_cluster.url), max_connections=100)
    try:
        await asyncio.gather(*(client.xadd(f"burst-{i % 12}", {b"n": b"1"}) for i in range(64)))
        lengths = [await client.xlen(f"burst-{i}") for i in range(12)]
    finally:
        await client.aclose()
    assert sum(lengths) == 64


async def test_a_write_to_a_torn_down_transport_is_a_connection_error(redis_server: RedisEndpoint) -> None:
    connection = ClosedTransportSafeConnection(host=redis_server.host, port=redis_server.port)
    await connection.connect()
    try:
        # What asyncio leaves behind once a peer's reset was processed (Python 3.12): writing
        # then raises TypeError from inside the transport, which redis-py 8.1 lets escape.
        writer: Any = connection._writer
        writer.transport._write_ready = None
        with pytest.raises(RedisConnectionError, match="closed while writing"):
            await connection.send_command("PING")
        assert not connection.is_connected
    finally:
        await connection.disconnect()


def test_every_node_of_a_cluster_client_uses_the_safe_connection() -> None:
    client = build_topology_client(parse_topology("redis+cluster://127.0.0.1:1,127.0.0.1:2"))
    assert isinstance(client, RedisCluster)
    seeds = list(client.nodes_manager.startup_nodes.values())
    assert len(seeds) == 2
    assert all(node.connection_class is ClosedTransportSafeConnection for node in seeds)
    assert client.nodes_manager.connection_kwargs["connection_class"] is ClosedTransportSafeConnection
