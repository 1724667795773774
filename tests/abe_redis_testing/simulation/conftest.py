"""Fixtures shared by the differential tests (fakeredis and the model against redis-server)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from abe_redis_testing import RedisEndpoint

from .streams_differential import raw


@pytest.fixture
def real(redis_server: RedisEndpoint) -> Iterator[Any]:
    """A raw RESP2 client of the real redis-server the replies are compared with."""
    if redis_server.kind != "redis-server":
        pytest.skip(f"compares with redis-server, got {redis_server.kind}")
    client = raw(redis.Redis.from_url(redis_server.url, protocol=2))
    try:
        yield client
    finally:
        client.close()
