"""Which Redis deployment a URL names — one server, a Cluster or a Sentinel-watched master — and
the redis-py client for it.

URL forms:

- ``redis://`` / ``rediss://`` / ``unix://``: one server (or a cluster seed with ``REDIS_CLUSTER=true``);
- ``redis+cluster://[user:password@]host:port[,host:port…][/0]`` (``rediss+cluster://`` for TLS): any
  nodes of a cluster as seeds;
- ``redis+sentinel://[user:password@]host:port[,host:port…]/<master-name>[/<db>]``
  (``rediss+sentinel://`` for TLS): the sentinels, the name they monitor the master under, and the
  database; the password in the URL is the data nodes' one, the sentinels' own is passed apart.

Every error is a :class:`~abe_redis.ConfigurationError` naming the setting, with the URL redacted.
"""

from __future__ import annotations

import os
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import EqualJitterBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    NoPermissionError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._codec import to_str
from ._errors import ConfigurationError
from ._redact import MASK, redact_text, redact_url

TopologyKind = Literal["standalone", "cluster", "sentinel"]
CertRequirement = Literal["required", "optional", "none"]

URL_SETTING = "REDIS_URL"
CLUSTER_SETTING = "REDIS_CLUSTER"
PASSWORD_SETTING = "REDIS_PASSWORD"
SENTINEL_PASSWORD_SETTING = "REDIS_SENTINEL_PASSWORD"

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379

