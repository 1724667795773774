"""The simulation's lean model server against a real redis-server: the Streams differential
fuzzer that holds fakeredis to Redis (``streams_differential.py``) sends the same commands to the
model, plus focused checks of the replies the backend depends on (RESP3 shapes, error texts).

Divergences the fuzzer finds go into ``MODEL_DIVERGENCES`` and get a strict-xfail test naming
the behaviour, as for fakeredis. The default run is short; ``ABE_REDIS_DIFFERENTIAL_EXAMPLES``
raises it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio as redis_async
from redis.exceptions import ResponseError

from abe_redis_testing import RedisEndpoint
from abe_redis_testing.simulation._model import ClientState, ModelServer

from .streams_differential import fresh_key, raw, run, run_differential


def _encode(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, float):
        return repr(arg).encode()
    return str(arg).encode()


class ModelClient:
    """The model behind the slice of redis-py's client interface the fuzzer uses: RESP2 replies
    as they come (no reply callbacks), errors raised."""

    def __init__(self, server: ModelServer, protocol: int = 2) -> None:
        self.server = server
        self.client: ClientState = server.new_client()
        self.client.protocol = protocol
        self.response_callbacks: dict[str, Any] = {}

    def execute_command(self, *args: Any) -> Any:
        reply = self.server.execute(self.client, [_encode(a) for a in args])
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def flushall(self) -> None:
        self.server.flushall()


def _version(real: Any) -> tuple[int, ...]:
    info = run(real, ("INFO", "server"))[1]
    line = next(part for part in info.split(b"\r\n") if part.startswith(b"redis_version:"))
    return tuple(int(p) for p in line.split(b":")[1].split(b".")[:2])


@pytest.fixture
def model(real: Any) -> ModelClient:
    # The model follows the version it is told: the real server's (7.0 and 7.2+ differ in when
    # a consumer is created and in XINFO CONSUMERS' fields).
    return ModelClient(ModelServer(version=_version(real)))


def test_the_model_answers_streams_commands_as_redis_does(real: Any, model: ModelClient) -> None:
    run_differential(
        "ModelStreamsDifferential",
        real,
        model,
        known=MODEL_DIVERGENCES,
        reply_only=MODEL_REPLY_ONLY,
        subject="the model",
    )


MODEL_DIVERGENCES: dict[str, Any] = {}
MODEL_REPLY_ONLY: set[str] = set()


_SCENARIO: tuple[tuple[Any, ...], ...] = (
    ("HELLO", 3),
    ("SET", "{k}.str", "v", "NX", "PX", 1000),
    ("SET", "{k}.str", "v", "NX", "PX", 1000),
    ("GET", "{k}.str"),
    ("PEXPIRE", "{k}.str", 1000),
    ("PEXPIRE", "{k}.missing", 1000),
    ("TYPE", "{k}.str"),
    ("TYPE", "{k}.missing"),
    ("SADD", "{k}.set", "a"),
    ("SISMEMBER", "{k}.set", "a"),
    ("SMEMBERS", "{k}.set"),
    ("ZADD", "{k}.z", "1767225601000", "m"),
    ("ZADD", "{k}.z", "1.5", "n"),
    ("ZRANGEBYSCORE", "{k}.z", "-inf", "1767225601000", "LIMIT", 0, 20, "WITHSCORES"),
    ("ZREM", "{k}.z", "n"),
    ("INCRBY", "{k}.n", 7),
    ("XADD", "{k}", "NOMKSTREAM", "*", "p", "1"),
    ("XGROUP", "CREATE", "{k}", "g", "$", "MKSTREAM"),
    ("XGROUP", "CREATE", "{k}", "g", "$", "MKSTREAM"),
    ("XADD", "{k}", "NOMKSTREAM", "1-1", "p", "1"),
    ("XADD", "{k}", "NOMKSTREAM", "1-1", "p", "1"),
    ("XADD", "{k}", "MAXLEN", "~", 1000, "2-1", "p", "2"),
    ("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "BLOCK", 50, "STREAMS", "{k}", ">"),
    ("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "STREAMS", "{k}", ">"),
    ("XREADGROUP", "GROUP", "g2", "c", "COUNT", 10, "STREAMS", "{k}", ">"),
    ("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "STREAMS", "{k}.missing", ">"),
    ("XPENDING", "{k}", "g", "-", "+", 10, "c"),
    ("XPENDING", "{k}", "g", "IDLE", 0, "-", "+", 10),
    ("XPENDING", "{k}", "g"),
    ("XPENDING", "{k}", "g9"),
    ("XCLAIM", "{k}", "g", "d", 0, "1-1", "9-9", "JUSTID"),
    ("XCLAIM", "{k}", "g", "d", 0, "1-1", "IDLE", 1000, "RETRYCOUNT", 1, "JUSTID"),
    ("XCLAIM", "{k}", "g", "d", 100000, "1-1", "JUSTID"),
    ("XCLAIM", "{k}", "g", "d", 0, "2-1"),
    ("XPENDING", "{k}", "g", "-", "+", 10),
    ("XACK", "{k}", "g", "1-1", "9-9"),
    ("XACK", "{k}.missing", "g", "1-1"),
    ("XGROUP", "DELCONSUMER", "{k}", "g", "d"),
    ("XGROUP", "DELCONSUMER", "{k}", "g9", "d"),
    ("XRANGE", "{k}", "2-1", "2-1", "COUNT", 1),
    ("XREVRANGE", "{k}", "+", "-", "COUNT", 1),
    ("GET", "{k}"),
    ("XADD", "{k}.str", "*", "a", "b"),
    ("WATCH", "{k}.str"),
    ("MULTI",),
    ("SET", "{k}.str", "w"),
    ("GET", "{k}"),
    ("EXEC",),
    ("EXEC",),
)


def _masked(reply: Any) -> Any:
    if isinstance(reply, dict):
        return {k: "<id>" if k in (b"id", b"version") else _masked(v) for k, v in reply.items()}
    if isinstance(reply, list):
        return [_masked(item) for item in reply]
    if isinstance(reply, ResponseError):
        return ("error", type(reply).__name__, str(reply))
    return reply


async def _replies(connection: Any, key: str) -> list[Any]:
    replies = []
    for command in _SCENARIO:
        args = [a.format(k=key) if isinstance(a, str) else a for a in command]
        await connection.send_command(*args)
        try:
            reply = await connection.read_response()
        except ResponseError as exc:
            reply = exc
        replies.append(_masked(reply))
    return replies


def test_replies_the_backend_reads_are_what_redis_py_parses_from_redis(redis_server: RedisEndpoint) -> None:
    """The replies as the simulation's connections receive them: RESP3 through redis-py's parser
    from Redis, straight from the model; idle times masked by choosing commands that show none."""
    if redis_server.kind != "redis-server":
        pytest.skip(f"compares with redis-server, got {redis_server.kind}")

    async def from_redis(key: str) -> list[Any]:
        client = redis_async.Redis.from_url(redis_server.url, protocol=3)
        try:
            connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                return await _replies(connection, key)
            finally:
                await client.connection_pool.release(connection)
        finally:
            await client.aclose()

    sync_real = raw(redis.Redis.from_url(redis_server.url, protocol=2))
    try:
        with fresh_key(sync_real) as key:
            expected = asyncio.run(from_redis(key))
            model = ModelServer(version=_version(sync_real))
            client = model.new_client()
            got = []
            for command in _SCENARIO:
                args = [_encode(a.format(k=key) if isinstance(a, str) else a) for a in command]
                got.append(_masked(model.execute(client, args)))
    finally:
        sync_real.close()
    # XPENDING's extended form carries idle times: compare them masked.
    for index, command in enumerate(_SCENARIO):
        if command[0] == "XPENDING" and len(command) > 3:
            for replies in (expected, got):
                if isinstance(replies[index], list):
                    replies[index] = [[e[0], e[1], "<idle>", e[3]] for e in replies[index]]
    mismatches = [
        f"{' '.join(map(str, command))}:\n  redis: {want!r}\n  model: {have!r}"
        for command, want, have in zip(_SCENARIO, expected, got, strict=True)
        if want != have
    ]
    assert not mismatches, "\n".join(mismatches)


def _two_clients(real_url: str, version: tuple[int, ...]) -> tuple[Any, Any, ModelClient, ModelClient]:
    first = raw(redis.Redis.from_url(real_url, protocol=2, single_connection_client=True))
    second = raw(redis.Redis.from_url(real_url, protocol=2, single_connection_client=True))
    server = ModelServer(version=version)
    return first, second, ModelClient(server), ModelClient(server)


def test_watch_multi_exec_across_two_connections_as_on_redis(redis_server: RedisEndpoint) -> None:
    """The engine's name locks and registry: a transaction fails (EXEC answers nil) when another
    connection wrote a watched key, expired keys read as gone, as on Redis."""
    if redis_server.kind != "redis-server":
        pytest.skip(f"compares with redis-server, got {redis_server.kind}")
    real_a, real_b, model_a, model_b = _two_clients(redis_server.url, (7, 0))
    key = f"abe-diff.{uuid.uuid4().hex[:8]}.lock"
    steps: tuple[tuple[str, tuple[Any, ...]], ...] = (
        ("a", ("SET", key, "mine", "NX", "PX", 60_000)),
        ("a", ("WATCH", key)),
        ("a", ("GET", key)),
        ("b", ("PEXPIRE", key, 60_000)),  # another connection writes the watched key
        ("a", ("MULTI",)),
        ("a", ("DEL", key)),
        ("a", ("EXEC",)),  # nil: the transaction did not run
        ("a", ("GET", key)),
        ("a", ("WATCH", key)),
        ("a", ("MULTI",)),
        ("a", ("DEL", key)),
        ("a", ("EXEC",)),  # untouched: it ran
        ("a", ("SET", key, "v", "PX", 50)),
    )
    try:
        replies = []
        for who, command in steps:
            real, model = (real_a, model_a) if who == "a" else (real_b, model_b)
            replies.append((command, run(real, command), run(model, command)))
        time.sleep(0.12)  # past the 50 ms expiry, for both (the model reads the real clock here)
        for command in (("GET", key), ("EXISTS", key), ("TYPE", key), ("SET", key, "w", "NX")):
            replies.append((command, run(real_a, command), run(model_a, command)))
    finally:
        real_a.delete(key)
        real_a.close()
        real_b.close()
    mismatches = [f"{c}: redis {r!r}, model {m!r}" for c, r, m in replies if r != m]
    assert not mismatches, "\n".join(mismatches)
    assert replies[6][1] == ("ok", None)  # the failed EXEC, as Redis answered it


_CLAIMS: tuple[tuple[Any, ...], ...] = (
    ("XADD", "{k}", "1-0", "f", "v"),
    ("XADD", "{k}", "2-0", "f", "v"),
    ("XADD", "{k}", "3-0", "f", "v"),
    ("XGROUP", "CREATE", "{k}", "g", "0"),
    ("XREADGROUP", "GROUP", "g", "a", "COUNT", 3, "STREAMS", "{k}", ">"),
    ("XCLAIM", "{k}", "g", "b", 0, "1-0", "2-0", "JUSTID"),
    ("XPENDING", "{k}", "g", "-", "+", 10),
    ("XCLAIM", "{k}", "g", "c", 0, "1-0", "RETRYCOUNT", 7, "JUSTID"),
    ("XCLAIM", "{k}", "g", "c", 0, "2-0", "IDLE", 5000, "RETRYCOUNT", 1, "JUSTID"),
    ("XPENDING", "{k}", "g", "IDLE", 4000, "-", "+", 10),
    ("XCLAIM", "{k}", "g", "d", 4000, "1-0", "2-0", "3-0", "JUSTID"),
    ("XCLAIM", "{k}", "g", "d", 0, "3-0"),
    ("XPENDING", "{k}", "g", "-", "+", 10),
    ("XCLAIM", "{k}", "g", "e", 0, "3-0", "TIME", 1, "RETRYCOUNT", 0),
    ("XPENDING", "{k}", "g", "IDLE", 100000, "-", "+", 10),
    ("XACK", "{k}", "g", "1-0"),
    ("XCLAIM", "{k}", "g", "e", 0, "1-0", "FORCE", "JUSTID"),
    ("XPENDING", "{k}", "g", "-", "+", 10),
    ("XCLAIM", "{k}", "g", "e", 0, "1-0", "LASTID", "9-0", "JUSTID"),
    ("XAUTOCLAIM", "{k}", "g", "z", 0, "0-0", "COUNT", 1),
    ("XAUTOCLAIM", "{k}", "g", "z", 0, "2-0", "COUNT", 5, "JUSTID"),
    ("XPENDING", "{k}", "g"),
    ("XGROUP", "SETID", "{k}", "g", "0"),
    ("XREADGROUP", "GROUP", "g", "y", "COUNT", 1, "STREAMS", "{k}", ">"),
    ("XPENDING", "{k}", "g", "-", "+", 10),
)


def test_claim_options_set_counts_and_idle_times_as_on_redis(real: Any, model: ModelClient) -> None:
    """The options the engine's leases and recovery rely on (RETRYCOUNT, IDLE, TIME, min-idle,
    FORCE, LASTID, XAUTOCLAIM's cursor, a re-read after SETID), which the fuzzer does not send:
    delivery counts exact, idle times compared as above or below the thresholds used."""

    def reply(client: Any, command: tuple[Any, ...]) -> Any:
        try:
            answer = client.execute_command(*command)
        except ResponseError as exc:
            return ("error", str(exc))
        if command[0] == "XPENDING" and len(command) > 3:
            return [[e[0], e[1], e[2] >= 4000, e[3]] for e in answer]
        return answer

    with fresh_key(real) as key:
        commands = [tuple(a.format(k=key) if isinstance(a, str) else a for a in c) for c in _CLAIMS]
        pairs = [(c, reply(real, c), reply(model, c)) for c in commands]
    mismatches = [f"{' '.join(map(str, c))}:\n  redis: {r!r}\n  model: {m!r}" for c, r, m in pairs if r != m]
    assert not mismatches, "\n".join(mismatches)
