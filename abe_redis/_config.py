"""One typed settings object, built from the environment, a URL or keyword arguments.

Each setting is declared once, in :data:`SETTINGS`: its field, its environment variable, how the
variable is parsed and what a valid value is. Every value is validated when the object is built,
so a bad setting fails at start-up with an error that names the variable, never at the first
publish.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from ._errors import ConfigurationError
from ._redact import MASK, redact_url
from ._topology import parse_topology

ConsumeMode = Literal["group", "broadcast"]
CertRequirement = Literal["required", "optional", "none"]

_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")
TopologyKind = Literal["standalone", "cluster", "sentinel"]
_STREAM_ID = re.compile(r"^(\$|0|\d+(-\d+)?)$")

UNSET_URL = ""
"""No server named. A backend then refuses to connect rather than guess localhost:6379: a
server nobody named may belong to someone else."""
DEFAULT_KEY_PREFIX = "abe-redis:"


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Settings of a :class:`~abe_redis.RedisStreamsBackend`.

    Build it with keyword arguments, :meth:`from_url` or :meth:`from_env`. Each field's
    environment variable is listed in the configuration reference (``docs/configuration.md``).
    """

    # Connection
    url: str = field(default=UNSET_URL, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    cluster: bool = False
    cluster_partitions: int = 16
    ssl: bool | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: CertRequirement = "required"
    client_name: str | None = None
    max_connections: int = 10
    pool_timeout: float = 20.0
    socket_timeout: float | None = None
    socket_connect_timeout: float = 5.0
    retry_attempts: int = 5
    retry_backoff_base: float = 0.05
    retry_backoff_cap: float = 2.0
    # Keys the backend itself owns
    key_prefix: str = DEFAULT_KEY_PREFIX
    registry_key: str | None = None
    # Publishing
    stream_maxlen: int | None = None
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000
    # Discovery
    streams: tuple[str, ...] = ()
    stream_pattern: str | None = None
    discovery_interval_ms: int = 1000
    # Consuming
    mode: ConsumeMode = "group"
    consumer_group: str = "abe-default"
    consumer_name: str | None = None
    group_start_id: str = "0"
    block_ms: int = 1000
    batch_size: int = 100
    prefetch: int | None = None
    # Delivery guarantees
    claim_idle_ms: int = 30_000
    claim_interval_ms: int | None = None
    sweep_streams: int = 50
    max_deliveries: int = 5
    dead_letter_suffix: str = ":dead-letter"
    # Consumer runner (RedisConsumer) and retention
    consumer_concurrency: int = 1
    max_attempts: int | None = None
    retry_delay_ms: int = 1000
    retry_max_delay_ms: int = 60_000
    shutdown_grace_s: float = 30.0
    sync_handler_threads: int | None = None
    retention: str = "acked"
    retention_interval_ms: int = 60_000

    def __post_init__(self) -> None:
        if self.registry_key is None and isinstance(self.key_prefix, str):
            # Frozen: the derived default is resolved once, here.
            object.__setattr__(self, "registry_key", self.key_prefix + "streams")
        _validate(self)

    # -- derived values ------------------------------------------------------------------

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    @property
    def use_ssl(self) -> bool:
        if self.ssl is not None:
            return self.ssl
        return urlsplit(self.url).scheme.startswith("rediss")

    @property
    def topology(self) -> TopologyKind:
        """``standalone``, ``cluster`` (``redis+cluster://`` or ``REDIS_CLUSTER=true``) or
        ``sentinel`` (``redis+sentinel://``)."""
        scheme = urlsplit(self.url).scheme
        if scheme.endswith("+sentinel"):
            return "sentinel"
        if scheme.endswith("+cluster") or self.cluster:
            return "cluster"
        return "standalone"

    @property
    def effective_socket_timeout(self) -> float:
        """Socket timeout, kept above the blocking-read time so a quiet stream is not an error."""
        if self.socket_timeout is not None:
            return self.socket_timeout
        return self.block_ms / 1000 + 5.0

    @property
    def effective_claim_interval_ms(self) -> int:
        if self.claim_interval_ms is not None:
            return self.claim_interval_ms
        return max(100, min(self.claim_idle_ms // 2, 5_000))

    @property
    def effective_prefetch(self) -> int:
        """How many entries one consumer may hold at once, across all its streams."""
        return self.prefetch if self.prefetch is not None else self.batch_size

    @property
    def lease_refresh_ms(self) -> int:
        """How often a live consumer renews the idle time of everything it holds: well inside
        ``claim_idle_ms``, so a healthy consumer's messages are never claimable."""
        return max(50, min(self.claim_idle_ms // 3, 10_000))

    @property
    def keys(self) -> BackendKeys:
        return BackendKeys(self.key_prefix, str(self.registry_key))

    def dead_letter_stream(self, stream: str) -> str:
        return stream + self.dead_letter_suffix

    def is_dead_letter_stream(self, stream: str) -> bool:
        return stream.endswith(self.dead_letter_suffix)

    def is_backend_key(self, key: str) -> bool:
        """Keys the backend keeps for itself; never consumed as message streams."""
        return key == self.registry_key or key.startswith(self.key_prefix) or self.is_dead_letter_stream(key)

    # -- constructors --------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> RedisConfig:
        return cls(url=url, **overrides)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RedisConfig:
        """Read ``REDIS_*`` variables (see :data:`SETTINGS`); keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            if setting.env is None:
                continue
            raw = env.get(setting.env)
            if raw is None or raw.strip() == "":
                continue
            values[setting.name] = setting.parse(setting.env, raw.strip())
        values.update(overrides)
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> RedisConfig:
        follows_prefix = self.registry_key == self.key_prefix + "streams"
        if "key_prefix" in overrides and "registry_key" not in overrides and follows_prefix:
            # The registry key followed the old prefix; let it follow the new one.
            overrides["registry_key"] = None
        return replace(self, **overrides)

    def __repr__(self) -> str:
        shown = [f"url={self.redacted_url!r}"]
        if self.password:
            shown.append(f"password={MASK!r}")
        if self.sentinel_password:
            shown.append(f"sentinel_password={MASK!r}")
        for f in fields(self):
            if f.repr:
                shown.append(f"{f.name}={getattr(self, f.name)!r}")
        return f"RedisConfig({', '.join(shown)})"


@dataclass(frozen=True, slots=True)
class BackendKeys:
    """Every key the backend writes besides the message streams and their dead letters, under one
    prefix, so that an ACL key pattern such as ``~app:*`` covers them."""

    prefix: str
    registry: str

    @property
    def registry_version(self) -> str:
        """Incremented whenever the registry gains or loses a stream: consumers poll this one
        small key instead of re-reading the whole set."""
        return self.registry + ":version"

    @property
    def retired(self) -> str:
        return self.prefix + "retired"

    @property
    def notifications(self) -> str:
        """A short stream announcing new streams, read inside the consumers' blocking wait."""
        return self.prefix + "new-streams"

    def consumers(self, group: str) -> str:
        """Sorted set: consumer name -> the wall-clock ms after which it counts as gone."""
        return f"{self.prefix}group:{group}:consumers"

    def consumer_lock(self, group: str, name: str) -> str:
        """Held (with a TTL) by the live consumer of that name; makes names unique."""
        return f"{self.prefix}group:{group}:consumer:{name}"

    def holdings(self, group: str, name: str) -> str:
        """Set of the streams where that consumer may have pending entries."""
        return f"{self.prefix}group:{group}:holds:{name}"


# -- parsing -------------------------------------------------------------------------------


def _shown(var: str, raw: str) -> str:
    if "PASSWORD" in var:
        return MASK
    if var == "REDIS_URL":
        return redact_url(raw)
    return raw


def _int(var: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(var, _shown(var, raw), "expected an integer") from None


def _optional_int(var: str, raw: str) -> int | None:
    if raw.lower() in {"none", "off"}:
        return None
    return _int(var, raw)


def _float(var: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(var, _shown(var, raw), "expected a number of seconds") from None


def _bool(var: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(var, _shown(var, raw), "expected true/false (1/0, yes/no, on/off)")


def _str(var: str, raw: str) -> str:
    return raw


def _csv(var: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# -- checks: each returns the problem, or None when the value is fine -----------------------

Check = Callable[[Any], str | None]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: object) -> str | None:
    return None if _is_int(value) and value >= 1 else "must be a positive integer"  # type: ignore[operator]


def _non_negative_int(value: object) -> str | None:
    return None if _is_int(value) and value >= 0 else "must be a non-negative integer"  # type: ignore[operator]


def _cluster_partitions(value: object) -> str | None:
    if _is_int(value) and 1 <= value <= 1024:  # type: ignore[operator]
        return None
    return "must be an integer from 1 to 1024 (publishers and consumers must use the same value)"


def _optional_positive_int(value: object) -> str | None:
    if value is None or (_is_int(value) and value >= 1):  # type: ignore[operator]
        return None
    return "must be a positive integer (or unset)"


def _seconds(value: object) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return None if ok else "must be a positive number of seconds"


def _optional_seconds(value: object) -> str | None:
    return None if value is None else _seconds(value)


def _non_empty(value: object) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _optional_non_empty(value: object) -> str | None:
    return None if value is None else _non_empty(value)


def _one_of(*choices: str) -> Check:
    def check(value: object) -> str | None:
        return None if value in choices else f"expected one of {', '.join(choices)}"

    return check


def _optional_str(value: object) -> str | None:
    return None if value is None or isinstance(value, str) else "must be a string (or unset)"


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else "expected true or false"


def _optional_bool(value: object) -> str | None:
    return None if value is None or isinstance(value, bool) else "expected true or false"


def _stream_names(value: object) -> str | None:
    if isinstance(value, tuple) and all(isinstance(s, str) and s for s in value):
        return None
    return "must be a tuple of non-empty stream names"


def _start_id(value: object) -> str | None:
    if isinstance(value, str) and _STREAM_ID.match(value):
        return None
    return "expected '0' (deliver the backlog), '$' (only new) or a stream ID"


def _url(value: object) -> str | None:
    if value == UNSET_URL:
        return None  # checked when a connection is built (an injected client needs no URL)
    if not isinstance(value, str):
        return "must be a string"
    scheme = value.partition("://")[0].lower()
    if "+" in scheme and scheme in _SCHEMES:  # cluster and sentinel URLs: several hosts, a master
        try:
            parse_topology(value)
        except ConfigurationError as exc:
            return exc.problem
        return None
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    del port
    if parts.scheme not in _SCHEMES:
        return f"unknown scheme {parts.scheme!r}; expected one of {', '.join(s + '://' for s in _SCHEMES)}"
    if parts.scheme == "unix":
        return None if parts.path else "a unix:// URL needs the socket's path, e.g. unix:///run/redis.sock"
    if not parts.hostname:
        return f"no host in the URL; expected {parts.scheme}://host[:port][/db]"
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        return f"the path must be a database number, e.g. /0, not /{db}"
    return None


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: the field, its environment variable, how to parse it, what is valid."""

    name: str
    env: str | None
    parse: Callable[[str, str], Any]
    check: Check


SETTINGS: tuple[Setting, ...] = (
    Setting("url", "REDIS_URL", _str, _url),
    Setting("password", "REDIS_PASSWORD", _str, _optional_str),
    Setting("sentinel_password", "REDIS_SENTINEL_PASSWORD", _str, _optional_str),
    Setting("cluster", "REDIS_CLUSTER", _bool, _boolean),
    Setting("cluster_partitions", "REDIS_CLUSTER_PARTITIONS", _int, _cluster_partitions),
    Setting("ssl", "REDIS_SSL", _bool, _optional_bool),
    Setting("ssl_ca_certs", "REDIS_SSL_CA_CERTS", _str, _optional_non_empty),
    Setting("ssl_cert_reqs", "REDIS_SSL_CERT_REQS", _str, _one_of(*get_args(CertRequirement))),
    Setting("client_name", "REDIS_CLIENT_NAME", _str, _optional_non_empty),
    Setting("max_connections", "REDIS_MAX_CONNECTIONS", _int, _positive_int),
    Setting("pool_timeout", "REDIS_POOL_TIMEOUT", _float, _seconds),
    Setting("socket_timeout", "REDIS_SOCKET_TIMEOUT", _float, _optional_seconds),
    Setting("socket_connect_timeout", "REDIS_SOCKET_CONNECT_TIMEOUT", _float, _seconds),
    Setting("retry_attempts", "REDIS_RETRY_ATTEMPTS", _int, _non_negative_int),
    Setting("retry_backoff_base", None, _float, _seconds),
    Setting("retry_backoff_cap", None, _float, _seconds),
    Setting("key_prefix", "REDIS_KEY_PREFIX", _str, _non_empty),
    Setting("registry_key", "REDIS_REGISTRY_KEY", _str, _non_empty),
    Setting("stream_maxlen", "REDIS_STREAM_MAXLEN", _optional_int, _optional_positive_int),
    Setting("wait_replicas", "REDIS_WAIT_REPLICAS", _int, _non_negative_int),
    Setting("wait_timeout_ms", "REDIS_WAIT_TIMEOUT_MS", _int, _positive_int),
    Setting("streams", "REDIS_STREAMS", _csv, _stream_names),
    Setting("stream_pattern", "REDIS_STREAM_PATTERN", _str, _optional_non_empty),
    Setting("discovery_interval_ms", "REDIS_DISCOVERY_INTERVAL_MS", _int, _positive_int),
    Setting("mode", "REDIS_CONSUME_MODE", _str, _one_of(*get_args(ConsumeMode))),
    Setting("consumer_group", "REDIS_CONSUMER_GROUP", _str, _non_empty),
    Setting("consumer_name", "REDIS_CONSUMER_NAME", _str, _optional_non_empty),
    Setting("group_start_id", "REDIS_GROUP_START_ID", _str, _start_id),
    Setting("block_ms", "REDIS_BLOCK_MS", _int, _positive_int),
    Setting("batch_size", "REDIS_BATCH_SIZE", _int, _positive_int),
    Setting("prefetch", "REDIS_PREFETCH", _optional_int, _optional_positive_int),
    Setting("claim_idle_ms", "REDIS_CLAIM_IDLE_MS", _int, _non_negative_int),
    Setting("claim_interval_ms", "REDIS_CLAIM_INTERVAL_MS", _int, _optional_positive_int),
    Setting("sweep_streams", "REDIS_SWEEP_STREAMS", _int, _positive_int),
    Setting("max_deliveries", "REDIS_MAX_DELIVERIES", _int, _positive_int),
    Setting("dead_letter_suffix", "REDIS_DEAD_LETTER_SUFFIX", _str, _non_empty),
    Setting("consumer_concurrency", "REDIS_CONSUMER_CONCURRENCY", _int, _positive_int),
    Setting("max_attempts", "REDIS_MAX_ATTEMPTS", _optional_int, _optional_positive_int),
    Setting("retry_delay_ms", "REDIS_RETRY_DELAY_MS", _int, _non_negative_int),
    Setting("retry_max_delay_ms", "REDIS_RETRY_MAX_DELAY_MS", _int, _non_negative_int),
    Setting("shutdown_grace_s", "REDIS_SHUTDOWN_GRACE_S", _float, _seconds),
    Setting("sync_handler_threads", "REDIS_SYNC_HANDLER_THREADS", _optional_int, _optional_positive_int),
    Setting("retention", "REDIS_RETENTION", _str, _one_of("acked", "off")),
    Setting("retention_interval_ms", "REDIS_RETENTION_INTERVAL_MS", _int, _positive_int),
)
"""Every setting, declared once."""

_BY_NAME = {setting.name: setting for setting in SETTINGS}

ENVIRONMENT: dict[str, tuple[str, Any]] = {s.name: (s.env, s.parse) for s in SETTINGS if s.env is not None}
"""Field name -> (environment variable, parser), for settings that have a variable."""


def env_var(field_name: str) -> str:
    return ENVIRONMENT[field_name][0]


# -- validation --------------------------------------------------------------------------


def _setting_name(name: str) -> str:
    setting = _BY_NAME.get(name)
    return f"{setting.env} ({name})" if setting is not None and setting.env else name


def _fail(config: RedisConfig, name: str, problem: str) -> None:
    value: object = getattr(config, name)
    if name == "url":
        value = config.redacted_url if isinstance(value, str) else value
    elif name in ("password", "sentinel_password"):
        value = MASK
    raise ConfigurationError(_setting_name(name), value, problem)


def _is_partition_key(value: str) -> bool:
    """A partition's own prefix or registry (``…{abe-N}…``), derived by the backend itself."""
    return re.search(r"\{abe-\d+\}", value) is not None and value.count("{") == 1


def _validate(config: RedisConfig) -> None:
    for setting in SETTINGS:
        problem = setting.check(getattr(config, setting.name))
        if problem is not None:
            _fail(config, setting.name, problem)
    if config.cluster and urlsplit(config.url).scheme not in (
        "redis",
        "rediss",
        "redis+cluster",
        "rediss+cluster",
    ):
        _fail(config, "cluster", "REDIS_CLUSTER=true needs a redis:// or rediss:// seed URL")
    if config.topology == "cluster":
        for name in ("key_prefix", "registry_key"):
            value = getattr(config, name)
            if isinstance(value, str) and ("{" in value or "}" in value) and not _is_partition_key(value):
                _fail(
                    config,
                    name,
                    "may not contain '{' or '}' in a Redis Cluster: the backend adds its own hash tags "
                    "to spread its keys over the slots (see docs/scaling.md, Key placement)",
                )
    if config.socket_timeout is not None and config.socket_timeout <= config.block_ms / 1000:
        _fail(
            config,
            "socket_timeout",
            f"must be larger than the blocking read time REDIS_BLOCK_MS={config.block_ms} ms, "
            "or every quiet read would end in a timeout",
        )