_STANDALONE = {"redis": False, "rediss": True, "unix": False}
_CLUSTER = {"redis+cluster": False, "rediss+cluster": True}
_SENTINEL = {"redis+sentinel": False, "rediss+sentinel": True}
_CERT_REQS = {
    "required": ssl_module.CERT_REQUIRED,
    "optional": ssl_module.CERT_OPTIONAL,
    "none": ssl_module.CERT_NONE,
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

Client = Redis | RedisCluster
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Topology:
    """What a URL names. ``nodes`` are the one server, the cluster seeds or the sentinels."""

    kind: TopologyKind
    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    master_name: str | None = None
    url: str = field(default="", repr=False)

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        secret = f", password={MASK!r}" if self.password else ""
        return (
            f"Topology(kind={self.kind!r}, nodes={self.nodes!r}, tls={self.tls}, db={self.db}, "
            f"master_name={self.master_name!r}, username={self.username!r}{secret})"
        )


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def parse_cluster_flag(raw: str | bool | None, *, setting: str = CLUSTER_SETTING) -> bool:
    """``REDIS_CLUSTER``: true/false (1/0, yes/no, on/off); unset means false."""
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(setting, raw, "expected true/false (1/0, yes/no, on/off)")


def parse_topology(url: str, *, cluster: bool = False, setting: str = URL_SETTING) -> Topology:
    """The deployment ``url`` names; ``cluster=True`` (``REDIS_CLUSTER=true``) reads a plain
    ``redis://`` / ``rediss://`` URL as a cluster seed. Raises :class:`ConfigurationError`."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(setting, url, "must be a non-empty URL")

    def fail(problem: str) -> ConfigurationError:
        return ConfigurationError(setting, redact_url(url), problem)

    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise fail("not a URL; expected e.g. redis://host:6379/0 or redis+cluster://host:port,host:port")
    known = {**_STANDALONE, **_CLUSTER, **_SENTINEL}
    if scheme not in known:
        expected = ", ".join(s + "://" for s in known)
        raise fail(f"unknown scheme {scheme!r}; expected one of {expected}")
    if scheme in _STANDALONE and not cluster:
        return _standalone(url, scheme, fail)
    if scheme == "unix":
        raise fail("a unix socket cannot be a cluster seed (REDIS_CLUSTER=true needs redis:// or rediss://)")

    tls = known[scheme]
    try:
        parts = urlsplit("//" + rest)
    except ValueError as exc:
        raise fail(f"not a valid URL ({exc})") from None
    if parts.query or parts.fragment:
        raise fail("query parameters are not read on cluster or sentinel URLs; use the REDIS_* settings")
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username, password = _userinfo(userinfo) if at else (None, None)
    sentinel = scheme in _SENTINEL
    nodes = _hosts(hostlist, DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_PORT, fail)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if sentinel:
        if not segments:
            raise fail("names no master; expected redis+sentinel://host:port,…/<master-name>[/<db>]")
        if len(segments) > 2:
            raise fail("too many path segments; expected /<master-name>[/<db>]")
        db = _db(segments[1], fail) if len(segments) == 2 else 0
        return Topology("sentinel", nodes, tls, username, password, db, segments[0], url)
    if len(segments) > 1 or (segments and _db(segments[0], fail) != 0):
        raise fail("Redis Cluster has only database 0; drop the path or use /0")
    return Topology("cluster", nodes, tls, username, password, 0, None, url)


def _standalone(url: str, scheme: str, fail: Any) -> Topology:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise fail(f"not a valid URL ({exc})") from None
    if scheme == "unix":
        return Topology("standalone", (), False, None, parts.password, 0, None, url)
    path = parts.path.strip("/")
    db = _db(path, fail) if path else 0
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    host = parts.hostname or "localhost"
    return Topology(
        "standalone", ((host, port or DEFAULT_PORT),), _STANDALONE[scheme], username, password, db, None, url
    )


def _userinfo(userinfo: str) -> tuple[str | None, str | None]:
    user, sep, password = userinfo.partition(":")
    if not sep:
        # Like redis-py, a bare ``secret@host`` is a password without a user name.
        return None, unquote(user) or None
    return unquote(user) or None, unquote(password)


def _hosts(hostlist: str, default_port: int, fail: Any) -> tuple[tuple[str, int], ...]:
    nodes: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            raise fail("an empty host in the host list")
        if item.startswith("["):
            host, close, tail = item[1:].partition("]")
            if not close or (tail and not tail.startswith(":")):
                raise fail(f"malformed IPv6 address {item!r}")
            port_text = tail[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise fail(f"no host in {item!r}")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise fail(f"port {port_text!r} of {host} is not a number in 1..65535")
            port = int(port_text)
        else:
            port = default_port
        nodes.append((host, port))
    return tuple(nodes)


def _db(text: str, fail: Any) -> int:
    if not text.isdigit():
        raise fail(f"database {text!r} must be a non-negative integer")
    return int(text)


# ---------------------------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------------------------


def build_retry(attempts: int = 5, backoff_base: float = 0.05, backoff_cap: float = 2.0) -> Retry:
    """redis-py's Retry with exponential backoff and jitter, for connection-level failures
    (never for refused credentials, see :class:`ConnectionRetry`)."""
    return ConnectionRetry(
        EqualJitterBackoff(cap=backoff_cap, base=backoff_base),
        retries=attempts,
        supported_errors=(RedisConnectionError, RedisTimeoutError, BusyLoadingError),
    )


class ConnectionRetry(Retry):
    """Retry with backoff, except when the server refused the credentials: a wrong password
    stays wrong, so it fails at once instead of after every backoff step."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[_T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> _T:
        def retryable(error: Exception) -> bool:
            if isinstance(error, AuthenticationError | AuthorizationError):
                return False
            return is_retryable(error) if is_retryable is not None else True

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def _from_closed_transport(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside asyncio's transport: the mark of a write to a
    connection whose socket was already torn down (redis/redis-py#4287)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.sep}asyncio{os.sep}" in tb.tb_frame.f_code.co_filename


class ClosedTransportSafeConnection(Connection):
    """A write to a connection the peer (or a cluster client's slot-map reload) closed raises
    ``ConnectionError``, as any other dead connection does.

    redis-py 8.1 lets asyncio's ``TypeError: 'NoneType' object is not callable`` (or an
    ``AttributeError`` on Python 3.13) escape instead; neither is retried, so a cluster
    consumer died of it when a master failed over under it (redis/redis-py#4287). As a
    ``ConnectionError`` it is retried like any other, on the node the slot map names now.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (TypeError, AttributeError) as exc:
            if not _from_closed_transport(exc):
                raise
            await self.disconnect(nowait=True)
            raise RedisConnectionError(
                f"the connection to {self.host}:{self.port} was closed while writing to it"
            ) from exc


class ClosedTransportSafeSSLConnection(ClosedTransportSafeConnection, SSLConnection):
    pass


class _MasterFollowingConnection(SentinelManagedConnection, ClosedTransportSafeConnection):
    """Asks the sentinels for the master on *every* socket connect.

    redis-py 8 reconnects a dropped connection through ``connect_check_health``, which skips the
    sentinel lookup in ``SentinelManagedConnection.connect`` and dials the old address again — after
    a failover, the demoted master — until the retries run out (redis/redis-py#3874).
    """

    async def _connect(self) -> None:
        if self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super()._connect()  # type: ignore[no-untyped-call]


class _MasterFollowingSSLConnection(_MasterFollowingConnection, SSLConnection):
    pass


class InitializedFirstCluster(RedisCluster):
    """A ``RedisCluster`` that loads its slot map before anything else a command does.

    redis-py 8.1 resolves a command's routing policy on the seed node *before* its lazy
    ``initialize()``; when many first commands run at once, the initialize of one replaces the
    seed nodes and closes the connections the others are writing to, and they fail with
    ``TypeError: 'NoneType' object is not callable`` from asyncio's transport (a service that
    starts with concurrent publishes, or two consumers starting together). ``initialize()`` is
    locked and idempotent, so awaiting it first costs one flag check once it has run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # RedisCluster takes no connection class; every node (the seeds now, the ones its slot
        # map finds later) is built from these keyword arguments.
        tls = self.connection_kwargs.get("connection_class") is SSLConnection
        safe = ClosedTransportSafeSSLConnection if tls else ClosedTransportSafeConnection
        self.connection_kwargs["connection_class"] = safe
        self.nodes_manager.connection_kwargs["connection_class"] = safe
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = safe

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    async def _determine_slot(self, command: str, *args: Any) -> int:
        """The slot of an ``XREAD``/``XREADGROUP`` read from its ``STREAMS`` keys, here.

        redis-py asks a node ``COMMAND GETKEYS`` for a command with "movable" keys, twice per
        command (to pick the routing policy, then the node): a consumer's every read would cost
        three round trips instead of one.
        """
        if str(command).upper() in _STREAM_READS:
            # XREADGROUP GROUP <group> <consumer> …: a group or consumer named STREAMS is no keyword.
            keys = _stream_read_keys(args[3:] if str(command).upper() == "XREADGROUP" else args)
            if keys:
                slots = {self.keyslot(key) for key in keys}
                if len(slots) != 1:
                    raise RedisClusterException(f"{command} - all keys must map to the same key slot")
                return slots.pop()
        return await super()._determine_slot(command, *args)


_STREAM_READS = frozenset({"XREAD", "XREADGROUP"})


def _stream_read_keys(args: Sequence[Any]) -> list[Any]:
    """The stream names of ``XREAD[GROUP] … STREAMS k1 … kn id1 … idn`` (after its command name)."""
    for index, arg in enumerate(args):
        word = to_str(arg) if isinstance(arg, bytes) else arg
        if isinstance(word, str) and word.upper() == "STREAMS":
            rest = args[index + 1 :]
            return list(rest[: len(rest) // 2])
    return []


async def wait_node(client: Any, key: str) -> ClusterNode | None:
    """The cluster node serving ``key``, for a ``WAIT`` that must run on the connection of that
    key's writes; None for a client of one server (or a Sentinel master), where it always does."""
    if not isinstance(client, RedisCluster):
        return None
    await client.initialize()
    return client.get_node_from_key(key)


async def still_serves(client: Any, node: ClusterNode, key: str) -> bool:
    """Whether ``node`` still serves ``key`` (a ``MOVED`` since :func:`wait_node` reloaded the map)."""
    current = client.get_node_from_key(key)
    return current is not None and current.name == node.name


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel master's pool that makes a caller beyond ``max_connections`` wait (up to
    ``timeout``) like the one-server pool does; redis-py's own raises ``MaxConnectionsError``, which
    failed concurrent commands (a registry update during a burst of publishes)."""


class SentinelMasterRedis(Redis):
    """The client ``Sentinel.master_for`` returns, closing the sentinel connections with its own."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()


def build_topology_client(
    topology: Topology,
    *,
    password: str | None = None,
    sentinel_password: str | None = None,
    sentinel_username: str | None = None,
    client_name: str | None = None,
    retry: Retry | None = None,
    max_connections: int = 10,
    pool_timeout: float = 20.0,
    socket_timeout: float | None = None,
    socket_connect_timeout: float = 5.0,
    health_check_interval: float = 30,
    ssl: bool | None = None,
    ssl_ca_certs: str | None = None,
    ssl_cert_reqs: CertRequirement = "required",
    decode_responses: bool = False,
) -> Client:
    """The redis-py asyncio client for ``topology``.

    - standalone: ``Redis`` over a ``BlockingConnectionPool`` (a burst waits for a connection);
    - cluster: ``RedisCluster`` with every URL node as a startup node (redis-py follows
      ``MOVED``/``ASK`` and reloads the slot map after a failover);
    - sentinel: ``Sentinel(...).master_for(master_name)``, which asks the sentinels for the
      master on every new connection and drops connections to a demoted one.

    ``password`` is used when the URL carries none (``REDIS_PASSWORD``); ``sentinel_password``
    authenticates to the sentinels only. No ``CLIENT SETNAME`` is sent unless ``client_name``
    is given, so a user without that right can connect.
    """
    if retry is None:
        retry = build_retry()
    secret = topology.password if topology.password is not None else password
    use_tls = topology.tls if ssl is None else ssl
    common: dict[str, Any] = {
        "username": topology.username,
        "password": secret,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": health_check_interval,
        "retry": retry,
        "decode_responses": decode_responses,
    }
    if client_name is not None:
        common["client_name"] = client_name
    tls: dict[str, Any] = {}
    if use_tls:
        tls = {"ssl": True, "ssl_cert_reqs": _CERT_REQS[ssl_cert_reqs]}
        if ssl_ca_certs:
            tls["ssl_ca_certs"] = ssl_ca_certs

    if topology.kind == "cluster":
        return InitializedFirstCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in topology.nodes],
            max_connections=max_connections,
            **common,
            **tls,
        )
    if topology.kind == "sentinel":
        assert topology.master_name is not None
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": socket_connect_timeout if socket_timeout is None else socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            "retry": retry,
            **tls,
        }
        if sentinel_password is not None:
            sentinel_kwargs["password"] = sentinel_password
        if sentinel_username is not None:
            sentinel_kwargs["username"] = sentinel_username
        sentinel = Sentinel(list(topology.nodes), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        data_tls = {k: v for k, v in tls.items() if k != "ssl"}
        client: Redis = sentinel.master_for(
            topology.master_name,
            redis_class=SentinelMasterRedis,
            connection_pool_class=_BlockingSentinelPool,
            connection_class=_MasterFollowingSSLConnection if use_tls else _MasterFollowingConnection,
            db=topology.db,
            max_connections=max_connections,
            timeout=pool_timeout,
            **common,
            **data_tls,
        )
        return client

    url = topology.url
    if use_tls and url.startswith("redis://"):
        url = "rediss://" + url[len("redis://") :]
    kwargs = dict(common, max_connections=max_connections, timeout=pool_timeout)
    if topology.password is not None or password is None:
        del kwargs["password"]  # the URL's own wins (redis-py reads it from the URL)
    if topology.username is None:
        del kwargs["username"]
    if use_tls:
        kwargs["ssl_cert_reqs"] = tls["ssl_cert_reqs"]
        if ssl_ca_certs:
            kwargs["ssl_ca_certs"] = ssl_ca_certs
    return Redis(connection_pool=BlockingConnectionPool.from_url(url, **kwargs))


def build_client_for_url(
    url: str,
    *,
    cluster: bool | str | None = False,
    password: str | None = None,
    sentinel_password: str | None = None,
    **options: Any,
) -> Client:
    """:func:`parse_topology` + :func:`build_topology_client` in one call; ``cluster`` takes the
    raw ``REDIS_CLUSTER`` value too."""
    topology = parse_topology(url, cluster=parse_cluster_flag(cluster))
    return build_topology_client(topology, password=password, sentinel_password=sentinel_password, **options)


# ---------------------------------------------------------------------------------------------
# Keys that live on a chosen cluster node
# ---------------------------------------------------------------------------------------------

CLUSTER_SLOTS = 16384


def hash_tag_for_slots(slot_ranges: Sequence[tuple[int, int]], *, prefix: str = "abe-node-") -> str:
    """A hash tag (the text to put between ``{`` and ``}``) whose slot lies in ``slot_ranges``.

    Keys named ``…{tag}…`` then live on the node serving those slots: a per-node registry or
    notification key. The first ``prefix<N>`` that fits is returned, so every process derives the
    same tag from the same slot map. After resharding moves the slot, derive it again.
    """
    ranges = [(lo, hi) for lo, hi in slot_ranges if 0 <= lo <= hi < CLUSTER_SLOTS]
    if not ranges:
        raise ValueError(f"no slot in 0..{CLUSTER_SLOTS - 1} among {list(slot_ranges)!r}")
    for n in range(CLUSTER_SLOTS * 64):
        tag = f"{prefix}{n}"
        slot = key_slot(tag.encode())
        if any(lo <= slot <= hi for lo, hi in ranges):
            return tag
    raise ValueError(f"no tag {prefix}N hashes into {ranges!r}")  # pragma: no cover - a slot always fits


# ---------------------------------------------------------------------------------------------
# Access check
# ---------------------------------------------------------------------------------------------

DEFAULT_PROBE_COMMANDS: tuple[str, ...] = ("xlen", "smembers", "exists")


async def check_access(
    client: Client,
    topology: Topology,
    *,
    key_prefix: str | None = None,
    secrets: Sequence[str | None] = (),
) -> None:
    """Fail at once, with a :class:`ConfigurationError` and no secret in it, when the server
    refuses the credentials or (with ``key_prefix``) the user may not read keys under it.

    Sends ``PING`` (which logs in), then read-only probes on ``<key_prefix>abe-redis:probe``:
    ``XLEN``, ``SMEMBERS``, ``EXISTS``. Write rights show at the first write as
    ``NoPermissionError`` naming the command; probing them here would write.
    """
    hidden = (topology.password, *secrets)
    try:
        await client.ping()
        if key_prefix is not None:
            probe = f"{key_prefix}abe-redis:probe"
            await client.xlen(probe)
            await client.smembers(probe)
            await client.exists(probe)
    except MasterNotFoundError as exc:
        raise ConfigurationError(
            URL_SETTING,
            topology.redacted_url,
            f"no sentinel named a master for {topology.master_name!r} ({redact_text(str(exc), hidden)}): "
            f"check the master name, that a sentinel is reachable, and {SENTINEL_PASSWORD_SETTING}",
        ) from None
    except (AuthenticationError, AuthorizationError) as exc:
        who = f"user {topology.username!r}" if topology.username else "the default user"
        raise ConfigurationError(
            _credential_setting(topology),
            topology.redacted_url,
            f"the server refused the credentials of {who}: {redact_text(str(exc), hidden)}",
        ) from None
    except NoPermissionError as exc:
        raise ConfigurationError(
            URL_SETTING,
            topology.redacted_url,
            f"the user lacks a right the backend needs: {redact_text(str(exc), hidden)}",
        ) from None
    except ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ConfigurationError(
                _credential_setting(topology),
                topology.redacted_url,
                f"authentication failed: {redact_text(str(exc), hidden)}",
            ) from None
        raise


def _credential_setting(topology: Topology) -> str:
    return URL_SETTING if topology.password is not None else f"{URL_SETTING} / {PASSWORD_SETTING}"


__all__ = [
    "CLUSTER_SETTING",
    "SENTINEL_PASSWORD_SETTING",
    "Client",
    "ConnectionRetry",
    "SentinelMasterRedis",
    "Topology",
    "TopologyKind",
    "build_client_for_url",
    "build_retry",
    "build_topology_client",
    "check_access",
    "hash_tag_for_slots",
    "parse_cluster_flag",
    "parse_topology",
]
