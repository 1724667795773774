"""run_contract: the programmatic runner the `abe-redis verify` CLI calls."""

from __future__ import annotations

import io

import pytest
from contract_inmemory_backends import BROKER_ENV, FULL, DeclaredReferenceBackend, EagerAckBackend
from rich.console import Console

from abe_redis_testing.contract import Capabilities, ContractReport, render_report, run_contract

MEMORY = "abe.backends.message_queue.service.memory:MemoryBackend"


@pytest.fixture(scope="module")
def memory_report() -> ContractReport:
    return run_contract(
        MEMORY,
        {"supports_groups": True, "durable_across_instances": True, "ordered_per_key": True},
        timeout=5,
    )


def test_memory_backend_passes_what_it_claims(memory_report: ContractReport) -> None:
    assert memory_report.ok, memory_report.output[-3000:]
    assert not memory_report.failed
    passed = {item.name for item in memory_report.passed}
    assert {
        "test_round_trip",
        "test_competing_consumers_in_one_group_get_each_message_once",
        "test_order_per_key",
        "test_from_env",
        "test_async_loop_consumer_end_to_end",
        "test_state_machine",
    } <= passed


def test_memory_backend_skips_name_the_missing_capability(memory_report: ContractReport) -> None:
    skipped = {item.name: item.reason for item in memory_report.skipped}
    assert "`fans_out_to_groups` not declared" in skipped["test_separate_groups_each_get_every_message"]
    assert "`redelivers_unacknowledged`" in skipped["test_close_mid_stream_redelivers_in_flight_message"]
    assert "`rejects_invalid_payloads`" in skipped["test_invalid_payload_rejected[nan]"]
    assert "`rejects_invalid_keys`" in skipped["test_invalid_key_rejected[empty]"]
    assert len(skipped) == 20


def test_report_renders_as_a_table(memory_report: ContractReport) -> None:
    buffer = io.StringIO()
    render_report(memory_report, Console(file=buffer, width=200, color_system=None))
    text = buffer.getvalue()
    assert "test_round_trip" in text and "passed" in text and "skipped" in text
    assert memory_report.summary() in text


def test_failures_carry_their_reason() -> None:
    report = run_contract(EagerAckBackend, FULL, timeout=1, env={BROKER_ENV: "runner-eager-ack"})
    assert not report.ok
    failed = {item.name: item.reason for item in report.failed}
    # The state machine's close-with-a-message-in-hand rule may catch it too.
    failed.pop("test_state_machine", None)
    assert set(failed) == {
        "test_close_mid_stream_redelivers_in_flight_message",
        "test_cancel_mid_handler_redelivers_in_flight_message",
    }, report.output[-3000:]
    assert all("never arrived" in reason for reason in failed.values()), failed


def test_capabilities_declared_on_the_class_are_used() -> None:
    report = run_contract(DeclaredReferenceBackend, timeout=5, env={BROKER_ENV: "runner-declared"})
    assert report.capabilities == FULL
    assert report.ok, report.output[-3000:]
    assert not report.skipped


def test_bad_specs_are_refused_before_running() -> None:
    with pytest.raises(ValueError, match="module:Class"):
        run_contract("no_colon_here")
    with pytest.raises(ModuleNotFoundError):
        run_contract("surely_not_a_module_xyz:Backend")

    class Local:
        pass

    with pytest.raises(ValueError, match="importable"):
        run_contract(Local)
    with pytest.raises(TypeError, match="unknown capabilities"):
        run_contract(MEMORY, {"teleports": True})


def test_default_capabilities_are_the_protocol_minimum() -> None:
    assert Capabilities() == Capabilities(supports_from_env=True)
    assert not any(value for name, value in Capabilities().to_dict().items() if name != "supports_from_env")
