"""Payload <-> stream fields.

A payload is stored as one field, ``payload``, holding compact UTF-8 JSON. Publishing accepts
only values that come back *equal and of the same JSON shape* (no tuples turned into lists, no
int keys turned into strings, no NaN), so what a consumer receives is exactly what was sent.
Anything in a stream that does not decode to a JSON object is *poison*: the consumer
dead-letters it with the reason instead of yielding it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from ._errors import InvalidKeyError, InvalidPayloadError, PoisonMessageError

_orjson: ModuleType | None
_DUMP_OPTIONS = 0
try:  # a C codec, ~4x faster to decode and ~20x to encode; the stdlib paths stay the reference
    import orjson

    _orjson = orjson
    _DUMP_OPTIONS = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS
    _DUMP_OPTIONS |= orjson.OPT_PASSTHROUGH_DATETIME
except ImportError:  # pragma: no cover - orjson is a dependency, but the stdlib path must work alone
    _orjson = None

PAYLOAD_FIELD = "payload"
_PAYLOAD_FIELD_BYTES = PAYLOAD_FIELD.encode()


def check_key(key: object, *, reserved_suffix: str, registry_key: str, key_prefix: str | None = None) -> str:
    if not isinstance(key, str):
        raise InvalidKeyError(f"key must be a str, got {type(key).__name__}")
    if not key:
        raise InvalidKeyError("key must be a non-empty string")
    if key == registry_key:
        raise InvalidKeyError(f"key {key!r} is the stream registry's own key")
    if key_prefix and key.startswith(key_prefix):
        raise InvalidKeyError(f"key {key!r} is under {key_prefix!r}, the prefix of the backend's own keys")
    if key.endswith(reserved_suffix):
        raise InvalidKeyError(f"key {key!r} ends with {reserved_suffix!r}, which names dead-letter streams")
    return key


def encode_payload(payload: object) -> bytes:
    """JSON bytes for ``payload``, or :class:`InvalidPayloadError` naming the first bad value."""
    if not isinstance(payload, dict):
        raise InvalidPayloadError("payload", f"expected a dict, got {type(payload).__name__}")
    if _orjson is not None and type(payload) is dict:
        # orjson writes what the stdlib would accept, or something that does not come back
        # equal (NaN as null, a tuple as a list, an Enum as its value); the round trip through
        # the consumer's own decoding tells which, and anything else takes the stdlib path
        # below, which names the problem. Subclasses, dataclasses and datetimes are passed
        # through to that path too, as the stdlib treats them differently.
        try:
            data: bytes = _orjson.dumps(payload, option=_DUMP_OPTIONS)
            if _loads(data) == payload:
                return data
        except Exception:  # unserialisable, or an __eq__ that raises: the stdlib's turn
            pass
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise _explain(payload, fallback=str(exc)) from None
    # json.dumps silently turns tuples into lists and int/None/bool keys into strings; the
    # comparison catches those lossy conversions (it is C code, cheaper than a Python walk).
    if json.loads(text) != payload:
        raise _explain(payload, fallback="does not survive a JSON round trip unchanged")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise _explain(payload, fallback="holds a lone surrogate, which UTF-8 cannot encode") from None


def decode_fields(fields: Mapping[Any, Any] | None) -> dict[str, Any]:
    """The payload in a stream entry's fields, or :class:`PoisonMessageError` saying why not."""
    # The common case, first and inline (this runs for every message): bytes that orjson reads
    # exactly as the stdlib would, holding no escape at all, so no lone surrogate either.
    raw = fields.get(_PAYLOAD_FIELD_BYTES) if fields else None
    if (
        type(raw) is bytes
        and _orjson is not None
        and raw.find(b"\\") < 0
        and raw.translate(_DIGITS_TO_ZERO).find(_LONG_NUMBER) < 0
    ):
        try:
            value = _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass
        else:
            if type(value) is dict:
                return value
    return _decode_fields(fields)


