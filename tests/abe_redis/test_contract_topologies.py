"""The shipped contract suite on the two deployments beyond one server: a Sentinel-watched master
(``redis+sentinel://``) and a Redis Cluster (``redis+cluster://``). Both use the session's
topology, emptied (and healed) after each test by the ``redis_sentinel`` / ``redis_cluster``
fixtures, so the suite adds no boots of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from abe_redis_testing import FAST_SETTINGS, RedisBackendFactory
from abe_redis_testing.contract import QueueBackendContract
from abe_redis_testing.servers import RedisClusterHandle, RedisSentinelHandle

from .test_contract import CAPABILITIES


def _env(url: str) -> dict[str, str]:
    return {
        "REDIS_URL": url,
        "REDIS_BLOCK_MS": "100",
        "REDIS_DISCOVERY_INTERVAL_MS": "100",
        "REDIS_CLAIM_IDLE_MS": str(FAST_SETTINGS["claim_idle_ms"]),
        "REDIS_CLAIM_INTERVAL_MS": "100",
    }


class TestRedisStreamsContractOnSentinel(QueueBackendContract):
    capabilities = CAPABILITIES

    @pytest_asyncio.fixture
    async def backend_factory(
        self, redis_sentinel: RedisSentinelHandle
    ) -> AsyncIterator[RedisBackendFactory]:
        factory = RedisBackendFactory("sentinel", url=redis_sentinel.url)
        yield factory
        await factory.aclose()

    @pytest.fixture
    def backend_env(self, redis_sentinel: RedisSentinelHandle) -> dict[str, str]:
        return _env(redis_sentinel.url)


class TestRedisStreamsContractOnCluster(QueueBackendContract):
    capabilities = CAPABILITIES
    # Its failure below does not replay (a timing race), so shrinking would only spend time.
    state_machine_shrink = False

    @pytest_asyncio.fixture
    async def backend_factory(self, redis_cluster: RedisClusterHandle) -> AsyncIterator[RedisBackendFactory]:
        factory = RedisBackendFactory("cluster", url=redis_cluster.url)
        yield factory
        await factory.aclose()

    @pytest.fixture
    def backend_env(self, redis_cluster: RedisClusterHandle) -> dict[str, str]:
        return _env(redis_cluster.url)
