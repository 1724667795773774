"""The ACL-user fixture and the documented command list a Streams backend needs."""

from __future__ import annotations

import pytest
import redis

from abe_redis import DeadLetters, RedisStreamsBackend
from abe_redis_testing._plugin_servers import AclUserFactory
from abe_redis_testing.servers import (
    STREAMS_BACKEND_COMMAND_NAMES,
    AclUser,
    RedisServer,
    acl_rules,
)


def test_rules_confine_keys_and_channels_to_the_prefix() -> None:
    rules = acl_rules("app:", commands=["xadd", "xack"])
    assert rules == ["reset", "~app:*", "resetchannels", "&app:*", "-@all", "+xadd", "+xack"]
    with pytest.raises(ValueError, match="non-empty"):
        acl_rules("")


def test_user_works_inside_its_prefix_and_nowhere_else(redis_acl_user: AclUser) -> None:
    assert redis_acl_user.password not in repr(redis_acl_user)
    with redis.Redis.from_url(redis_acl_user.url) as client:
        assert client.ping() is True
        client.xadd("app:orders", {"k": "v"})
        client.xgroup_create("app:orders", "g", id="0")
        assert client.xreadgroup("g", "c", {"app:orders": ">"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.xadd("billing:orders", {"k": "v"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.config_get("requirepass")


def test_factory_deletes_its_users_and_flushes_on_close(redis_acl_server: RedisServer) -> None:
    factory = AclUserFactory(redis_acl_server)
    user = factory("reader", "ro:", commands=["xrange", "xadd", "ping"])
    with redis.Redis.from_url(user.url) as client:
        client.xadd("ro:stream", {"k": "v"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.xlen("ro:stream")
    factory.close()
    with redis.Redis(host=redis_acl_server.host, port=redis_acl_server.port) as admin:
        assert admin.dbsize() == 0
        assert b"reader" not in admin.acl_users()


async def test_backend_uses_only_documented_commands(redis_server_handle: RedisServer) -> None:
    """Publish, consume, acknowledge, dead-letter and purge through the public API, then compare
    what the server counted (INFO commandstats) with the documented list. A new command in the
    backend fails this test until it is added to ``STREAMS_BACKEND_COMMANDS`` and the docs."""
    url = redis_server_handle.url
    async with RedisStreamsBackend.from_url(url, block_ms=100) as backend:
        await backend.publish("orders", {"n": 1})
        with redis.Redis.from_url(url) as admin:
            admin.xadd("orders", {"not-a-payload": "x"})  # poison: goes to the dead letters
            admin.config_resetstat()
        await backend.publish("orders", {"n": 2})
        stream = backend.consume(group="workers")
        got = [dict(await anext(stream)), dict(await anext(stream))]
        await stream.aclose()
        assert got == [{"n": 1}, {"n": 2}]
        dead = DeadLetters(backend)
        (key,) = await dead.keys()
        assert await dead.count(key) == 1
        await dead.purge(key)
    with redis.Redis.from_url(url, decode_responses=True) as admin:
        stats = admin.info("commandstats")
    used = {name.removeprefix("cmdstat_") for name in stats}
    # The admin connection's own commands and CLIENT SETNAME (optional, off with no client name).
    used -= {"config|resetstat", "info", "client|setname"}
    undocumented = used - set(STREAMS_BACKEND_COMMAND_NAMES)
    assert not undocumented, f"commands used but not in STREAMS_BACKEND_COMMANDS: {sorted(undocumented)}"


async def test_backend_runs_as_the_least_privilege_user(redis_acl_user: AclUser) -> None:
    """Publish, consume, dead-letter and purge as a user confined to ``app:`` and the documented
    commands, with every key the backend writes under ``REDIS_KEY_PREFIX``."""
    async with RedisStreamsBackend.from_url(
        redis_acl_user.url, key_prefix="app:abe:", block_ms=100
    ) as backend:
        await backend.publish("app:orders", {"n": 1})
        with redis.Redis(host=redis_acl_user.host, port=redis_acl_user.port) as admin:
            admin.xadd("app:orders", {"not-a-payload": "x"})
        await backend.publish("app:orders", {"n": 2})
        stream = backend.consume(group="workers")
        got = [dict(await anext(stream)), dict(await anext(stream))]
        await stream.aclose()
        assert got == [{"n": 1}, {"n": 2}]
        dead = DeadLetters(backend)
        (key,) = await dead.keys()
        assert key.startswith("app:") and await dead.count(key) == 1
        await dead.purge(key)
    with redis.Redis(host=redis_acl_user.host, port=redis_acl_user.port, decode_responses=True) as admin:
        outside = [k for k in admin.scan_iter() if not k.startswith("app:")]
    assert outside == [], f"the backend wrote keys outside its prefix: {outside}"
