"""The exceptions abe-redis raises, so callers can catch by meaning rather than by message."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError


class AbeRedisError(Exception):
    """Base class of every error raised by abe-redis itself."""


class ConfigurationError(AbeRedisError, ValueError):
    """A configuration value is missing, malformed or out of range.

    ``setting`` names the environment variable or field; ``value`` is the offending value with any
    password already redacted.
    """

    def __init__(self, setting: str, value: object, problem: str) -> None:
        self.setting = setting
        self.value = value
        self.problem = problem
        super().__init__(f"{setting}={value!r}: {problem}")


class InvalidKeyError(AbeRedisError, TypeError, ValueError):
    """``publish`` got a key that is not a non-empty string (or is reserved)."""


class InvalidPayloadError(AbeRedisError, TypeError, ValueError):
    """``publish`` got a payload that would not round-trip exactly through JSON.

    ``path`` locates the offending value, e.g. ``payload['items'][2]``.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class PoisonMessageError(AbeRedisError, ValueError):
    """A stream entry that cannot be decoded into a payload (it is dead-lettered, never yielded)."""


class BackendClosedError(AbeRedisError, RuntimeError):
    """The backend was closed with ``aclose()``; it publishes and consumes no more."""


class RedisSetupError(AbeRedisError):
    """Redis refused the backend in a way that retrying cannot fix: a wrong or missing password,
    an ACL user without a needed command or key, or one of the backend's own keys holding the
    wrong type. The message says which, never the secret."""


class ReplicationTimeoutError(AbeRedisError):
    """``publish`` wrote the entry on the master, but fewer replicas than ``REDIS_WAIT_REPLICAS``
    confirmed it within ``REDIS_WAIT_TIMEOUT_MS``. The entry *is* in the stream; a failover now
    could lose it. ``acknowledged`` is how many replicas did confirm."""

    def __init__(self, stream: str, wanted: int, acknowledged: int, timeout_ms: int) -> None:
        self.stream = stream
        self.wanted = wanted
        self.acknowledged = acknowledged
        super().__init__(
            f"published to {stream!r} on the master, but only {acknowledged} of {wanted} replicas "
            f"confirmed it within {timeout_ms} ms"
        )


class PublishOutcomeUnknownError(AbeRedisError, RedisConnectionError):
    """The connection failed after this entry was handed to the socket: it may or may not be in
    the stream. Publishing it again is safe only where a duplicate is acceptable.

    A subclass of redis-py's ``ConnectionError``, so code that catches connection errors still
    does; when an entry certainly was not sent, the plain redis-py error is raised instead.
    ``stream`` names the stream; the connection error is the ``__cause__``.
    """

    def __init__(self, stream: str, cause: BaseException) -> None:
        self.stream = stream
        super().__init__(
            f"XADD to {stream!r} may or may not have been written: the connection failed after "
            f"it was sent ({type(cause).__name__}: {cause})"
        )
