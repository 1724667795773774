"""The suite must be able to fail: each deliberately broken in-memory backend is run through it in
a subprocess, and the contract tests aimed at its defect must fail while unrelated ones still pass."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).parent

INVALID_PAYLOAD_TESTS = {
    f"test_invalid_payload_rejected[{case}]"
    for case in (
        "bytes_value",
        "frozenset_nested",
        "infinity",
        "int",
        "int_key",
        "list",
        "nan",
        "none",
        "none_key_nested",
        "object_value",
        "set_value",
        "str",
        "tuple_key",
    )
}
INVALID_KEY_TESTS = {f"test_invalid_key_rejected[{case}]" for case in ("bytes", "empty", "int", "none")}

# contract class -> (tests that must fail, tests that must still pass)
EXPECTATIONS: dict[str, tuple[set[str], set[str]]] = {
    "DroppingContract": (
        {
            "test_many_messages_no_loss_no_duplicates",
            "test_several_keys",
            "test_publish_before_consume_is_delivered",
            "test_concurrent_publishes_all_delivered",
            "test_durable_across_instances",
            "test_competing_consumers_in_one_group_get_each_message_once",
            "test_separate_groups_each_get_every_message",
            "test_order_per_key",
            "test_state_machine",
        },
        {"test_implements_protocol"} | INVALID_KEY_TESTS,
    ),
    "DuplicatingContract": (
        {
            "test_round_trip",
            "test_many_messages_no_loss_no_duplicates",
            "test_several_keys",
            "test_publish_before_consume_is_delivered",
            "test_concurrent_publishes_all_delivered",
            "test_durable_across_instances",
            "test_competing_consumers_in_one_group_get_each_message_once",
            "test_separate_groups_each_get_every_message",
            "test_order_per_key",
            "test_state_machine",
        },
        {"test_implements_protocol", "test_json_type_fidelity"} | INVALID_PAYLOAD_TESTS,
    ),
    "EagerAckContract": (
        {
            "test_close_mid_stream_redelivers_in_flight_message",
            "test_cancel_mid_handler_redelivers_in_flight_message",
        },
        {
            "test_round_trip",
            "test_many_messages_no_loss_no_duplicates",
            "test_competing_consumers_in_one_group_get_each_message_once",
            # test_state_machine: its close-with-a-message-in-hand rule may catch it too.
        },
    ),
    "IntToFloatContract": (
        {"test_json_type_fidelity", "test_state_machine"},
        {"test_implements_protocol", "test_round_trip"} | INVALID_PAYLOAD_TESTS,
    ),
    "TenantKeysWithoutOverrideContract": (
        {"test_round_trip", "test_json_type_fidelity", "test_state_machine"},
        {"test_implements_protocol"},
    ),
    "PermissiveContract": (
        INVALID_PAYLOAD_TESTS | INVALID_KEY_TESTS,
        {"test_round_trip", "test_json_type_fidelity", "test_many_messages_no_loss_no_duplicates"},
    ),
}


def _outcomes(junit: Path) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        children = {child.tag for child in case}
        if "failure" in children or "error" in children:
            outcome = "failed"
        elif "skipped" in children:
            outcome = "skipped"
        else:
            outcome = "passed"
        outcomes[case.attrib["name"]] = outcome
    return outcomes


@pytest.mark.parametrize("contract", sorted(EXPECTATIONS))
def test_suite_fails_broken_backend(
    contract: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    pytester.makeini("[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        **{f"test_{contract.lower()}": f"from contract_inmemory_backends import {contract} as TestBroken\n"}
    )
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-p",
        "abe_redis_testing.contract._plugin",
        "-p",
        "no:valkey",
        "-p",
        "no:cacheprovider",
        "--abe-redis-contract-timeout=1",
        f"--junitxml={junit}",
        "-q",
    )
    outcomes = _outcomes(junit)
    must_fail, must_pass = EXPECTATIONS[contract]
    failed = {name for name, outcome in outcomes.items() if outcome == "failed"}
    passed = {name for name, outcome in outcomes.items() if outcome == "passed"}
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]
    assert must_fail <= failed, f"not caught: {sorted(must_fail - failed)}; failed: {sorted(failed)}"
    assert must_pass <= passed, f"wrongly failed: {sorted(must_pass - passed)}"
    print(f"{contract}: failed {sorted(failed)}")
