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
import contextlib
import copy
import threading
import time
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
from ._payloads import Tag, make_payload, read_tag, strict_difference

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

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Start ``coroutine`` as a task on the driver's loop, without waiting for it; await
        the task through :meth:`call`."""

        async def start() -> asyncio.Task[T]:
            return asyncio.ensure_future(coroutine)

        return asyncio.run_coroutine_threadsafe(start(), self._loop).result(self.timeout)

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


@dataclass(eq=False)
class _Consumer:
    """One ``consume()`` stream and what the model knows of it."""

    label: str
    group: str | None
    backend: Any
    stream: Any
    waiting: asyncio.Task[Any] | None = None
    """The ``anext()`` running on the driver's loop, if one was asked for and not yet read."""
    in_hand: tuple[str, int] | None = None
    """(key, seq) of the message yielded last: the consumer has not asked for the next one."""
    in_hand_since: float = 0.0


_PRIMARY = "primary"
_MAX_CLOSES_IN_HAND = 2
"""A message abandoned in hand more often than this may be redelivered, but need not be: a
backend with a delivery limit (a dead-letter queue) rightly gives up on it."""
_OTHER = "other"


class QueueStateMachine(RuleBasedStateMachine):
    """Configure through :func:`make_queue_state_machine`, which sets ``config``.

    The model keeps, per group, the messages still to be delivered (``outstanding``) and the
    message each consumer holds. A message a consumer yielded counts as handled once that
    consumer asks for the next one; if the consumer is closed first, a backend that redelivers
    unacknowledged messages must deliver it again (and may deliver it twice), one that does not
    may drop it. Order per key is checked while a group has had one consumer only.
    """

    config: ClassVar[MachineConfig]

    def __init__(self) -> None:
        super().__init__()
        config = self.config
        self.driver = config.driver
        self.capabilities = config.capabilities
        self.timeout = config.timeout
        self.run_id = uuid.uuid4().hex[:12]
        self.keys = [config.make_key(self.run_id, f"k{index}") for index in range(config.key_count)]
        self.payloads: dict[tuple[str, int], dict[str, Any]] = {}
        # Per model group: key -> seqs still to deliver, in publish order.
        self.outstanding: dict[str, dict[str, deque[int]]] = {_PRIMARY: {key: deque() for key in self.keys}}
        self.redeliverable: dict[str, set[tuple[str, int]]] = {_PRIMARY: set()}
        self.delivered: dict[str, set[tuple[str, int]]] = {_PRIMARY: set()}
        self.closed_in_hand: dict[tuple[str, int], int] = {}
        self.history_below: dict[str, int] = {_PRIMARY: 0}
        """Seqs below this were published before the group joined; it may or may not get them."""
        self.ordered: dict[str, bool] = {_PRIMARY: self.capabilities.ordered_per_key}
        self.next_seq = 0
        self.failed = False
        self.backends: list[Any] = []
        self.consumers: list[_Consumer] = []
        self.opened = 0
        self.publisher = self._new_backend()
        self.reader = self._new_backend() if self.capabilities.durable_across_instances else self.publisher

    # -- plumbing --------------------------------------------------------------------------------

    def _group_name(self, group: str) -> str | None:
        if not self.capabilities.supports_groups:
            return None
        return f"abe-contract.{self.run_id}.{group}"

    def _new_backend(self) -> Any:
        backend = self.driver.call(build_backend(self.config.factory), "building a backend")
        self.backends.append(backend)
        return backend

    def _open(self, group: str, backend: Any) -> _Consumer:
        self.opened += 1
        stream = backend.consume(group=self._group_name(group))
        consumer = _Consumer(f"c{self.opened}", group, backend, stream)
        if any(c.group == group for c in self.consumers):
            self.ordered[group] = False
        self.consumers.append(consumer)
        return consumer

    def _members(self, group: str) -> list[_Consumer]:
        members = [c for c in self.consumers if c.group == group]
        if not members:
            members = [self._open(group, self.reader)]
        return members

    def outstanding_in(self, group: str) -> int:
        return sum(len(seqs) for seqs in self.outstanding[group].values())

    def outstanding_total(self) -> int:
        return sum(self.outstanding_in(group) for group in self.outstanding)

    def _publish(self, key: str, extra: dict[str, Any]) -> None:
        seq = self.next_seq
        self.next_seq += 1
        payload = make_payload(Tag(self.run_id, "data", seq, key), extra)
        # The model keeps its own copy, so a backend that mutates what it was given is caught.
        self.payloads[(key, seq)] = copy.deepcopy(payload)
        for queues in self.outstanding.values():
            queues[key].append(seq)
        self.driver.call(self._bounded(self.publisher.publish(key, payload)), f"publish to {key}")

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        return await asyncio.wait_for(awaitable, self.timeout)

    async def _next_ours(self, stream: Any) -> Any:
        while True:
            message = self.config.unwrap(await anext(stream))
            tag = read_tag(message)
            if tag is not None and tag.run != self.run_id:
                continue  # left over from an earlier example on the same broker
            return message

    def _ask_next(self, consumer: _Consumer) -> None:
        if consumer.waiting is not None:
            return
        if consumer.in_hand is not None:
            # Asking for the next message is what acknowledges the one in hand. Held longer
            # than the redelivery timeout, it may have gone to a peer meanwhile (at-least-once).
            if time.monotonic() - consumer.in_hand_since >= self.capabilities.redelivery_timeout:
                self.redeliverable[consumer.group or _PRIMARY].add(consumer.in_hand)
            consumer.in_hand = None
        consumer.waiting = self.driver.submit(self._next_ours(consumer.stream))

    def _take(self, group: str, count: int) -> None:
        """Receive ``count`` outstanding messages of ``group`` from whichever of its consumers
        has one: a peer may hold a message in its prefetch until the backend redelivers it."""
        patience = self.timeout + self.capabilities.redelivery_timeout
        deadline = time.monotonic() + patience
        received = 0
        while received < count and self.outstanding_in(group):
            members = self._members(group)
            for consumer in members:
                self._ask_next(consumer)
            waiting = [c.waiting for c in members if c.waiting is not None]
            # The driver bounds each call by the suite timeout; wait in slices of it.
            remaining = min(max(deadline - time.monotonic(), 0.0), self.timeout)
            done = self.driver.call(_first_done(waiting, remaining), f"waiting on group {group!r}")
            if not done and time.monotonic() < deadline:
                continue
            if not done:
                raise AssertionError(
                    f"timed out after {patience:g}s waiting for one of {self.outstanding_in(group)} "
                    f"outstanding messages in group {group!r}"
                )
            for consumer in members:
                task = consumer.waiting
                if task is not None and task in done:
                    consumer.waiting = None
                    received += self._check(consumer, _delivered(consumer, task))

    def _check(self, consumer: _Consumer, message: Any) -> int:
        """Match one delivery against the model; 1 if it delivered an outstanding message."""
        group = consumer.group or _PRIMARY
        tag = read_tag(message)
        if tag is None or tag.kind != "data" or (tag.key, tag.seq) not in self.payloads:
            raise AssertionError(f"consumed a message that was never published: {message!r}")
        ident = (tag.key, tag.seq)
        queue = self.outstanding[group][tag.key]
        if tag.seq not in queue:
            held = any(c.in_hand == ident and (c.group or _PRIMARY) == group for c in self.consumers)
            if held or ident in self.redeliverable[group] or tag.seq < self.history_below[group]:
                # At-least-once: a consumer closed with it in hand, or held it long enough for
                # the backend to give it to a peer.
                return 0
            raise AssertionError(
                f"seq {tag.seq} on {tag.key} delivered again in group {group!r}: {message!r}"
                if ident in self.delivered[group]
                else f"seq {tag.seq} on {tag.key} delivered to group {group!r} that should not get it"
            )
        if self.ordered[group] and queue[0] != tag.seq:
            raise AssertionError(f"out of order on {tag.key}: expected seq {queue[0]}, got seq {tag.seq}")
        difference = strict_difference(self.payloads[ident], message)
        if difference:
            raise AssertionError(f"seq {tag.seq} changed in transit: {difference}")
        queue.remove(tag.seq)
        self.delivered[group].add(ident)
        consumer.in_hand = ident
        consumer.in_hand_since = time.monotonic()
        return 1

    def _close(self, consumer: _Consumer) -> None:
        """Close a stream as a crashing or cancelled handler would: the message in hand is not
        acknowledged. A pending ``anext()`` is cancelled (no message in hand for it yet)."""
        task, consumer.waiting = consumer.waiting, None
        message = self.driver.call(_stop(task, consumer.stream), f"closing consumer {consumer.label}")
        if message is not None:
            # It arrived before the cancel landed: that message is in hand now.
            self._check(consumer, message)
        self.consumers.remove(consumer)
        group = consumer.group or _PRIMARY
        # What it had read but not yielded goes back to the group, after newer messages maybe.
        self.ordered[group] = False
        if consumer.in_hand is not None and self.capabilities.redelivers_unacknowledged:
            closes = self.closed_in_hand.get(consumer.in_hand, 0) + 1
            self.closed_in_hand[consumer.in_hand] = closes
            self.redeliverable[group].add(consumer.in_hand)
            if closes <= _MAX_CLOSES_IN_HAND:
                key, seq = consumer.in_hand
                queue = self.outstanding[group][key]
                queue.append(seq)
                self.outstanding[group][key] = deque(sorted(queue))
        consumer.in_hand = None

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
        except BaseException:
            self.failed = True
            raise

    # -- rules -------------------------------------------------------------------------------------

    @rule(data=st.data(), body=JSON_VALUES)
    def publish(self, data: st.DataObject, body: Any) -> None:
        key = data.draw(st.sampled_from(self.keys), label="key")
        self._guard(lambda: self._publish(key, {"body": body}))

    @precondition(lambda self: self.outstanding_in(_PRIMARY) > 0)
    @rule(count=st.integers(min_value=1, max_value=5))
    def consume(self, count: int) -> None:
        self._guard(lambda: self._take(_PRIMARY, count))

    @precondition(
        lambda self: (
            self.capabilities.supports_groups and sum(c.group == _PRIMARY for c in self.consumers) in (1, 2)
        )
    )
    @rule()
    def second_consumer_in_the_group(self) -> None:
        """Another consumer joins the group: messages are split, none is lost or doubled."""
        backend = self._new_backend() if self.capabilities.durable_across_instances else self.reader
        self._open(_PRIMARY, backend)

    @precondition(lambda self: self.capabilities.fans_out_to_groups and _OTHER not in self.outstanding)
    @rule()
    def consumer_in_another_group(self) -> None:
        """A consumer in a separate group: from the moment it waits, it gets every message too."""

        def join() -> None:
            consumer = self._open(_OTHER, self.reader)
            self._ask_next(consumer)  # waiting before anything is published for it
            self.history_below[_OTHER] = self.next_seq
            self.outstanding[_OTHER] = {key: deque() for key in self.keys}
            self.redeliverable[_OTHER] = set()
            self.delivered[_OTHER] = set()
            # Earlier messages may arrive first (a group may start from the beginning).
            self.ordered[_OTHER] = False
            # A sentinel it must receive: from then on the group surely gets every message.
            self._publish(self.keys[0], {"sentinel": True})
            self._take(_OTHER, self.outstanding_in(_OTHER))

        self._guard(join)

    @precondition(lambda self: bool(self.consumers))
    @rule(data=st.data())
    def close_a_consumer(self, data: st.DataObject) -> None:
        """Close (or cancel) a consumer, possibly with a message in hand: a redelivering backend
        must deliver that message again to the group's next consumer."""
        consumer = data.draw(st.sampled_from(self.consumers), label="consumer")
        self._guard(lambda: self._close(consumer))

    @precondition(lambda self: self.capabilities.durable_across_instances and bool(self.consumers))
    @rule(data=st.data())
    def restart_a_backend(self, data: st.DataObject) -> None:
        """A consumer's backend instance goes away (a process restart) and a new one takes its
        consumers' place; nothing outstanding may be lost."""
        in_use = list({id(c.backend): c.backend for c in self.consumers}.values())
        backend = in_use[data.draw(st.sampled_from(range(len(in_use))), label="backend")]

        def restart() -> None:
            consumers = [c for c in self.consumers if c.backend is backend]
            for consumer in consumers:
                self._close(consumer)
            self.driver.call(self._bounded(self.config.close_backend(backend)), "closing a backend")
            self.backends.remove(backend)
            fresh = self._new_backend()
            if backend is self.reader:
                self.reader = fresh
            for consumer in consumers:
                self._open(consumer.group or _PRIMARY, fresh)

        self._guard(restart)

    @rule()
    def flush(self) -> None:
        """A sentinel on every key, then consume every group until the model is empty: nothing
        may be missing, and anything delivered that the model does not expect fails the step."""

        def drain() -> None:
            for key in self.keys:
                self._publish(key, {"sentinel": True})
            for group in list(self.outstanding):
                self._take(group, self.outstanding_in(group))

        self._guard(drain)

    def teardown(self) -> None:
        try:
            if not self.failed:
                self.flush()
        finally:
            for consumer in list(self.consumers):
                with contextlib.suppress(Exception):
                    self.driver.call(_stop(consumer.waiting, consumer.stream), "closing a consume stream")
            for backend in self.backends:
                self.driver.call(self._bounded(self.config.close_backend(backend)), "closing a backend")


