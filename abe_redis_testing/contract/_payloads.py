"""Payload shapes the suite publishes, how it recognises them on the way back, and type-strict equality."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

# Every payload the suite publishes carries this field, so that leftovers from earlier tests on a
# shared broker can be told apart from this test's messages instead of being miscounted.
MARKER = "_abe_contract"

Kind = Literal["data", "probe", "barrier"]


@dataclass(frozen=True)
class Tag:
    run: str
    kind: Kind
    seq: int
    key: str


def make_payload(tag: Tag, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        MARKER: {"run": tag.run, "kind": tag.kind, "seq": tag.seq, "key": tag.key},
    }
    if extra:
        payload.update(extra)
    return payload


def read_tag(message: Any) -> Tag | None:
    """The tag of a suite message, or None for anything else (a non-dict, a foreign shape)."""
    if not isinstance(message, dict):
        return None
    marker = message.get(MARKER)
    if not isinstance(marker, dict):
        return None
    run, kind, seq, key = marker.get("run"), marker.get("kind"), marker.get("seq"), marker.get("key")
    if not (isinstance(run, str) and kind in ("data", "probe", "barrier") and isinstance(key, str)):
        return None
    if type(seq) is not int:
        return None
    return Tag(run=run, kind=kind, seq=seq, key=key)


def strict_difference(expected: Any, actual: Any, path: str = "$") -> str | None:
    """Where two JSON values differ, comparing types exactly (``1 != 1.0 != True``, list != tuple).

    Only the message itself may be a ``dict`` subclass (backends may attach delivery metadata
    to what they yield, as the protocol's ``MessageQueueMessage`` allows); inside it, types
    must match exactly.
    """
    top_level_dict = path == "$" and type(expected) is dict and isinstance(actual, dict)
    if type(expected) is not type(actual) and not top_level_dict:
        return (
            f"{path}: expected {type(expected).__name__} {expected!r}, got {type(actual).__name__} {actual!r}"
        )
    if isinstance(expected, dict):
        if set(expected) != set(actual):
            expected_keys, actual_keys = sorted(map(repr, expected)), sorted(map(repr, actual))
            return f"{path}: keys differ: expected {expected_keys}, got {actual_keys}"
        for name in expected:
            if name not in actual:
                return f"{path}: missing key {name!r}"
            difference = strict_difference(expected[name], actual[name], f"{path}[{name!r}]")
            if difference:
                return difference
        return None
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return f"{path}: expected {len(expected)} items, got {len(actual)}"
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            difference = strict_difference(left, right, f"{path}[{index}]")
            if difference:
                return difference
        return None
    if isinstance(expected, float):
        # -0.0 == 0.0, but a faithful JSON round trip keeps the sign.
        if expected != actual or math.copysign(1.0, expected) != math.copysign(1.0, actual):
            return f"{path}: expected {expected!r}, got {actual!r}"
        return None
    if expected != actual:
        return f"{path}: expected {expected!r}, got {actual!r}"
    return None


def strict_equal(expected: Any, actual: Any) -> bool:
    return strict_difference(expected, actual) is None


def fidelity_fields() -> dict[str, Any]:
    """Values a JSON backend must hand back with the same Python types and values."""
    return {
        "empty_dict": {},
        "empty_list": [],
        "empty_str": "",
        "nested": {"a": {"b": {"c": [1, [2, [3, {"d": None}]]]}}, "list_of_dicts": [{"x": 1}, {"y": [True]}]},
        "unicode": "héllo wörld ✓ 日本語 emoji 🎉 rtl עברית",
        "unicode_key_✓": "key with a non-ASCII character",
        "escapes": 'quote " backslash \\ newline \n tab \t nul \u0000',
        "big_int": 2**70 + 1,
        "negative_big_int": -(2**64) - 7,
        "zero": 0,
        "int": 42,
        "float": 0.1,
        "float_integral": 3.0,
        "float_tiny": 5e-324,
        "float_huge": 1.7976931348623157e308,
        "negative_zero": -0.0,
        "true": True,
        "false": False,
        "null": None,
        "mixed_list": [1, 1.5, "s", None, True, False, {}, []],
    }


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque object>"


def invalid_payload_cases() -> dict[str, Any]:
    """Payloads ``publish`` must refuse. Dicts carry a data marker so that a delivery is attributable."""

    def marked(extra: dict[Any, Any]) -> dict[Any, Any]:
        # The marker is filled in by the test; a placeholder keeps the case table static.
        return {MARKER: None, **extra}

    return {
        "list": [1, 2, 3],
        "str": "not a dict",
        "none": None,
        "int": 7,
        "set_value": marked({"value": {1, 2}}),
        "bytes_value": marked({"value": b"raw"}),
        "object_value": marked({"value": _Opaque()}),
        "frozenset_nested": marked({"value": [{"deep": {frozenset({1})}}]}),
        "nan": marked({"value": math.nan}),
        "infinity": marked({"value": math.inf}),
        "int_key": marked({1: "int key"}),
        "none_key_nested": marked({"nested": {None: "none key"}}),
        "tuple_key": marked({(1, 2): "tuple key"}),
    }


def invalid_key_cases() -> dict[str, Any]:
    return {"empty": "", "none": None, "int": 5, "bytes": b"key"}
