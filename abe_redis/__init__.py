"""abe-redis: a Redis Streams message-queue backend for abstract-backend.

Install it, set ``QUEUE_BACKEND=redis`` and ``REDIS_URL``, and abe's ``load_backend()``
returns a :class:`RedisStreamsBackend`.
"""

from __future__ import annotations

from ._backend import RedisStreamsBackend
from ._config import RedisConfig
from ._errors import (
    AbeRedisError,
    ConfigurationError,
    InvalidKeyError,
    InvalidPayloadError,
    PoisonMessageError,
)
from ._message import ReceivedMessage
from .deadletters import DeadLetter, DeadLetters

__version__ = "0.2.0"

__all__ = [
    "AbeRedisError",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetters",
    "InvalidKeyError",
    "InvalidPayloadError",
    "PoisonMessageError",
    "ReceivedMessage",
    "RedisConfig",
    "RedisStreamsBackend",
    "__version__",
]
