"""One typed settings object, built from the environment, a URL or keyword arguments.

Every value is validated when the object is built, so a bad setting fails at start-up with an
error that names the variable, never at the first publish.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from ._errors import ConfigurationError
from ._redact import MASK, redact_url

ConsumeMode = Literal["group", "broadcast"]
CertRequirement = Literal["required", "optional", "none"]

_SCHEMES = ("redis", "rediss", "unix")
_STREAM_ID = re.compile(r"^(\$|0|\d+(-\d+)?)$")

DEFAULT_URL = "redis://localhost:6379/0"


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Settings of a :class:`~abe_redis.RedisStreamsBackend`.

    Build it with keyword arguments, :meth:`from_url` or :meth:`from_env`. Each field's
    environment variable is listed in the configuration reference (``docs/configuration.md``).
    """

    # Connection
    url: str = field(default=DEFAULT_URL, repr=False)
    password: str | None = field(default=None, repr=False)
    ssl: bool | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: CertRequirement = "required"
    max_connections: int = 10
    pool_timeout: float = 20.0
    socket_timeout: float | None = None
    socket_connect_timeout: float = 5.0
    retry_attempts: int = 5
    retry_backoff_base: float = 0.05
    retry_backoff_cap: float = 2.0
    # Publishing
    stream_maxlen: int | None = None
    # Discovery
    streams: tuple[str, ...] = ()
    stream_pattern: str | None = None
    registry_key: str = "abe-redis:streams"
    discovery_interval_ms: int = 1000
    # Consuming
    mode: ConsumeMode = "group"
    consumer_group: str = "abe-default"
    consumer_name: str | None = None
    group_start_id: str = "0"
    block_ms: int = 1000
    batch_size: int = 100
    # Delivery guarantees
    claim_idle_ms: int = 30_000
    claim_interval_ms: int | None = None
    max_deliveries: int = 5
    dead_letter_suffix: str = ":dead-letter"

    def __post_init__(self) -> None:
        _validate(self)

    # -- derived values ------------------------------------------------------------------

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    @property
    def use_ssl(self) -> bool:
        if self.ssl is not None:
            return self.ssl
        return urlsplit(self.url).scheme == "rediss"

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

    def dead_letter_stream(self, stream: str) -> str:
        return stream + self.dead_letter_suffix

    def is_dead_letter_stream(self, stream: str) -> bool:
        return stream.endswith(self.dead_letter_suffix)

    # -- constructors --------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> RedisConfig:
        return cls(url=url, **overrides)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RedisConfig:
        """Read ``REDIS_*`` variables (see :data:`ENVIRONMENT`); keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (var, parse) in ENVIRONMENT.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            values[name] = parse(var, raw.strip())
        values.update(overrides)
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> RedisConfig:
        return replace(self, **overrides)

    def __repr__(self) -> str:
        shown = [f"url={self.redacted_url!r}"]
        if self.password:
            shown.append(f"password={MASK!r}")
        for f in fields(self):
            if f.repr:
                shown.append(f"{f.name}={getattr(self, f.name)!r}")
        return f"RedisConfig({', '.join(shown)})"


# -- environment parsing -----------------------------------------------------------------


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


ENVIRONMENT: dict[str, tuple[str, Any]] = {
    "url": ("REDIS_URL", _str),
    "password": ("REDIS_PASSWORD", _str),
    "ssl": ("REDIS_SSL", _bool),
    "ssl_ca_certs": ("REDIS_SSL_CA_CERTS", _str),
    "ssl_cert_reqs": ("REDIS_SSL_CERT_REQS", _str),
    "max_connections": ("REDIS_MAX_CONNECTIONS", _int),
    "pool_timeout": ("REDIS_POOL_TIMEOUT", _float),
    "socket_timeout": ("REDIS_SOCKET_TIMEOUT", _float),
    "socket_connect_timeout": ("REDIS_SOCKET_CONNECT_TIMEOUT", _float),
    "retry_attempts": ("REDIS_RETRY_ATTEMPTS", _int),
    "stream_maxlen": ("REDIS_STREAM_MAXLEN", _optional_int),
    "streams": ("REDIS_STREAMS", _csv),
    "stream_pattern": ("REDIS_STREAM_PATTERN", _str),
    "registry_key": ("REDIS_REGISTRY_KEY", _str),
    "discovery_interval_ms": ("REDIS_DISCOVERY_INTERVAL_MS", _int),
    "mode": ("REDIS_CONSUME_MODE", _str),
    "consumer_group": ("REDIS_CONSUMER_GROUP", _str),
    "consumer_name": ("REDIS_CONSUMER_NAME", _str),
    "group_start_id": ("REDIS_GROUP_START_ID", _str),
    "block_ms": ("REDIS_BLOCK_MS", _int),
    "batch_size": ("REDIS_BATCH_SIZE", _int),
    "claim_idle_ms": ("REDIS_CLAIM_IDLE_MS", _int),
    "claim_interval_ms": ("REDIS_CLAIM_INTERVAL_MS", _int),
    "max_deliveries": ("REDIS_MAX_DELIVERIES", _int),
    "dead_letter_suffix": ("REDIS_DEAD_LETTER_SUFFIX", _str),
}
"""Field name -> (environment variable, parser)."""


def env_var(field_name: str) -> str:
    return ENVIRONMENT[field_name][0]


# -- validation --------------------------------------------------------------------------


def _fail(config: RedisConfig, name: str, problem: str) -> None:
    value: object = getattr(config, name)
    if name == "url":
        value = config.redacted_url
    elif name == "password":
        value = MASK
    raise ConfigurationError(_setting_name(name), value, problem)


def _setting_name(name: str) -> str:
    var = ENVIRONMENT.get(name)
    return f"{var[0]} ({name})" if var else name


def _validate(c: RedisConfig) -> None:
    if not isinstance(c.url, str) or not c.url:
        _fail(c, "url", "must be a non-empty string")
    try:
        scheme = urlsplit(c.url).scheme
        port = urlsplit(c.url).port  # raises on a non-numeric port
    except ValueError as exc:
        raise ConfigurationError(_setting_name("url"), c.redacted_url, f"not a valid URL ({exc})") from None
    del port
    if scheme not in _SCHEMES:
        _fail(
            c, "url", f"unknown scheme {scheme!r}; expected one of {', '.join(s + '://' for s in _SCHEMES)}"
        )
    if c.ssl_cert_reqs not in get_args(CertRequirement):
        _fail(c, "ssl_cert_reqs", f"expected one of {', '.join(get_args(CertRequirement))}")
    if c.mode not in get_args(ConsumeMode):
        _fail(c, "mode", f"expected one of {', '.join(get_args(ConsumeMode))}")
    for name in ("max_connections", "batch_size", "max_deliveries", "block_ms", "discovery_interval_ms"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(c, name, "must be a positive integer")
    for name in ("retry_attempts", "claim_idle_ms"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            _fail(c, name, "must be a non-negative integer")
    for name in ("stream_maxlen", "claim_interval_ms"):
        value = getattr(c, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            _fail(c, name, "must be a positive integer (or unset)")
    for name in (
        "pool_timeout",
        "socket_timeout",
        "socket_connect_timeout",
        "retry_backoff_base",
        "retry_backoff_cap",
    ):
        value = getattr(c, name)
        if value is None and name == "socket_timeout":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            _fail(c, name, "must be a positive number of seconds")
    if c.socket_timeout is not None and c.socket_timeout <= c.block_ms / 1000:
        _fail(
            c,
            "socket_timeout",
            f"must be larger than the blocking read time REDIS_BLOCK_MS={c.block_ms} ms, "
            "or every quiet read would end in a timeout",
        )
    for name in ("consumer_group", "registry_key", "dead_letter_suffix"):
        value = getattr(c, name)
        if not isinstance(value, str) or not value.strip():
            _fail(c, name, "must be a non-empty string")
    if c.consumer_name is not None and (not isinstance(c.consumer_name, str) or not c.consumer_name.strip()):
        _fail(c, "consumer_name", "must be a non-empty string (or unset for an automatic name)")
    if not isinstance(c.group_start_id, str) or not _STREAM_ID.match(c.group_start_id):
        _fail(c, "group_start_id", "expected '0' (deliver the backlog), '$' (only new) or a stream ID")
    if not isinstance(c.streams, tuple) or not all(isinstance(s, str) and s for s in c.streams):
        _fail(c, "streams", "must be a tuple of non-empty stream names")
    if c.stream_pattern is not None and (not isinstance(c.stream_pattern, str) or not c.stream_pattern):
        _fail(c, "stream_pattern", "must be a non-empty glob pattern (or unset)")
