"""How the suite presents itself to an author: override errors, skips, the timeout option, equality."""

from __future__ import annotations

import math

import pytest

from abe_redis_testing.contract import Capabilities
from abe_redis_testing.contract._capabilities import CAPABILITY_DESCRIPTIONS
from abe_redis_testing.contract._payloads import strict_difference

INI = "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n{extra}\n"


def test_base_class_is_not_collected_and_factory_must_be_overridden(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra=""))
    pytester.makepyfile(
        test_author="""
        from abe_redis_testing.contract import QueueBackendContract

        class TestForgotFactory(QueueBackendContract):
            pass
        """
    )
    result = pytester.runpytest(
        "-p", "no:valkey", "-p", "no:cacheprovider", "-k", "round_trip or state_machine"
    )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*override `backend_factory` in your subclass*fresh backend instance*"])
    assert "QueueBackendContract::" not in result.stdout.str()


@pytest.mark.parametrize(
    ("args", "extra_ini", "expected"),
    [
        ((), "", 7.0),
        (("--abe-redis-contract-timeout=2.5",), "", 2.5),
        ((), "abe_redis_contract_timeout = 4", 4.0),
        (("--abe-redis-contract-timeout=3",), "abe_redis_contract_timeout = 4", 3.0),
    ],
)
def test_timeout_option_overrides_class_attribute(
    pytester: pytest.Pytester, args: tuple[str, ...], extra_ini: str, expected: float
) -> None:
    pytester.makeini(INI.format(extra=extra_ini))
    pytester.makepyfile(
        test_timeout=f"""
        from abe_redis_testing.contract import QueueBackendContract

        class TestTimeout(QueueBackendContract):
            timeout = 7.0

            def test_effective_timeout(self, contract_timeout):
                assert contract_timeout == {expected!r}
        """
    )
    result = pytester.runpytest(
        "-p", "abe_redis_testing.contract._plugin", "-p", "no:valkey", "-k", "effective_timeout", *args
    )
    result.assert_outcomes(passed=1)


def test_without_the_plugin_the_class_attribute_applies(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra=""))
    pytester.makepyfile(
        test_timeout="""
        from abe_redis_testing.contract import QueueBackendContract

        class TestTimeout(QueueBackendContract):
            timeout = 7.0

            def test_effective_timeout(self, contract_timeout):
                assert contract_timeout == 7.0
        """
    )
    pytester.runpytest("-p", "no:valkey", "-k", "effective_timeout").assert_outcomes(passed=1)


def test_require_skips_with_the_capability_name() -> None:
    with pytest.raises(pytest.skip.Exception, match="`ordered_per_key` not declared"):
        Capabilities().require("ordered_per_key")
    Capabilities(ordered_per_key=True).require("ordered_per_key")


def test_capability_constructors() -> None:
    everything = Capabilities.all(redelivery_timeout=1.5, fans_out_to_groups=False)
    assert everything.supports_groups and not everything.fans_out_to_groups
    assert everything.redelivery_timeout == 1.5
    assert Capabilities.from_mapping(everything.to_dict()) == everything
    assert set(CAPABILITY_DESCRIPTIONS) <= set(everything.to_dict())
    with pytest.raises(TypeError, match="unknown"):
        Capabilities.all(flies=True)


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        (1, 1.0),
        (True, 1),
        ([1, 2], (1, 2)),
        (0.0, -0.0),
        ({"a": 1}, {"a": 1, "b": 2}),
        ({"a": [{"b": None}]}, {"a": [{"b": False}]}),
        (2**70, float(2**70)),
    ],
)
def test_strict_difference_sees_type_changes(expected: object, actual: object) -> None:
    assert strict_difference(expected, actual) is not None


def test_strict_difference_accepts_faithful_copies() -> None:
    value = {"a": [1, 2.5, None, True, {"b": "ü", "c": []}], "d": {}, "e": -0.0, "f": math.pi}
    assert (
        strict_difference(
            value, {"a": [1, 2.5, None, True, {"b": "ü", "c": []}], "d": {}, "e": -0.0, "f": math.pi}
        )
        is None
    )
