"""fakeredis wiring: an in-process async Redis for tests that need no real server.

Each client gets its own :class:`fakeredis.FakeServer` unless one is passed in, so tests never see
each other's keys. Pass the same server to several clients to simulate several connections.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio

__all__ = ["make_fake_redis", "new_fake_server"]

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
