"""Build the redis-py client for a config: one blocking pool per backend, retries with backoff.

The pool *waits* for a free connection (``BlockingConnectionPool``) instead of raising
"Too many connections", so a burst of concurrent publishes queues up rather than failing.
"""

from __future__ import annotations

import ssl as ssl_module
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._config import RedisConfig

_CERT_REQS = {
    "required": ssl_module.CERT_REQUIRED,
    "optional": ssl_module.CERT_OPTIONAL,
    "none": ssl_module.CERT_NONE,
}


def build_client(config: RedisConfig) -> Redis:
    """A client whose commands retry connection errors with exponential backoff and jitter."""
    retry = Retry(
        EqualJitterBackoff(cap=config.retry_backoff_cap, base=config.retry_backoff_base),
        retries=config.retry_attempts,
        supported_errors=(RedisConnectionError, RedisTimeoutError, BusyLoadingError),
    )
    kwargs: dict[str, Any] = {
        "max_connections": config.max_connections,
        "timeout": config.pool_timeout,
        "socket_timeout": config.effective_socket_timeout,
        "socket_connect_timeout": config.socket_connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": retry,
        "decode_responses": False,
        "client_name": "abe-redis",
    }
    if config.password is not None:
        kwargs["password"] = config.password
    url = config.url
    if config.use_ssl:
        if url.startswith("redis://"):
            # REDIS_SSL=true on a redis:// URL means the same server over TLS.
            url = "rediss://" + url[len("redis://") :]
        kwargs["ssl_cert_reqs"] = _CERT_REQS[config.ssl_cert_reqs]
        if config.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = config.ssl_ca_certs
    pool = BlockingConnectionPool.from_url(url, **kwargs)
    return Redis(connection_pool=pool)
