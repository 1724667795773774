"""abe-redis: a Redis Streams message-queue backend for abstract-backend.

Install it, set ``QUEUE_BACKEND=redis`` and ``REDIS_URL``, and abe's ``load_backend()``
returns a :class:`RedisStreamsBackend`.
"""

from __future__ import annotations

from ._backend import RedisStreamsBackend
from ._config import RedisConfig
from ._errors import (
    AbeRedisError,
    BackendClosedError,
    ConfigurationError,
    InvalidKeyError,
    InvalidPayloadError,
    PoisonMessageError,
    PublishOutcomeUnknownError,
    RedisSetupError,
    ReplicationTimeoutError,
)
from ._message import ReceivedMessage
from ._registry import StreamRegistry
from .consumer import PermanentError, RedisConsumer
from .dead_letters import DeadLetter, DeadLetters
from .metrics import InMemoryMetrics, MetricsHook

__version__ = "0.2.0"

__all__ = [
    "AbeRedisError",
    "BackendClosedError",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetters",
    "InMemoryMetrics",
    "InvalidKeyError",
    "InvalidPayloadError",
    "MetricsHook",
    "PermanentError",
    "PoisonMessageError",
    "PublishOutcomeUnknownError",
    "ReceivedMessage",
    "RedisConfig",
    "RedisConsumer",
    "RedisSetupError",
    "RedisStreamsBackend",
    "ReplicationTimeoutError",
    "StreamRegistry",
    "__version__",
]
