"""Least-privilege ACL users, and the commands a Streams backend needs."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from ._topologies import (
    _address,
    _command,
)
from .servers import (
    RedisServer,
    redact_url,
)

_UNKNOWN_ACL_COMMAND = re.compile(r"modifier '\+([^']+)': Unknown command")


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
    ("command", "cluster: redis-py reads the command table when it loads the slot map"),
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
    "STREAMS_BACKEND_COMMANDS",
    "STREAMS_BACKEND_COMMAND_NAMES",
    "AclUser",
    "acl_rules",
    "create_acl_user",
    "delete_acl_user",
]
