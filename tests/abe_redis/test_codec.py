from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abe_redis import InvalidKeyError, InvalidPayloadError, PoisonMessageError
from abe_redis._codec import check_key, decode_fields, encode_payload

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_every_json_object_round_trips_exactly(payload: dict[str, Any]) -> None:
    decoded = decode_fields({b"payload": encode_payload(payload)})
    assert decoded == payload
    assert json.dumps(decoded, sort_keys=True) == json.dumps(payload, sort_keys=True)


def test_types_survive_not_just_values() -> None:
    payload = {"int": 10**30, "float": 1.0, "neg0": -0.0, "bool": True, "none": None, "uni": "日本 ✓ \u0000"}
    decoded = decode_fields({b"payload": encode_payload(payload)})
    assert type(decoded["int"]) is int and type(decoded["float"]) is float and type(decoded["bool"]) is bool
    assert math.copysign(1, decoded["neg0"]) == -1
    assert decoded == payload


@pytest.mark.parametrize(
    ("payload", "path", "problem"),
    [
        ([1, 2], "payload", "expected a dict, got list"),
        ("text", "payload", "expected a dict, got str"),
        ({"a": {1, 2}}, "payload['a']", "set is not JSON-serialisable"),
        ({"a": [1, b"x"]}, "payload['a'][1]", "bytes is not JSON-serialisable"),
        ({"a": float("nan")}, "payload['a']", "nan"),
        ({"a": {"b": float("inf")}}, "payload['a']['b']", "inf"),
        ({"a": (1, 2)}, "payload['a']", "tuple"),
        ({"a": {1: "x"}}, "payload['a'][1]", "key is int"),
        ({None: 1}, "payload[None]", "key is NoneType"),
        ({"a": object()}, "payload['a']", "object is not JSON-serialisable"),
    ],
)
def test_invalid_payload_is_a_typed_error_naming_the_value(payload: Any, path: str, problem: str) -> None:
    with pytest.raises(InvalidPayloadError) as caught:
        encode_payload(payload)
    assert caught.value.path == path
    assert problem in str(caught.value)
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, ValueError)


def test_circular_payload_is_rejected() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidPayloadError, match="circular"):
        encode_payload(loop)


@pytest.mark.parametrize(
    ("key", "problem"), [("", "non-empty"), (None, "must be a str"), (b"k", "must be a str")]
)
def test_invalid_keys(key: Any, problem: str) -> None:
    with pytest.raises(InvalidKeyError, match=problem):
        check_key(key, reserved_suffix=":dead-letter", registry_key="reg")


def test_reserved_keys() -> None:
    with pytest.raises(InvalidKeyError, match="dead-letter"):
        check_key("orders:dead-letter", reserved_suffix=":dead-letter", registry_key="reg")
    with pytest.raises(InvalidKeyError, match="registry"):
        check_key("reg", reserved_suffix=":dead-letter", registry_key="reg")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"payload": b"{not json"}, "not valid JSON"),
        ({b"payload": b"[1, 2]"}, "JSON list, not an object"),
        ({b"payload": b"\xff\xfe"}, "not valid JSON"),
        ({b"other": b"{}"}, "no 'payload' field (fields: other)"),
        ({}, "no fields"),
        (None, "no fields"),
    ],
)
def test_poison_is_recognised_with_a_reason(fields: Any, reason: str) -> None:
    with pytest.raises(PoisonMessageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        decode_fields(fields)


def test_decode_accepts_str_fields_from_a_decoding_client() -> None:
    assert decode_fields({"payload": '{"a": 1}'}) == {"a": 1}
