"""A backend that claims to validate payloads but does not: `abe-redis verify --backend` must fail it."""

from __future__ import annotations

import asyncio

from abe.backends.message_queue.service.memory import MemoryBackend


class UnvalidatingMemoryBackend(MemoryBackend):
    __abe_contract_capabilities__ = {"rejects_invalid_payloads": True}

    @staticmethod
    def __abe_contract_reset__() -> None:
        MemoryBackend._queue = asyncio.Queue()
