"""In-memory backends for testing the contract suite itself: one that honours every capability
(the suite must pass it) and broken variants with one defect each (the suite must catch it).

All share a module-level broker registry, so any number of instances (and ``from_env()``) can
talk to one broker by name, like clients of one Redis server."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from abe_redis_testing.contract import Capabilities, QueueBackendContract

BROKER_ENV = "ABE_CONTRACT_TEST_BROKER"

# Polling keeps the fake loop-agnostic (the state machine runs it on a private loop); 2 ms is far
# below the suite's prompt-delivery bound.
_POLL = 0.002


@dataclass
class _Group:
    next_index: int = 0
    pending: dict[int, float] = field(default_factory=dict)  # log index -> monotonic delivery time


@dataclass
class _Broker:
    log: list[tuple[str, str]] = field(default_factory=list)
    groups: dict[str, _Group] = field(default_factory=dict)
    publishes: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


_BROKERS: dict[str, _Broker] = {}


def _check_keys(value: Any) -> None:
    # json.dumps would quietly turn 1, None or True keys into strings; the contract says reject.
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"payload keys must be str, got {type(key).__name__}")
            _check_keys(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_keys(item)


class ReferenceBackend:
    """At-least-once, ack-on-next, groups with fan-out, claim after ``claim_after`` seconds."""

    claim_after: ClassVar[float] = 0.2

    def __init__(self, broker: str = "default") -> None:
        self._broker = _BROKERS.setdefault(broker, _Broker())

    @classmethod
    def from_env(cls) -> ReferenceBackend:
        name = os.environ.get(BROKER_ENV)
        if not name:
            raise ValueError(f"{BROKER_ENV} is not set")
        return cls(name)

    async def publish(self, key: str, payload: dict[str, Any]) -> None:
        if not isinstance(key, str) or not key:
            raise TypeError(f"key must be a non-empty str, got {key!r}")
        self._store(key, self.encode(payload))

    def _store(self, key: str, text: str) -> None:
        self._broker.log.append((key, text))

    def encode(self, payload: Any) -> str:
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
        _check_keys(payload)
        return json.dumps(payload, allow_nan=False)

    def decode(self, text: str) -> Any:
        return json.loads(text)

    def _claim(self, group: _Group) -> int | None:
        now = time.monotonic()
        stale = [index for index, since in group.pending.items() if now - since >= self.claim_after]
        if stale:
            index = min(stale)
        elif group.next_index < len(self._broker.log):
            index = group.next_index
            group.next_index += 1
        else:
            return None
        group.pending[index] = now
        return index

    def _ack(self, group: _Group, index: int) -> None:
        group.pending.pop(index, None)

    async def consume(self, *, group: str | None = None) -> AsyncIterator[dict[str, Any]]:
        state = self._broker.groups.setdefault(group or "", _Group())
        in_flight: int | None = None
        while True:
            if in_flight is not None:
                # Asking for the next message is what acknowledges the previous one.
                self._ack(state, in_flight)
                in_flight = None
            index = self._claim(state)
            if index is None:
                await asyncio.sleep(_POLL)
                continue
            in_flight = index
            for message in self.deliver(index):
                yield message

    def deliver(self, index: int) -> Iterator[Any]:
        yield self.decode(self._broker.log[index][1])


class DroppingBackend(ReferenceBackend):
    """Silently loses every third publish."""

    def _store(self, key: str, text: str) -> None:
        if next(self._broker.publishes) % 3:
            super()._store(key, text)


class DuplicatingBackend(ReferenceBackend):
    """Hands every message twice to the same group."""

    def deliver(self, index: int) -> Iterator[Any]:
        yield self.decode(self._broker.log[index][1])
        yield self.decode(self._broker.log[index][1])


class EagerAckBackend(ReferenceBackend):
    """Acknowledges on delivery instead of on the next request, yet claims redelivery."""

    def _claim(self, group: _Group) -> int | None:
        index = super()._claim(group)
        if index is not None:
            self._ack(group, index)
        return index


def _ints_to_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (v if k == "_abe_contract" else _ints_to_floats(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints_to_floats(item) for item in value]
    if type(value) is int:
        return float(value)
    return value


class IntToFloatBackend(ReferenceBackend):
    """Decodes every integer as a float (sparing the suite's own marker, so only fidelity breaks)."""

    def decode(self, text: str) -> Any:
        return _ints_to_floats(json.loads(text))


class PermissiveBackend(ReferenceBackend):
    """Validates nothing: whatever is published is stored and handed back as it was."""

    _objects: ClassVar[dict[str, Any]] = {}

    async def publish(self, key: Any, payload: Any) -> None:
        token = uuid.uuid4().hex
        self._objects[token] = payload
        self._store(str(key), token)

    def decode(self, text: str) -> Any:
        return self._objects[text]


# -- contract subclasses, imported under Test* names where they should run ---------------------------

FULL = Capabilities.all(redelivery_timeout=ReferenceBackend.claim_after)


def _factory(backend: type[ReferenceBackend], broker: str) -> Callable[[], ReferenceBackend]:
    return lambda: backend(broker)


class _InMemoryContract(QueueBackendContract):
    backend_class: ClassVar[type[ReferenceBackend]] = ReferenceBackend
    capabilities = FULL
    timeout = 5.0

    @pytest.fixture
    def broker_name(self) -> Iterator[str]:
        name = uuid.uuid4().hex
        yield name
        _BROKERS.pop(name, None)

    @pytest.fixture
    def backend_factory(self, broker_name: str) -> Callable[[], ReferenceBackend]:
        return _factory(self.backend_class, broker_name)

    @pytest.fixture
    def backend_env(self, broker_name: str) -> dict[str, str]:
        return {BROKER_ENV: broker_name}


class ReferenceContract(_InMemoryContract):
    pass


class DroppingContract(_InMemoryContract):
    backend_class = DroppingBackend


class DuplicatingContract(_InMemoryContract):
    backend_class = DuplicatingBackend


class EagerAckContract(_InMemoryContract):
    backend_class = EagerAckBackend


class IntToFloatContract(_InMemoryContract):
    backend_class = IntToFloatBackend


class PermissiveContract(_InMemoryContract):
    backend_class = PermissiveBackend


class DeclaredReferenceBackend(ReferenceBackend):
    """Declares its capabilities the way ``run_contract`` looks for them."""

    __abe_contract_capabilities__ = FULL


class TenantKeysBackend(ReferenceBackend):
    """Only accepts keys under ``tenant:``, like a backend bound to a configured stream prefix."""

    async def publish(self, key: str, payload: dict[str, Any]) -> None:
        if isinstance(key, str) and key and not key.startswith("tenant:"):
            raise ValueError(f"key {key!r} is outside this backend's tenant")
        await super().publish(key, payload)


class TenantKeysWithoutOverrideContract(_InMemoryContract):
    """TenantKeysBackend run with the default keys: proves the override above is what makes it pass."""

    backend_class = TenantKeysBackend