def _decode_fields(fields: Mapping[Any, Any] | None) -> dict[str, Any]:
    if not fields:
        raise PoisonMessageError("entry has no fields (deleted or trimmed)")
    raw = fields.get(_PAYLOAD_FIELD_BYTES)
    if raw is None:
        raw = fields.get(PAYLOAD_FIELD)
    if raw is None:
        names = ", ".join(sorted(_text(k) for k in fields))
        raise PoisonMessageError(f"entry has no {PAYLOAD_FIELD!r} field (fields: {names})")
    try:
        value = _loads(raw) if isinstance(raw, bytes) else _DECODER.decode(str(raw))
    except RecursionError:
        raise PoisonMessageError(f"{PAYLOAD_FIELD!r} nests too deeply to decode") from None
    except PoisonMessageError:
        raise
    except Exception as exc:  # any decode failure is the entry's fault, never the consumer's
        raise PoisonMessageError(f"{PAYLOAD_FIELD!r} is not valid JSON: {_short(exc)}") from None
    if not isinstance(value, dict):
        raise PoisonMessageError(f"{PAYLOAD_FIELD!r} is JSON {type(value).__name__}, not an object")
    data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "replace")
    if data.find(b"\\") >= 0 and _ESCAPED_SURROGATE.search(data):
        # Only a \uD800-\uDFFF escape can smuggle a lone surrogate past the UTF-8 decoder;
        # publish refuses those, so consume does too. Pairs are fine: check the decoded text.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise PoisonMessageError(f"{PAYLOAD_FIELD!r} holds a lone surrogate") from None
    return value


_ESCAPED_SURROGATE = re.compile(rb"\\[uU][dD][89abAB]")

# Where orjson's reading differs from the stdlib's, the stdlib decides: an integer literal beyond
# 64 bits (a run of 19 digits or more) comes back from orjson as a float, and a \uD800-\uDFFF
# escape needs the lone-surrogate check. Everything else orjson does not read exactly as the
# stdlib would (NaN/Infinity, 1e400, nesting past 1024, invalid UTF-8, a BOM) it refuses, and a
# refusal falls back too. tests/abe_redis/test_codec.py checks the equivalence with Hypothesis.
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_NUMBER = b"0" * 19  # translate + find is ~10x cheaper than a regex for a run of digits


def _loads(raw: bytes) -> Any:
    """``raw`` parsed as the stdlib decoder below would, through orjson when that is exact."""
    # bytes.find, not "in": "in" first tries the needle as an int and pays for the TypeError.
    if (
        _orjson is not None
        and raw.translate(_DIGITS_TO_ZERO).find(_LONG_NUMBER) < 0
        and (raw.find(b"\\") < 0 or _ESCAPED_SURROGATE.search(raw) is None)
    ):
        try:
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # the stdlib gives the reason (or, for NaN/Infinity/1e400, its own reading)
    return _DECODER.decode(raw.decode("utf-8"))


def _refuse_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity are not JSON; publish refuses them (allow_nan=False).
    raise PoisonMessageError(f"{PAYLOAD_FIELD!r} holds {name}, which is not valid JSON")


# One decoder for every message: json.loads with any keyword argument builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _short(exc: BaseException, limit: int = 120) -> str:
    # Error texts can quote the payload; keep them short so logs do not carry message bodies.
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "…"


def to_str(value: bytes | str) -> str:
    """A key, id or name from a reply as text (bytes that are not UTF-8 survive the round trip)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _explain(payload: dict[str, Any], *, fallback: str) -> InvalidPayloadError:
    found = _first_problem(payload, "payload", set())
    if found is None:
        return InvalidPayloadError("payload", fallback)
    return InvalidPayloadError(*found)


def _first_problem(value: object, path: str, seen: set[int]) -> tuple[str, str] | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path, "holds a lone surrogate, which UTF-8 cannot encode"
        return None
    if isinstance(value, int):
        try:
            str(value)
        except ValueError:
            return path, "integer has too many digits for JSON (sys.set_int_max_str_digits)"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"{value!r} is not valid JSON")
    if isinstance(value, dict | list):
        if id(value) in seen:
            return path, "circular reference"
        seen.add(id(value))
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    return f"{path}[{k!r}]", f"key is {type(k).__name__}; JSON object keys must be str"
                found = _first_problem(v, f"{path}[{k!r}]", seen)
                if found:
                    return found
        else:
            for i, v in enumerate(value):
                found = _first_problem(v, f"{path}[{i}]", seen)
                if found:
                    return found
        seen.discard(id(value))
        return None
    if isinstance(value, tuple):
        return path, "is a tuple; it would come back as a list — pass a list"
    return path, f"{type(value).__name__} is not JSON-serialisable"
