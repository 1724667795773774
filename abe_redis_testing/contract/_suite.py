"""The contract itself: a base class whose test methods every backend subclass inherits."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from abe.backends.message_queue.consumer import AsyncLoopConsumer
from abe.types import MessageQueueBackendProtocol

from ._capabilities import Capabilities
from ._harness import BackendFactory, ContractRun, RunSpec, default_close_backend
from ._payloads import (
    MARKER,
    fidelity_fields,
    invalid_key_cases,
    invalid_payload_cases,
    make_payload,
    read_tag,
)
from ._plugin import timeout_from_config

_INVALID_PAYLOADS = invalid_payload_cases()
_INVALID_KEYS = invalid_key_cases()


class QueueBackendContract:
    """Subclass as ``TestMyBackend(QueueBackendContract)``, set ``capabilities`` and override the
    ``backend_factory`` fixture. Everything else is optional:

    * ``timeout`` (class attribute, seconds): bound on every wait for an expected message;
      ``--abe-redis-contract-timeout`` / ``abe_redis_contract_timeout`` override it for a run.
    * ``prompt_delivery_seconds``: how soon a message must reach a consumer that is already waiting.
    * ``backend_env`` fixture: environment variables with which ``from_env()`` builds an instance on
      the same broker as the factory's.
    * ``close_backend(backend)``: async hook run for every instance the suite built (default: await
      ``aclose()``/``close()`` if present). Broker-wide teardown belongs in your factory fixture
      (make it a yield fixture).
    * ``contract_key(run_id, name)``: the routing keys used (default ``abe-contract.<run>.<name>``).
    * ``unwrap_message(message)``: turn what ``consume()`` yields back into the published payload,
      for backends that wrap payloads in an envelope.
    * ``state_machine_max_examples`` / ``state_machine_step_count`` / ``state_machine_shrink``:
      the Hypothesis budget (shrinking is on: a failure is reported minimal, and replayed first from
      Hypothesis' example database on the next run; each failing attempt costs a timeout).
    """

    capabilities: ClassVar[Capabilities] = Capabilities()
    timeout: ClassVar[float] = 10.0
    prompt_delivery_seconds: ClassVar[float] = 1.0
    message_count: ClassVar[int] = 200
    concurrent_publish_count: ClassVar[int] = 500
    state_machine_max_examples: ClassVar[int] = 10
    state_machine_step_count: ClassVar[int] = 15
    state_machine_shrink: ClassVar[bool] = True

    # -- what the author provides --------------------------------------------------------------------

    @pytest.fixture
    def backend_factory(self) -> BackendFactory:
        raise NotImplementedError(
            f"override `backend_factory` in your subclass of {QueueBackendContract.__name__}: "
            "return a callable that builds a fresh backend instance connected to the same broker "
            "(it may return an awaitable)"
        )

    @pytest.fixture
    def backend_env(self) -> dict[str, str]:
        """Environment for ``from_env()``; empty means the process environment is already right."""
        return {}

    async def close_backend(self, backend: Any) -> None:
        await default_close_backend(backend)

    def unwrap_message(self, message: Any) -> Any:
        return message

    def contract_key(self, run_id: str, name: str) -> str:
        """The routing key the suite publishes to; ``run_id`` is unique per test (and per
        Hypothesis example). Override when your backend only consumes keys of a known shape."""
        return f"abe-contract.{run_id}.{name}"

    # -- plumbing ------------------------------------------------------------------------------------

    @pytest.fixture
    def contract_timeout(self, request: pytest.FixtureRequest) -> float:
        configured = timeout_from_config(request.config)
        return float(self.timeout) if configured is None else configured

    @pytest.fixture
    def contract_spec(self, backend_factory: BackendFactory, contract_timeout: float) -> RunSpec:
        return RunSpec(
            factory=backend_factory,
            capabilities=self.capabilities,
            timeout=contract_timeout,
            prompt_delivery=self.prompt_delivery_seconds,
            unwrap=self.unwrap_message,
            close_backend=self.close_backend,
            make_key=self.contract_key,
        )

    # -- the protocol --------------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_implements_protocol(self, contract_spec: RunSpec) -> None:
        async with ContractRun(contract_spec) as run:
            backend = await run.backend()
            assert isinstance(backend, MessageQueueBackendProtocol), (
                f"{type(backend).__name__} lacks publish/consume/from_env of MessageQueueBackendProtocol"
            )
            assert inspect.iscoroutinefunction(backend.publish), "publish() must be `async def`"
            assert callable(getattr(type(backend), "from_env", None)), "from_env must be a classmethod"
            run.open_stream(backend, run.group())

    @pytest.mark.asyncio
    async def test_round_trip(self, contract_spec: RunSpec) -> None:
        async with ContractRun(contract_spec) as run:
            backend = await run.backend()
            consumer = run.consumer(backend, run.group())
            await run.handshake(backend, [consumer])
            seq = await run.publish(backend, run.key(), {"text": "hello"})
            await run.wait_for_seqs([consumer], [seq])
            await run.barrier(backend, [consumer], [run.key()])
            run.check_no_duplicates([consumer])
            run.check_payloads([consumer])

    @pytest.mark.asyncio
    async def test_json_type_fidelity(self, contract_spec: RunSpec) -> None:
        async with ContractRun(contract_spec) as run:
            backend = await run.backend()
            consumer = run.consumer(await run.other_instance(backend), run.group())
            await run.handshake(backend, [consumer])
            seq = await run.publish(backend, run.key(), fidelity_fields())
            await run.wait_for_seqs([consumer], [seq])
            run.check_payloads([consumer])

    @pytest.mark.asyncio
    async def test_many_messages_no_loss_no_duplicates(self, contract_spec: RunSpec) -> None:
        async with ContractRun(contract_spec) as run:
            backend = await run.backend()
            consumer = run.consumer(await run.other_instance(backend), run.group())
            await run.handshake(backend, [consumer])
            seqs = [await run.publish(backend, run.key(), {"n": n}) for n in range(self.message_count)]
            await run.wait_for_seqs([consumer], seqs)
            await run.barrier(backend, [consumer], [run.key()])
            run.check_no_duplicates([consumer])
            run.check_payloads([consumer])

    @pytest.mark.asyncio
    async def test_several_keys(self, contract_spec: RunSpec) -> None:
        async with ContractRun(contract_spec) as run:
            backend = await run.backend()
            consumer = run.consumer(await run.other_instance(backend), run.group())
            await run.handshake(backend, [consumer])
            keys = [run.key(f"k{index}") for index in range(4)]
            seqs = [await run.publish(backend, key, {"round": n}) for n in range(5) for key in keys]
            await run.wait_for_seqs([consumer], seqs)
            await run.barrier(backend, [consumer], keys)
            run.check_no_duplicates([consumer])
            run.check_payloads([consumer])
            keys_seen = {tag.key for tag, _ in consumer.data}
            assert keys_seen == set(keys), f"messages of keys {set(keys) - keys_seen} missing"

    @pytest.mark.asyncio
    async def test_publish_before_consume_is_delivered(self, contract_spec: RunSpec) -> None:
        async with ContractRun(contract_spec) as run:
            backend = await run.backend()
            seqs = [await run.publish(backend, run.key(), {"early": n}) for n in range(3)]
            consumer = run.consumer(backend, run.group())
            await run.wait_for_seqs([consumer], seqs)
            await run.barrier(backend, [consumer], [run.key()])
            run.check_no_duplicates([consumer])
            run.check_payloads([consumer])

    @pytest.mark.asyncio
    async def test_message_published_while_consumer_waits_is_delivered_promptly(
        self, contract_spec: RunSpec
    ) -> None:
        async with ContractRun(contract_spec) as run:
            backend = await run.backend()
            consumer = run.consumer(await run.other_instance(backend), run.group())
            await run.handshake(backend, [consumer])
            # Not an assertion: gives the consumer time to park in its blocking read, which is
            # the state this test is about (a wake-up, not a poll that happens to be running).
            await asyncio.sleep(0.05)
            seq = await run.publish(backend, run.key(), {"late": True})
            await run.wait_for_seqs([consumer], [seq], within=contract_spec.prompt_delivery)

    @pytest.mark.asyncio
    async def test_concurrent_publishes_all_delivered(self, contract_spec: RunSpec) -> None:
        async with ContractRun(contract_spec) as run:
            backend = await run.backend()
            consumer = run.consumer(await run.other_instance(backend), run.group())
            await run.handshake(backend, [consumer])
            keys = [run.key(f"k{index}") for index in range(5)]
            seqs = await asyncio.gather(
                *(
                    run.publish(backend, keys[n % len(keys)], {"n": n})
                    for n in range(self.concurrent_publish_count)
                )
            )
            await run.wait_for_seqs([consumer], seqs)
            await run.barrier(backend, [consumer], keys)
            run.check_no_duplicates([consumer])
            run.check_payloads([consumer])

    @pytest.mark.asyncio
    async def test_consume_stops_when_cancelled_or_closed(self, contract_spec: RunSpec) -> None:
        async with ContractRun(contract_spec) as run:
            backend = await run.backend()
            idle = run.open_stream(backend, run.group("idle"), "idle")

            async def wait_for_one() -> None:
                with contextlib.suppress(StopAsyncIteration):
                    await anext(idle)

            waiter = asyncio.create_task(wait_for_one())
            # Not an assertion: lets the consumer park in its blocking read before it is cancelled.
            await asyncio.sleep(0.05)
            waiter.cancel()
            done, _ = await asyncio.wait({waiter}, timeout=run.timeout)
            assert done, f"consume() ignored cancellation for {run.timeout:g}s"
            if not waiter.cancelled() and waiter.exception() is not None:
                pytest.fail(f"consume() raised {waiter.exception()!r} when cancelled")

            busy = run.open_stream(backend, run.group(), "busy")
            seq = await run.publish(backend, run.key(), {"then": "close"})
            message = await run.next_message(busy)
            tag = read_tag(message)
            assert tag is not None and tag.seq == seq, f"expected seq {seq}, got {message!r}"
            await asyncio.wait_for(busy.aclose(), run.timeout)
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(busy), run.timeout)

    # -- instances and groups ------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_durable_across_instances(self, contract_spec: RunSpec) -> None:
        contract_spec.capabilities.require("durable_across_instances")
        async with ContractRun(contract_spec) as run:
            publisher = await run.backend()
            seqs = [await run.publish(publisher, run.key(), {"n": n}) for n in range(5)]
            reader = await run.backend()
            assert reader is not publisher, "backend_factory returned the same instance twice"
            consumer = run.consumer(reader, run.group())
            await run.wait_for_seqs([consumer], seqs)
            await run.barrier(publisher, [consumer], [run.key()])
            run.check_no_duplicates([consumer])
            run.check_payloads([consumer])

    @pytest.mark.asyncio
    async def test_competing_consumers_in_one_group_get_each_message_once(
        self, contract_spec: RunSpec
    ) -> None:
        contract_spec.capabilities.require("supports_groups")
        async with ContractRun(contract_spec) as run:
            publisher = await run.backend()
            group = run.group("workers")
            consumers = [run.consumer(await run.other_instance(publisher), group, f"w{i}") for i in range(3)]
            await run.handshake(publisher, consumers)
            seqs = [await run.publish(publisher, run.key(), {"job": n}) for n in range(60)]
            await run.wait_for_seqs(consumers, seqs)
            await run.barrier(publisher, consumers, [run.key()])
            run.check_no_duplicates(consumers)
            run.check_payloads(consumers)

    @pytest.mark.asyncio
    async def test_separate_groups_each_get_every_message(self, contract_spec: RunSpec) -> None:
        contract_spec.capabilities.require("supports_groups", "fans_out_to_groups")
        async with ContractRun(contract_spec) as run:
            publisher = await run.backend()
            group_a = [
                run.consumer(await run.other_instance(publisher), run.group("a"), f"a{i}") for i in range(2)
            ]
            group_b = [run.consumer(await run.other_instance(publisher), run.group("b"), "b0")]
            await run.handshake(publisher, group_a + group_b)
            seqs = [await run.publish(publisher, run.key(), {"event": n}) for n in range(30)]
            for members in (group_a, group_b):
                await run.wait_for_seqs(members, seqs)
            await run.barrier(publisher, group_a + group_b, [run.key()])
            for members in (group_a, group_b):
                run.check_no_duplicates(members)
                run.check_payloads(members)

    @pytest.mark.asyncio
    async def test_order_per_key(self, contract_spec: RunSpec) -> None:
        contract_spec.capabilities.require("ordered_per_key")
        async with ContractRun(contract_spec) as run:
            backend = await run.backend()
            consumer = run.consumer(await run.other_instance(backend), run.group())
            await run.handshake(backend, [consumer])
            keys = [run.key(f"k{index}") for index in range(3)]
            seqs = [await run.publish(backend, key, {"n": n}) for n in range(30) for key in keys]
            await run.wait_for_seqs([consumer], seqs)
            await run.barrier(backend, [consumer], keys)
            run.check_no_duplicates([consumer])
            for key in keys:
                arrived = [tag.seq for tag, _ in consumer.data if tag.key == key]
                assert arrived == sorted(arrived), (
                    f"key {key!r}: publish order {sorted(arrived)}, arrival {arrived}"
                )

    # -- at-least-once -------------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_close_mid_stream_redelivers_in_flight_message(self, contract_spec: RunSpec) -> None:
        contract_spec.capabilities.require("redelivers_unacknowledged")
        async with ContractRun(contract_spec) as run:
            publisher = await run.backend()
            group = run.group()
            seqs = [await run.publish(publisher, run.key(), {"n": n}) for n in range(5)]
            first = run.open_stream(await run.other_instance(publisher), group, "closed")
            in_flight = read_tag(await run.next_message(first))
            assert in_flight is not None and in_flight.seq in seqs, "first consumer got an unexpected message"
            # Closed without asking for another message: the one in hand was never acknowledged.
            await asyncio.wait_for(first.aclose(), run.timeout)
            await self._expect_redelivery(run, publisher, group, seqs, in_flight.seq)

    @pytest.mark.asyncio
    async def test_cancel_mid_handler_redelivers_in_flight_message(self, contract_spec: RunSpec) -> None:
        contract_spec.capabilities.require("redelivers_unacknowledged")
        async with ContractRun(contract_spec) as run:
            publisher = await run.backend()
            group = run.group()
            seqs = [await run.publish(publisher, run.key(), {"n": n}) for n in range(5)]
            stream = run.open_stream(await run.other_instance(publisher), group, "cancelled")
            handed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            async def worker() -> None:
                async for message in stream:
                    tag = read_tag(run.spec.unwrap(message))
                    if tag is not None and tag.run != run.run_id:
                        continue  # left over from an earlier test on a shared broker
                    if not handed.done():
                        handed.set_result(message)
                    # A handler that never finishes, so the only way out is cancellation.
                    await asyncio.Event().wait()

            task = asyncio.create_task(worker())
            try:
                message = await asyncio.wait_for(asyncio.shield(handed), run.timeout)
            except TimeoutError:
                pytest.fail(f"no message reached the handler within {run.timeout:g}s")
            finally:
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=run.timeout)
                assert done, "consumer task ignored cancellation"
            await asyncio.wait_for(stream.aclose(), run.timeout)
            in_flight = read_tag(run.spec.unwrap(message))
            assert in_flight is not None and in_flight.seq in seqs, (
                f"handler got an unexpected message {message!r}"
            )
            await self._expect_redelivery(run, publisher, group, seqs, in_flight.seq)

    async def _expect_redelivery(
        self, run: ContractRun, publisher: Any, group: str | None, seqs: list[int], in_flight: int
    ) -> None:
        survivor = run.consumer(await run.other_instance(publisher), group, "survivor")
        budget = run.timeout + run.capabilities.redelivery_timeout
        await run.wait_for_seqs([survivor], seqs, within=budget)
        await run.barrier(publisher, [survivor], [run.key()])
        # The in-flight message may legitimately arrive twice (at-least-once); the rest were never
        # touched by a failing consumer, so they must arrive once.
        run.check_no_duplicates([survivor], allowed=[in_flight])
        run.check_payloads([survivor])

    # -- validation ----------------------------------------------------------------------------------

    @pytest.mark.asyncio
    @pytest.mark.parametrize("case", sorted(_INVALID_PAYLOADS))
    async def test_invalid_payload_rejected(self, contract_spec: RunSpec, case: str) -> None:
        contract_spec.capabilities.require("rejects_invalid_payloads")
        async with ContractRun(contract_spec) as run:
            backend = await run.backend()
            payload = copy.deepcopy(_INVALID_PAYLOADS[case])
            if isinstance(payload, dict) and MARKER in payload:
                # Marked as this run's data so that a delivery, if any, is recognised as ours.
                payload[MARKER] = make_payload(run.tag("data", run.key()))[MARKER]
            await self._expect_rejection(run, backend, run.key(), payload, f"payload case {case!r}")

    @pytest.mark.asyncio
    @pytest.mark.parametrize("case", sorted(_INVALID_KEYS))
    async def test_invalid_key_rejected(self, contract_spec: RunSpec, case: str) -> None:
        contract_spec.capabilities.require("rejects_invalid_keys")
        async with ContractRun(contract_spec) as run:
            backend = await run.backend()
            payload = make_payload(run.tag("data", run.key()), {"bad_key": case})
            await self._expect_rejection(run, backend, _INVALID_KEYS[case], payload, f"key case {case!r}")

    async def _expect_rejection(
        self, run: ContractRun, backend: Any, key: Any, payload: Any, what: str
    ) -> None:
        consumer = run.consumer(await run.other_instance(backend), run.group())
        await run.handshake(backend, [consumer])
        try:
            await asyncio.wait_for(backend.publish(key, payload), run.timeout)
        except (TypeError, ValueError):
            pass
        except TimeoutError:
            pytest.fail(f"publish() with invalid {what} neither raised nor returned within {run.timeout:g}s")
        except Exception as error:
            pytest.fail(f"publish() with invalid {what} raised {error!r}; expected TypeError or ValueError")
        else:
            pytest.fail(f"publish() accepted invalid {what} instead of raising TypeError/ValueError")
        sentinel = await run.publish(backend, run.key(), {"sentinel": True})
        await run.wait_for_seqs([consumer], [sentinel])
        before = [seq for seq in consumer.seqs() if seq != sentinel]
        assert not before, f"the rejected {what} was delivered anyway (seqs {before})"

    # -- construction and integration ---------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_from_env(
        self, contract_spec: RunSpec, backend_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        contract_spec.capabilities.require("supports_from_env")
        for name, value in backend_env.items():
            monkeypatch.setenv(name, value)
        async with ContractRun(contract_spec) as run:
            template = await run.backend()
            built = type(template).from_env()
            if inspect.isawaitable(built):
                built = await built
            run.adopt(built)
            assert isinstance(built, type(template)), f"from_env() returned {type(built).__name__}"
            assert isinstance(built, MessageQueueBackendProtocol)
            publisher = template if run.capabilities.durable_across_instances else built
            consumer = run.consumer(built, run.group())
            await run.handshake(publisher, [consumer])
            seq = await run.publish(publisher, run.key(), {"via": "from_env"})
            await run.wait_for_seqs([consumer], [seq])
            run.check_payloads([consumer])

    @pytest.mark.asyncio
    async def test_async_loop_consumer_end_to_end(self, contract_spec: RunSpec) -> None:
        async with ContractRun(contract_spec) as run:
            publisher = await run.backend()
            group = run.group()
            recorder = run.recorder("loop-consumer", group)
            failing: set[int] = set()

            async def handler(message: dict[str, Any]) -> None:
                tag = recorder.record(message)
                if tag is not None and tag.seq in failing:
                    raise RuntimeError("handler failure the consumer loop must survive")

            loop_consumer = AsyncLoopConsumer(await run.other_instance(publisher), group=group)
            runner = asyncio.create_task(loop_consumer.run(handler))
            try:
                await run.handshake(publisher, [recorder])
                seqs = [await run.publish(publisher, run.key(), {"n": n}) for n in range(10)]
                failing.add(seqs[3])
                await run.wait_for_seqs([recorder], seqs)
            finally:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(loop_consumer.shutdown(), run.timeout)
                done, _ = await asyncio.wait({runner}, timeout=run.timeout)
                if not done:
                    runner.cancel()
                    pytest.fail("AsyncLoopConsumer.run() did not return after shutdown()")
            if not runner.cancelled() and runner.exception() is not None:
                pytest.fail(f"AsyncLoopConsumer.run() raised {runner.exception()!r}")
            run.check_no_duplicates([recorder])
            run.check_payloads([recorder])

    # -- model-based ---------------------------------------------------------------------------------

    def test_state_machine(self, backend_factory: BackendFactory, contract_timeout: float) -> None:
        from ._machine import run_queue_state_machine

        run_queue_state_machine(
            backend_factory,
            capabilities=self.capabilities,
            timeout=contract_timeout,
            max_examples=self.state_machine_max_examples,
            step_count=self.state_machine_step_count,
            shrink=self.state_machine_shrink,
            unwrap=self.unwrap_message,
            close_backend=self.close_backend,
            make_key=self.contract_key,
        )


def iter_contract_tests() -> Iterator[str]:
    """Names of the contract's test methods, for reports and documentation."""
    for name in dir(QueueBackendContract):
        if name.startswith("test_"):
            yield name
