"""One registry for the plugin's options: each is a ``--abe-redis-<name>`` flag and an
``abe_redis_<name>`` ini key, resolved flag > ini > default.

Fixture modules call :func:`add_option` from their own ``pytest_addoption`` so that an option
lives next to the fixture that reads it, while the naming and precedence stay in one place.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest

GROUP_NAME = "abe-redis"
GROUP_DESCRIPTION = "abe-redis: Redis servers, fakes, contract suite and chaos"

OptionKind = Literal["string", "bool", "int", "float"]

_DEFAULTS: dict[str, tuple[OptionKind, Any]] = {}


def flag_name(name: str) -> str:
    return "--abe-redis-" + name.replace("_", "-")


def ini_name(name: str) -> str:
    return "abe_redis_" + name.replace("-", "_")


def add_option(
    parser: pytest.Parser,
    name: str,
    help: str,
    *,
    kind: OptionKind = "string",
    default: Any = None,
) -> None:
    """Register ``--abe-redis-<name>`` and ``abe_redis_<name>`` with the same help text."""
    group = parser.getgroup(GROUP_NAME, GROUP_DESCRIPTION)
    dest = ini_name(name)
    _DEFAULTS[dest] = (kind, default)
    if kind == "bool":
        group.addoption(flag_name(name), action="store_true", dest=dest, default=None, help=help)
        parser.addini(dest, help=help, type="bool", default=default)
    else:
        group.addoption(flag_name(name), action="store", dest=dest, default=None, help=help)
        parser.addini(dest, help=help, type="string", default="" if default is None else str(default))


def get_option(config: pytest.Config, name: str) -> Any:
    """The option's value: the command-line flag if given, else the ini key, else the default."""
    dest = ini_name(name)
    kind, default = _DEFAULTS.get(dest, ("string", None))
    value = config.getoption(dest, default=None)
    if value is None:
        value = config.getini(dest)
        if value == "" or value is None:
            return default
    return _convert(name, kind, value)


def check_all(config: pytest.Config) -> None:
    """Convert every registered option once, at start-up: a malformed number is then one usage
    message that stops the run, not an error in each test whose fixture reads it."""
    for dest in _DEFAULTS:
        try:
            config.getini(dest)
        except ValueError:
            # _DEFAULTS is per process: an option of a plugin module this session did not load
            # (an in-process pytester run) is not this config's.
            continue
        get_option(config, dest.removeprefix("abe_redis_"))


def _convert(name: str, kind: OptionKind, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in {"1", "true", "yes", "on"}
    if kind == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            message = f"{flag_name(name)} / {ini_name(name)} must be an integer, got {value!r}"
            raise pytest.UsageError(message) from None
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            message = f"{flag_name(name)} / {ini_name(name)} must be a number, got {value!r}"
            raise pytest.UsageError(message) from None
    return str(value)