async def _first_done(tasks: list[asyncio.Task[Any]], seconds: float) -> set[asyncio.Task[Any]]:
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    return done


def _delivered(consumer: _Consumer, task: asyncio.Task[Any]) -> Any:
    error = task.exception()
    if isinstance(error, StopAsyncIteration):
        raise AssertionError(f"consume() of consumer {consumer.label} ended by itself") from None
    if error is not None:
        raise error
    return task.result()


async def _stop(task: asyncio.Task[Any] | None, stream: Any) -> Any:
    """Cancel a pending ``anext()`` (returning the message if it won the race), then close."""
    message: Any = None
    if task is not None:
        task.cancel()
        try:
            message = await task
        except asyncio.CancelledError:
            message = None
        except StopAsyncIteration:
            message = None  # the stream had already ended; closing it is all that is left
    await stream.aclose()
    return message


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
    # A name per backend: Hypothesis keys its example database on it, so a failure replays.
    name = getattr(factory, "__qualname__", type(factory).__qualname__).replace(".", "_")
    return type(f"{name}QueueStateMachine", (QueueStateMachine,), {"config": config})


def state_machine_settings(*, max_examples: int = 10, step_count: int = 15, shrink: bool = True) -> settings:
    """Shrinking is on, and failures go to Hypothesis' example database (``.hypothesis/`` of the
    working directory), so the next run replays the failing example first. A failure caused by a
    lost message costs a timeout per shrink attempt: pass ``shrink=False`` to trade the minimal
    example for time."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(
        max_examples=max_examples,
        stateful_step_count=step_count,
        deadline=None,
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
    shrink: bool = True,
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
