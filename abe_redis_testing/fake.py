"""fakeredis wiring: an in-process async Redis for tests that need no real server.

Each client gets its own :class:`fakeredis.FakeServer` unless one is passed in, so tests never see
each other's keys. Pass the same server to several clients to simulate several connections.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio
from redis.asyncio import BlockingConnectionPool

from abe_redis import RedisConfig, RedisStreamsBackend

from ._timings import FAST_SETTINGS
from .contract._capabilities import Capabilities

__all__ = ["FakeRedisStreamsBackend", "make_fake_redis", "new_fake_server"]

DEFAULT_FAKE_VERSION: tuple[int, ...] = (7, 4)


def new_fake_server(*, version: tuple[int, ...] = DEFAULT_FAKE_VERSION) -> Any:
    """A fresh, empty ``fakeredis.FakeServer`` speaking the given Redis version."""
    import fakeredis

    return fakeredis.FakeServer(version=version)


def make_fake_redis(
    *,
    server: Any = None,
    decode_responses: bool = False,
    version: tuple[int, ...] = DEFAULT_FAKE_VERSION,
    **kwargs: Any,
) -> redis.asyncio.Redis:
    """An async client on ``server`` (a new :func:`new_fake_server` if ``None``).

    The result is a real ``redis.asyncio.Redis`` subclass, so code under test cannot tell it apart
    from a client on a real server (within fakeredis' command coverage).
    """
    import fakeredis

    if server is None:
        server = new_fake_server(version=version)
    client = fakeredis.FakeAsyncRedis(
        server=server, decode_responses=decode_responses, version=version, **kwargs
    )
    return cast(redis.asyncio.Redis, client)


class FakeRedisStreamsBackend(RedisStreamsBackend):
    """Our backend on one process-wide in-memory fake, for running the contract suite (or a
    demo) without a server: every instance, however built (``from_env()`` included), shares the
    same fake broker, with :data:`FAST_SETTINGS` timings.

    ``abe-redis verify`` runs the contract against it by default.
    """

    _shared_server: Any = None

    def __init__(self, config: RedisConfig | None = None, **overrides: Any) -> None:
        cls = type(self)
        if cls._shared_server is None:
            cls._shared_server = new_fake_server()
        settings = {**FAST_SETTINGS, **overrides}
        base = config if config is not None else RedisConfig()
        config = base.with_overrides(**settings)
        client = make_fake_redis(
            server=cls._shared_server,
            connection_pool_class=BlockingConnectionPool,
            max_connections=config.max_connections,
        )
        super().__init__(config, client=client)
        self._fake_client = client

    async def aclose(self) -> None:
        await super().aclose()
        await self._fake_client.aclose()

    @classmethod
    def reset(cls) -> None:
        """Start over on a fresh, empty fake broker."""
        cls._shared_server = new_fake_server()

    # Read by abe_redis_testing.contract.run_contract.
    __abe_contract_capabilities__ = Capabilities.all(
        redelivery_timeout=FAST_SETTINGS["claim_idle_ms"] / 1000 + 1.0
    )
    __abe_contract_reset__ = reset
