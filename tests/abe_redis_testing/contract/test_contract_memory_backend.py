"""The contract against abe's own MemoryBackend, with exactly the capabilities it has."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from abe.backends.message_queue.service.memory import MemoryBackend

from abe_redis_testing.contract import BackendFactory, Capabilities, QueueBackendContract


class TestMemoryBackendContract(QueueBackendContract):
    capabilities = Capabilities(
        # One class-level queue: every consumer competes for it whatever group it names, which
        # is exactly the in-group contract (though not fan-out between groups).
        supports_groups=True,
        fans_out_to_groups=False,
        durable_across_instances=True,  # the queue is a class attribute shared by all instances
        ordered_per_key=True,  # a single FIFO, so also FIFO per key
        redelivers_unacknowledged=False,  # task_done() before yielding: in-flight messages are gone
        rejects_invalid_payloads=False,  # anything is put on the queue as-is
        rejects_invalid_keys=False,
        supports_from_env=True,
    )
    timeout = 5.0

    @pytest.fixture
    def backend_factory(self) -> Iterator[BackendFactory]:
        # The shared queue outlives tests and binds to the first event loop that uses it, so
        # each test gets a fresh, still-unbound one.
        previous = MemoryBackend._queue
        MemoryBackend._queue = asyncio.Queue()
        try:
            yield MemoryBackend
        finally:
            MemoryBackend._queue = previous
