"""What a backend claims to do; every claim it does not make turns the matching tests into skips."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

# One sentence per flag: it is the skip reason, so an author reading a report learns what to declare.
CAPABILITY_DESCRIPTIONS: dict[str, str] = {
    "supports_groups": (
        "consumers sharing a group split the messages: each is delivered to exactly one of them"
    ),
    "fans_out_to_groups": "consumers in different groups each receive every message",
    "durable_across_instances": (
        "a message published through one backend instance is consumed through another instance "
        "connected to the same broker"
    ),
    "ordered_per_key": "a single consumer receives the messages of one key in publish order",
    "redelivers_unacknowledged": (
        "a message whose consumer was cancelled or closed before asking for the next one is "
        "delivered again (at-least-once)"
    ),
    "rejects_invalid_payloads": (
        "publish() raises TypeError/ValueError for non-dict or non-JSON payloads and delivers nothing"
    ),
    "rejects_invalid_keys": "publish() raises TypeError/ValueError for an empty or non-str key",
    "supports_from_env": "from_env() builds a working instance from the environment",
}


@dataclass(frozen=True)
class Capabilities:
    """The behaviours a backend claims beyond the bare protocol.

    Defaults are the protocol's minimum: only ``from_env`` (the protocol requires it). Declare
    more to have more of the contract checked; an undeclared capability is a skip, never a pass.

    ``redelivery_timeout`` is how long (seconds) the backend may take before an unacknowledged
    message becomes deliverable to another consumer (e.g. a claim idle time); the redelivery
    tests add it to the suite timeout.
    """

    supports_groups: bool = False
    fans_out_to_groups: bool = False
    durable_across_instances: bool = False
    ordered_per_key: bool = False
    redelivers_unacknowledged: bool = False
    rejects_invalid_payloads: bool = False
    rejects_invalid_keys: bool = False
    supports_from_env: bool = True
    redelivery_timeout: float = 0.0

    @classmethod
    def all(cls, *, redelivery_timeout: float = 0.0, **overrides: bool) -> Capabilities:
        """Every capability claimed, minus the ones switched off in ``overrides``."""
        flags = dict.fromkeys(CAPABILITY_DESCRIPTIONS, True)
        unknown = set(overrides) - set(flags)
        if unknown:
            raise TypeError(f"unknown capabilities: {sorted(unknown)}")
        flags.update(overrides)
        return cls(redelivery_timeout=redelivery_timeout, **flags)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Capabilities:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TypeError(f"unknown capabilities: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def coerce(cls, value: Capabilities | Mapping[str, Any] | None) -> Capabilities:
        if value is None:
            return cls()
        if isinstance(value, Capabilities):
            return value
        if isinstance(value, Mapping):
            return cls.from_mapping(value)
        raise TypeError(f"capabilities must be a Capabilities or a mapping, got {type(value).__name__}")

    @classmethod
    def parse(cls, text: str) -> Capabilities:
        """Capabilities from a command-line list, for a backend class you cannot annotate.

        Comma-separated items, applied left to right on the protocol minimum: ``all`` claims every
        capability, ``NAME`` claims one, ``-NAME`` withdraws one, ``redelivery_timeout=SECONDS``
        sets the redelivery allowance. Example: ``all,-ordered_per_key,redelivery_timeout=2``.
        """
        values: dict[str, Any] = cls().to_dict()
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            if sep:
                if name.strip() != "redelivery_timeout":
                    raise ValueError(f"only redelivery_timeout takes a value, got {item!r}")
                try:
                    values["redelivery_timeout"] = float(value)
                except ValueError:
                    raise ValueError(
                        f"redelivery_timeout must be a number of seconds, got {value!r}"
                    ) from None
                if not values["redelivery_timeout"] >= 0:
                    raise ValueError(f"redelivery_timeout must be >= 0, got {value!r}")
            elif item == "all":
                values.update(dict.fromkeys(CAPABILITY_DESCRIPTIONS, True))
            else:
                flag = item.removeprefix("-")
                if flag not in CAPABILITY_DESCRIPTIONS:
                    raise ValueError(
                        f"unknown capability {flag!r}; known: all, {', '.join(CAPABILITY_DESCRIPTIONS)}"
                    )
                values[flag] = not item.startswith("-")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def has(self, name: str) -> bool:
        if name not in CAPABILITY_DESCRIPTIONS:
            raise KeyError(f"unknown capability {name!r}")
        return bool(getattr(self, name))

    def require(self, *names: str) -> None:
        """Skip the running test unless every named capability is declared."""
        for name in names:
            if not self.has(name):
                # Reported at the test, not at this line, so a skip list points where it matters.
                raise pytest.skip.Exception(
                    f"capability `{name}` not declared ({CAPABILITY_DESCRIPTIONS[name]})",
                    _use_item_location=True,
                )
