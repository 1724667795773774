"""Model-based part of the contract: Hypothesis publishes and consumes at random and checks every
delivery against a per-key FIFO (or, for unordered backends, per-key multiset) of messages that
were published and not yet consumed.

Hypothesis rules are synchronous, so the backend runs on a private event loop in a background
thread (:class:`SyncQueueDriver`); one driver serves all examples of a run because some backends
(abe's MemoryBackend) bind broker state to the first loop that touches it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import threading
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from ._capabilities import Capabilities
from ._harness import BackendFactory, build_backend, default_close_backend, default_key
from ._payloads import MARKER, Tag, make_payload, read_tag, strict_difference

T = TypeVar("T")

# Lone surrogates are not text a UTF-8 broker can carry, and not something the contract promises.
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)

JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4),
    max_leaves=10,
)
"""JSON-compatible values whose Python types survive a JSON round trip unchanged."""


class SyncQueueDriver:
    """Runs coroutines on a private event loop in a daemon thread; every call is bounded."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="abe-contract-driver", daemon=True
        )
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], what: str) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            # The coroutines bound themselves; the extra second only catches a wedged loop.
            return future.result(self.timeout + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"{what} did not complete within {self.timeout:g}s") from None

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._loop.shutdown_asyncgens()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(self.timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> SyncQueueDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class MachineConfig:
    factory: BackendFactory
    driver: SyncQueueDriver
    capabilities: Capabilities = field(default_factory=Capabilities)
    timeout: float = 10.0
    key_count: int = 3
    unwrap: Callable[[Any], Any] = lambda message: message
    close_backend: Callable[[Any], Awaitable[None]] = default_close_backend
    make_key: Callable[[str, str], str] = default_key


class QueueStateMachine(RuleBasedStateMachine):
    """Configure through :func:`make_queue_state_machine`, which sets ``config``."""

    config: ClassVar[MachineConfig]

    def __init__(self) -> None:
        super().__init__()
        config = self.config
        self.driver = config.driver
        self.capabilities = config.capabilities
        self.timeout = config.timeout
        self.run_id = uuid.uuid4().hex[:12]
        self.keys = [config.make_key(self.run_id, f"k{index}") for index in range(config.key_count)]
        self.group = f"abe-contract.{self.run_id}.machine" if self.capabilities.supports_groups else None
        self.pending: dict[str, deque[dict[str, Any]]] = {key: deque() for key in self.keys}
        self.next_seq = 0
        self.failed = False
        self.backends: list[Any] = []
        self.publisher = self._new_backend()
        self.reader = self._new_backend() if self.capabilities.durable_across_instances else self.publisher
        self.stream: Any = None

    def _new_backend(self) -> Any:
        backend = self.driver.call(build_backend(self.config.factory), "building a backend")
        self.backends.append(backend)
        return backend

    def outstanding(self) -> int:
        return sum(len(queue) for queue in self.pending.values())

    def _publish(self, key: str, extra: dict[str, Any]) -> None:
        payload = make_payload(Tag(self.run_id, "data", self.next_seq, key), extra)
        self.next_seq += 1
        # The model keeps its own copy, so a backend that mutates what it was given is caught.
        self.pending[key].append(copy.deepcopy(payload))
        self.driver.call(self._bounded(self.publisher.publish(key, payload)), f"publish to {key}")

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        return await asyncio.wait_for(awaitable, self.timeout)

    async def _next_ours(self) -> Any:
        if self.stream is None:
            self.stream = self.reader.consume(group=self.group)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            try:
                raw = await asyncio.wait_for(anext(self.stream), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise AssertionError(
                    f"timed out after {self.timeout:g}s waiting for one of "
                    f"{self.outstanding()} outstanding messages"
                ) from None
            message = self.config.unwrap(raw)
            tag = read_tag(message)
            if tag is not None and tag.run != self.run_id:
                continue  # left over from an earlier example on the same broker
            return message

    def _take(self, count: int) -> None:
        for _ in range(count):
            message = self.driver.call(self._next_ours(), "consuming")
            tag = read_tag(message)
            if tag is None or tag.kind != "data" or tag.key not in self.pending:
                raise AssertionError(f"consumed a message that was never published: {message!r}")
            queue = self.pending[tag.key]
            position = next((i for i, entry in enumerate(queue) if entry[MARKER]["seq"] == tag.seq), None)
            if position is None:
                raise AssertionError(
                    f"seq {tag.seq} on {tag.key} delivered again or never published: {message!r}"
                )
            if self.capabilities.ordered_per_key and position != 0:
                expected = queue[0][MARKER]["seq"]
                raise AssertionError(f"out of order on {tag.key}: expected seq {expected}, got seq {tag.seq}")
            difference = strict_difference(queue[position], message)
            if difference:
                raise AssertionError(f"seq {tag.seq} changed in transit: {difference}")
            del queue[position]

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
        except BaseException:
            self.failed = True
            raise

    @rule(key_index=st.integers(min_value=0), body=JSON_VALUES)
    def publish(self, key_index: int, body: Any) -> None:
        key = self.keys[key_index % len(self.keys)]
        self._guard(lambda: self._publish(key, {"body": body}))

    @precondition(lambda self: self.outstanding() > 0)
    @rule(count=st.integers(min_value=1, max_value=5))
    def consume(self, count: int) -> None:
        self._guard(lambda: self._take(min(count, self.outstanding())))

    @rule()
    def flush(self) -> None:
        """A sentinel on every key, then consume until the model is empty: nothing may be missing,
        and anything delivered that the model does not hold fails the step."""

        def drain() -> None:
            for key in self.keys:
                self._publish(key, {"sentinel": True})
            self._take(self.outstanding())

        self._guard(drain)

    def teardown(self) -> None:
        try:
            if not self.failed:
                self.flush()
        finally:
            if self.stream is not None and hasattr(self.stream, "aclose"):
                self.driver.call(self._bounded(self.stream.aclose()), "closing the consume stream")
            for backend in self.backends:
                self.driver.call(self._bounded(self.config.close_backend(backend)), "closing a backend")


def make_queue_state_machine(
    factory: BackendFactory,
    driver: SyncQueueDriver,
    *,
    capabilities: Capabilities | None = None,
    timeout: float = 10.0,
    unwrap: Callable[[Any], Any] | None = None,
    close_backend: Callable[[Any], Awaitable[None]] | None = None,
    make_key: Callable[[str, str], str] | None = None,
) -> type[QueueStateMachine]:
    """A :class:`QueueStateMachine` subclass bound to your factory and a driver you close yourself.

    Its ``.TestCase`` is a unittest class; :func:`run_queue_state_machine` is the one-call form.
    """
    config = MachineConfig(
        factory=factory,
        driver=driver,
        capabilities=capabilities or Capabilities(),
        timeout=timeout,
        unwrap=unwrap or (lambda message: message),
        close_backend=close_backend or default_close_backend,
        make_key=make_key or default_key,
    )
    return type("BoundQueueStateMachine", (QueueStateMachine,), {"config": config})


def state_machine_settings(*, max_examples: int = 10, step_count: int = 15, shrink: bool = False) -> settings:
    # Shrinking is off by default: a lost message costs a full timeout per attempt, and hundreds of
    # shrink attempts would turn one failure into minutes.
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(
        max_examples=max_examples,
        stateful_step_count=step_count,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def run_queue_state_machine(
    factory: BackendFactory,
    *,
    capabilities: Capabilities | None = None,
    timeout: float = 10.0,
    max_examples: int = 10,
    step_count: int = 15,
    shrink: bool = False,
    unwrap: Callable[[Any], Any] | None = None,
    close_backend: Callable[[Any], Awaitable[None]] | None = None,
    make_key: Callable[[str, str], str] | None = None,
) -> None:
    """Run the state machine against ``factory``'s backend; raises on the first contract violation."""
    with SyncQueueDriver(timeout) as driver:
        machine = make_queue_state_machine(
            factory,
            driver,
            capabilities=capabilities,
            timeout=timeout,
            unwrap=unwrap,
            close_backend=close_backend,
            make_key=make_key,
        )
        run_state_machine_as_test(
            machine,
            settings=state_machine_settings(max_examples=max_examples, step_count=step_count, shrink=shrink),
        )
