"""Our backend against the shipped contract suite: on the fake, redis-server and valkey-server."""

from __future__ import annotations

import pytest

from abe_redis_testing import FAST_SETTINGS, RedisBackendFactory
from abe_redis_testing.contract import Capabilities, QueueBackendContract

# Redelivery happens once an abandoned message is idle for claim_idle_ms (0.5 s here).
CAPABILITIES = Capabilities.all(redelivery_timeout=FAST_SETTINGS["claim_idle_ms"] / 1000 + 1.0)


@pytest.mark.abe_redis_targets("redis", "valkey")
class TestRedisStreamsContractOnRealServers(QueueBackendContract):
    capabilities = CAPABILITIES

    @pytest.fixture
    def backend_factory(self, queue_backend_factory: RedisBackendFactory) -> RedisBackendFactory:
        return queue_backend_factory

    @pytest.fixture
    def backend_env(self, queue_backend_factory: RedisBackendFactory) -> dict[str, str]:
        assert queue_backend_factory.url is not None
        return {
            "REDIS_URL": queue_backend_factory.url,
            "REDIS_BLOCK_MS": "100",
            "REDIS_DISCOVERY_INTERVAL_MS": "100",
            "REDIS_CLAIM_IDLE_MS": str(FAST_SETTINGS["claim_idle_ms"]),
            "REDIS_CLAIM_INTERVAL_MS": "100",
        }


@pytest.mark.abe_redis_targets("fake")
class TestRedisStreamsContractOnTheFake(QueueBackendContract):
    # from_env() builds a network client; an in-process fake has no address to give it.
    capabilities = Capabilities.all(
        redelivery_timeout=CAPABILITIES.redelivery_timeout, supports_from_env=False
    )

    @pytest.fixture
    def backend_factory(self, queue_backend_factory: RedisBackendFactory) -> RedisBackendFactory:
        return queue_backend_factory


def test_every_capability_is_claimed_and_only_from_env_is_withdrawn_on_the_fake() -> None:
    # A capability dropped here would turn its contract tests into silent skips.
    real = TestRedisStreamsContractOnRealServers.capabilities
    fake = TestRedisStreamsContractOnTheFake.capabilities
    assert real == Capabilities.all(redelivery_timeout=real.redelivery_timeout)
    assert fake == Capabilities.all(redelivery_timeout=real.redelivery_timeout, supports_from_env=False)
