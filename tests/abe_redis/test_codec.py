from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abe_redis import DeadLetters, InvalidKeyError, InvalidPayloadError, PoisonMessageError
from abe_redis._codec import check_key, decode_fields, encode_payload
from abe_redis_testing import RedisBackendFactory

from .helpers import take

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


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[" * 5000 + b"]" * 5000, "nests too deeply"),
        (b'{"a": ' * 5000 + b"1" + b"}" * 5000, "nests too deeply"),
        (b'{"x": NaN}', "NaN"),
        (b'{"x": -Infinity}', "-Infinity"),
        (b'{"x": "\\ud800"}', "lone surrogate"),
    ],
    ids=["deep-list", "deep-object", "nan", "infinity", "lone-surrogate"],
)
async def test_entries_publish_would_refuse_are_dead_lettered_between_good_neighbours(
    queue_backend_factory: RedisBackendFactory, raw: bytes, reason: str
) -> None:
    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    await backend.publish("odd", {"n": 1})
    await client.xadd("odd", {"payload": raw})
    await backend.publish("odd", {"n": 2})
    stream = backend.consume(group="g")
    try:
        got = await take(stream, 2)
    finally:
        await stream.aclose()
    assert [m["n"] for m in got] == [1, 2]
    [letter] = await DeadLetters(backend).entries("odd")
    assert reason in letter.reason
    assert letter.fields[b"payload"] == raw


async def test_broadcast_skips_deeply_nested_entries_and_goes_on(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    backend = queue_backend_factory(mode="broadcast")
    client: Any = queue_backend_factory.client()
    await backend.publish("wide", {"n": 0})  # registers the stream
    stream = backend.consume()
    try:
        pulling = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.3)  # the broadcast reader positions itself at "now"
        await client.xadd("wide", {"payload": b"[" * 5000 + b"]" * 5000})
        await backend.publish("wide", {"n": 1})
        got = [await asyncio.wait_for(pulling, 10)]
        while got[-1] != {"n": 1}:  # n=0 may or may not fall after the reader's start
            got += await take(stream, 1)
    finally:
        await stream.aclose()
    assert got in ([{"n": 1}], [{"n": 0}, {"n": 1}])
