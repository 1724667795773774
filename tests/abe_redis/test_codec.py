from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abe_redis import DeadLetters, InvalidKeyError, InvalidPayloadError, PoisonMessageError, _codec
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


@pytest.fixture(params=["orjson", "stdlib"])
def codec_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test through the orjson fast path and again through the stdlib alone (what a
    consumer without orjson does)."""
    assert _codec._orjson is not None, "orjson is a dependency; the fast path must be tested"
    if request.param == "stdlib":
        monkeypatch.setattr(_codec, "_orjson", None)
    return str(request.param)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_every_json_object_round_trips_exactly(payload: dict[str, Any]) -> None:
    for orjson in (_codec._orjson, None):  # the fast path, then the stdlib alone
        saved, _codec._orjson = _codec._orjson, orjson
        try:
            decoded = decode_fields({b"payload": encode_payload(payload)})
        finally:
            _codec._orjson = saved
        assert _same(decoded, payload)
        assert json.dumps(decoded, sort_keys=True) == json.dumps(payload, sort_keys=True)


def _same(a: Any, b: Any) -> bool:
    """Equal *and* of the same JSON shape: types, float signs, key order (1 == 1.0 == True in
    Python, so plain == would hide an int that came back as a float). Iterative: values nest
    deeper than the recursion limit."""
    pending = [(a, b)]
    while pending:
        x, y = pending.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            both_nan = math.isnan(x) and math.isnan(y)
            if not (both_nan or (x == y and math.copysign(1, x) == math.copysign(1, y))):
                return False
        elif isinstance(x, dict):
            if list(x) != list(y):
                return False
            pending.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y, strict=True))
        elif x != y:
            return False
    return True


def _outcome(decode: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", decode(raw)
    except Exception as exc:  # which error does not matter here, only that both refuse
        return "error", type(exc).__name__


def _stdlib(raw: bytes) -> Any:
    return _codec._DECODER.decode(raw.decode("utf-8"))


def _assert_fast_path_is_the_stdlib(raw: bytes) -> None:
    fast, reference = _outcome(_codec._loads, raw), _outcome(_stdlib, raw)
    assert fast[0] == reference[0], (raw, fast, reference)
    if fast[0] == "ok":
        assert _same(fast[1], reference[1]), (raw, fast[1], reference[1])


_wide_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.integers(min_value=-(2**64) - 2, max_value=-(2**63) + 2)
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)
    | st.floats()  # NaN and infinities included: the stdlib writes them, decoding refuses them
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(_wide_values, st.booleans(), st.booleans())
def test_the_orjson_fast_path_decodes_exactly_as_the_stdlib(value: Any, ascii: bool, compact: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii, separators=(",", ":") if compact else None)
    _assert_fast_path_is_the_stdlib(text.encode("utf-8", "surrogatepass"))


_json_tokens = [*'{}[]",:-+.eE0123456789 \t\n\r\\/ubfnrtx', "\\ud800", "\\udc00", "\\u00e9"]
_json_tokens += ["NaN", "Infinity", "true", "false", "null", "\ufeff", "\x00", "\x1f", "\u2028", "\u00e9"]
_json_ish = st.lists(st.sampled_from(_json_tokens), max_size=40).map("".join)


@given(_json_ish)
def test_the_fast_path_refuses_and_accepts_what_the_stdlib_does_on_json_like_text(text: str) -> None:
    _assert_fast_path_is_the_stdlib(text.encode("utf-8", "surrogatepass"))


@given(st.binary(max_size=40))
def test_the_fast_path_matches_the_stdlib_on_arbitrary_bytes(raw: bytes) -> None:
    _assert_fast_path_is_the_stdlib(raw)


def _decoded_without_orjson(fields: dict[bytes, bytes]) -> tuple[str, Any]:
    saved, _codec._orjson = _codec._orjson, None
    try:
        return "ok", decode_fields(fields)
    except PoisonMessageError as exc:
        return "poison", str(exc)
    finally:
        _codec._orjson = saved


def _assert_decode_fields_is_the_stdlibs(raw: bytes) -> None:
    try:
        fast: tuple[str, Any] = "ok", decode_fields({b"payload": raw})
    except PoisonMessageError as exc:
        fast = "poison", str(exc)
    reference = _decoded_without_orjson({b"payload": raw})
    assert fast[0] == reference[0], (raw, fast, reference)
    assert _same(fast[1], reference[1]) if fast[0] == "ok" else fast[1] == reference[1]


@given(_wide_values, st.booleans())
def test_decode_fields_with_orjson_yields_or_refuses_exactly_as_without(value: Any, ascii: bool) -> None:
    """The whole consumer-side decision (payload, or poison with which reason), not only the
    parser: decode_fields has an inline fast path of its own."""
    _assert_decode_fields_is_the_stdlibs(
        json.dumps({"v": value}, ensure_ascii=ascii).encode("utf-8", "surrogatepass")
    )
    _assert_decode_fields_is_the_stdlibs(
        json.dumps(value, ensure_ascii=ascii).encode("utf-8", "surrogatepass")
    )


@given(_json_ish | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_decode_fields_refuses_json_like_text_exactly_as_without_orjson(text: str) -> None:
    _assert_decode_fields_is_the_stdlibs(text.encode("utf-8", "surrogatepass"))


class _Text(str):
    pass


class _Colour(enum.Enum):
    RED = 1


class _Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class _Point:
    x: int


_odd_leaves = st.sampled_from(
    [
        (1, 2),
        float("nan"),
        float("inf"),
        -0.0,
        _Text("sub"),
        _Colour.RED,
        _Level.HIGH,
        _Point(1),
        datetime.datetime(2026, 1, 1),
        uuid.UUID(int=7),
        {1, 2},
        b"bytes",
        decimal.Decimal("1.5"),
        2**64,
        2**64 - 1,
        -(2**63) - 1,
        "\ud800",
        {1: "int key"},
        {None: "none key"},
        {"ok": (1,)},
    ]
)
_payload_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text() | _odd_leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)


def _encoded(payload: Any, *, with_orjson: bool) -> tuple[str, Any]:
    saved = _codec._orjson
    if not with_orjson:
        _codec._orjson = None
    try:
        return "ok", encode_payload(payload)
    except InvalidPayloadError as exc:
        return "refused", (exc.path, str(exc))
    except Exception as exc:  # the same surprise on both paths is fine; a different one is not
        return "raised", type(exc).__name__
    finally:
        _codec._orjson = saved


@given(st.dictionaries(st.text(max_size=5), _payload_values, max_size=4))
def test_publish_with_orjson_accepts_and_refuses_exactly_as_without(payload: dict[str, Any]) -> None:
    """orjson writes NaN as null, tuples and Enums as their values, dataclasses as objects: the
    round trip (or the stdlib path it falls back to) must still accept exactly what the stdlib
    accepts, refuse the rest with the same error, and store bytes every consumer reads alike."""
    fast, reference = _encoded(payload, with_orjson=True), _encoded(payload, with_orjson=False)
    assert fast[0] == reference[0], (payload, fast, reference)
    if fast[0] != "ok":
        assert fast[1] == reference[1]
        return
    for data in (fast[1], reference[1]):
        for with_orjson in (True, False):
            saved, _codec._orjson = _codec._orjson, _codec._orjson if with_orjson else None
            try:
                decoded = decode_fields({b"payload": data})
            finally:
                _codec._orjson = saved
            assert decoded == payload
            assert _same(decoded, decode_fields({b"payload": reference[1]}))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"big": 123456789012345678901234567890}',  # orjson alone would return a float
        b'{"min": -9223372036854775809, "max": 18446744073709551616}',
        b'{"edge": 9223372036854775807, "neg": -9223372036854775808}',
        b'{"inf": 1e400}',  # the stdlib reads inf (not a NaN/Infinity token), orjson refuses
        b'{"x": NaN}',
        b'{"x": "\\ud800"}',
        b'{"x": "\\ud83d\\ude00"}',
        b"\xef\xbb\xbf{}",
        b'{"a": 1, "a": 2}',
        b'{"z": -0, "f": -0.0, "e": 1E5}',
        b"[" * 1100 + b"]" * 1100,
    ],
)
def test_known_differences_between_orjson_and_the_stdlib_go_the_stdlib_way(raw: bytes) -> None:
    _assert_fast_path_is_the_stdlib(raw)
    _assert_decode_fields_is_the_stdlibs(raw)


def test_a_huge_integer_keeps_its_exact_value_through_decode_fields(codec_path: str) -> None:
    decoded = decode_fields({b"payload": b'{"n": 123456789012345678901234567890}'})
    assert decoded == {"n": 123456789012345678901234567890} and type(decoded["n"]) is int


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
def test_poison_is_recognised_with_a_reason(fields: Any, reason: str, codec_path: str) -> None:
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
