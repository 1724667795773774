"""Differential fuzzing of the Streams commands: the same commands to fakeredis and to a real
``redis-server``, replies compared.

The simulation trusts fakeredis to behave like Redis; this is how we know where it does. Every
divergence found is written down twice: in :data:`KNOWN_DIVERGENCES`, so the fuzzer can go on
looking past it, and as a strict-xfail test in ``test_fakeredis_differential.py`` naming the
fakeredis behaviour, which starts failing (XPASS) the day fakeredis is fixed.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

STREAMS = ("s1", "s2")
GROUPS = ("g1", "g2")
CONSUMERS = ("c1", "c2")
# Replies that carry the wall clock differ between any two servers; they are compared masked.
_TIME_FIELDS = {
    b"idle",
    b"inactive",
    b"seen-time",
    b"active-time",
    "idle",
    "inactive",
    "seen-time",
    "active-time",
}


def normalise(reply: Any) -> Any:
    """A reply with clock readings masked, as plain lists (RESP2)."""
    if isinstance(reply, dict):
        return normalise([part for pair in reply.items() for part in pair])
    if isinstance(reply, list | tuple):
        items = list(reply)
        out: list[Any] = []
        index = 0
        while index < len(items):
            item = items[index]
            if isinstance(item, bytes | str) and item in _TIME_FIELDS and index + 1 < len(items):
                out += [item, "<time>"]
                index += 2
                continue
            out.append(normalise(item))
            index += 1
        return out
    return reply


_INTERNAL = {b"radix-tree-nodes"}
"""Memory layout, not behaviour: no two implementations need agree."""


def as_maps(reply: Any) -> Any:
    """XINFO replies (flat field/value lists) as dicts, nested lists of them as lists of dicts."""
    if isinstance(reply, list) and reply and all(isinstance(item, list) for item in reply):
        return [as_maps(item) for item in reply]
    if isinstance(reply, list) and len(reply) % 2 == 0 and all(isinstance(k, bytes) for k in reply[::2]):
        return {k: v for k, v in zip(reply[::2], reply[1::2], strict=True) if k not in _INTERNAL}
    return reply


def raw(client: Any) -> Any:
    """The client, answering RESP2 replies as they come (no redis-py reply parsing)."""
    client.response_callbacks.clear()
    return client


def run(client: Any, command: tuple[Any, ...]) -> Any:
    try:
        reply = normalise(client.execute_command(*command))
        if command[0] == "XPENDING" and len(command) > 3 and isinstance(reply, list):
            # [id, consumer, idle ms, deliveries]: the idle time is a clock reading.
            reply = [[entry[0], entry[1], "<time>", entry[3]] for entry in reply]
        return ("ok", as_maps(reply) if command[0] == "XINFO" else reply)
    except redis.ResponseError as exc:
        return ("error", str(exc))


KnownDivergence = Callable[[tuple[Any, ...], Any, Any], Any]
"""(command, redis's reply, fakeredis' reply) -> truthy when this divergence explains them."""


def _xreadgroup_missing_key(command: tuple[Any, ...], real: Any, fake: Any) -> bool:
    return bool(
        command[0] == "XREADGROUP"
        and real[0] == fake[0] == "error"
        and real[1].startswith("NOGROUP")
        and fake[1].startswith("The XGROUP subcommand requires the key to exist")
    )


def _strip_to(shape: Any, reply: Any) -> Any:
    """``reply`` with the dict keys ``shape`` lacks removed (recursively through lists)."""
    if isinstance(shape, dict) and isinstance(reply, dict):
        return {k: reply[k] for k in shape if k in reply}
    if isinstance(shape, list) and isinstance(reply, list) and len(shape) == len(reply):
        return [_strip_to(a, b) for a, b in zip(shape, reply, strict=True)]
    return reply


def _xinfo_newer_fields(command: tuple[Any, ...], real: Any, fake: Any) -> bool:
    if command[0] != "XINFO" or real[0] != "ok" or fake[0] != "ok":
        return False
    stripped = _strip_to(real[1], fake[1])
    if stripped == fake[1]:
        return False  # no extra field: some other difference
    return stripped == real[1] or sorted(map(repr, stripped)) == sorted(map(repr, real[1]))


def _xpending_empty_consumers(command: tuple[Any, ...], real: Any, fake: Any) -> bool:
    return (
        command[0] == "XPENDING"
        and len(command) == 3
        and real == ("ok", [0, None, None, None])
        and fake == ("ok", [0, None, None, []])
    )


def _creates_consumers(command: tuple[Any, ...], real: Any, fake: Any) -> bool:
    # Redis 7.0 creates a consumer only when a read or claim gives it entries; fakeredis (like
    # Redis 7.2+) on every XREADGROUP and XCLAIM. Seen in XINFO GROUPS and XINFO CONSUMERS.
    if command[0] not in ("XINFO", "XGROUP") or real[0] != "ok" or fake[0] != "ok":
        return False
    if command[:2] == ("XINFO", "GROUPS"):
        # Lag may differ too (a divergence of its own): compare without it.
        real_groups = {g[b"name"]: {**g, b"lag": None} for g in real[1]}
        fake_groups = {g[b"name"]: {**g, b"lag": None} for g in fake[1]}
        if real_groups.keys() != fake_groups.keys():
            return False
        more: bool = False
        for name, group in real_groups.items():
            other = fake_groups[name]
            if {**group, b"consumers": other[b"consumers"]} != other or other[b"consumers"] < group[
                b"consumers"
            ]:
                return False
            more = more or bool(other[b"consumers"] > group[b"consumers"])
        return more
    if command[:2] == ("XGROUP", "CREATECONSUMER"):
        return bool(real == ("ok", 1) and fake == ("ok", 0))
    return bool(command[:2] == ("XINFO", "CONSUMERS") and len(fake[1]) > len(real[1]))


def _xinfo_unsorted(command: tuple[Any, ...], real: Any, fake: Any) -> bool:
    if (
        command[0] != "XINFO"
        or command[1] not in ("GROUPS", "CONSUMERS")
        or real[0] != "ok"
        or fake[0] != "ok"
    ):
        return False
    return real[1] != fake[1] and sorted(map(repr, real[1])) == sorted(map(repr, fake[1]))


def _xpending_count_type(command: tuple[Any, ...], real: Any, fake: Any) -> bool:
    if command[0] != "XPENDING" or len(command) != 3 or real[0] != "ok" or fake[0] != "ok":
        return False
    consumers = real[1][3]
    as_ints = [[name, int(count)] for name, count in consumers] if consumers else consumers
    return bool([*real[1][:3], as_ints] == fake[1])


def _lag_unknown(command: tuple[Any, ...], real: Any, fake: Any) -> bool:
    if (
        command[:2] != ("XINFO", "GROUPS")
        or real[0] != "ok"
        or fake[0] != "ok"
        or len(real[1]) != len(fake[1])
    ):
        return False
    by_name = {g[b"name"]: g for g in fake[1]}
    differs = False
    for group in real[1]:
        other = by_name.get(group[b"name"])
        if other is None or {**group, b"lag": other.get(b"lag")} != other:
            return False
        differs = differs or other.get(b"lag") != group[b"lag"]
    return differs


REPLY_ONLY = {
    "XINFO GROUPS computes lag differently once entries were deleted or trimmed (nil or another count)",
    "XINFO replies carry fields of newer Redis versions (STREAM: idmp-*, iids-*; CONSUMERS: "
    "inactive) whatever version is emulated",
    "XINFO GROUPS and XINFO CONSUMERS list in creation order, not sorted by name as Redis does",
    "XPENDING's summary counts per consumer are integers, where Redis sends bulk strings",
}
"""Divergences in a reply's shape only: the fuzzer goes on comparing after them."""

KNOWN_DIVERGENCES: dict[str, KnownDivergence] = {
    "XINFO GROUPS computes lag differently once entries were deleted or trimmed (nil or another count)": (
        _lag_unknown
    ),
    "XPENDING's summary counts per consumer are integers, where Redis sends bulk strings": (
        _xpending_count_type
    ),
    "XINFO GROUPS and XINFO CONSUMERS list in creation order, not sorted by name as Redis does": (
        _xinfo_unsorted
    ),
    "XREADGROUP reading nothing, and XCLAIM claiming nothing, create the consumer (Redis 7.0 does not)": (
        _creates_consumers
    ),
    "XPENDING's summary of an empty pending list has an empty consumer array, not nil": (
        _xpending_empty_consumers
    ),
    "XINFO replies carry fields of newer Redis versions (STREAM: idmp-*, iids-*; CONSUMERS: "
    "inactive) whatever version is emulated": _xinfo_newer_fields,
    "XREADGROUP on a missing stream answers XGROUP's 'requires the key to exist', not NOGROUP": (
        _xreadgroup_missing_key
    ),
}


class StreamsDifferential(RuleBasedStateMachine):
    """Bind ``real`` (a redis-py client on a real server, its keys under ``prefix``) first."""

    real: Any
    fake: Any
    prefix: str
    divergences: list[str]
    known: dict[str, KnownDivergence] = KNOWN_DIVERGENCES
    """The divergences of ``fake`` the fuzzer looks past (fakeredis' by default)."""
    reply_only: set[str] = REPLY_ONLY
    subject = "fakeredis"

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, list[str]] = {s: [] for s in STREAMS}
        self.next_ms = 1
        self.log: list[tuple[Any, ...]] = []
        self.diverged = False

    def key(self, stream: str) -> str:
        return f"{self.prefix}{stream}"

    def same(self, *command: Any) -> Any:
        self.log.append(command)
        real, fake = run(self.real, command), run(self.fake, command)
        if real != fake and not self.diverged:
            known = [name for name, match in self.known.items() if match(command, real, fake)]
            # Past a known divergence the two states may differ: stop comparing this example.
            self.diverged = bool(set(known) - self.reply_only)
            if not known:
                steps = "\n".join(f"  {' '.join(map(str, c))}" for c in self.log)
                raise AssertionError(
                    f"{self.subject} diverges from Redis on {' '.join(map(str, command))}:\n"
                    f"  redis:     {real!r}\n  {self.subject}: {fake!r}\nafter:\n{steps}"
                )
        return real

    @initialize()
    def clean(self) -> None:
        keys = [self.key(s) for s in STREAMS]
        self.real.delete(*keys)
        self.fake.flushall()

    def teardown(self) -> None:
        self.real.delete(*(self.key(s) for s in STREAMS))

    def known_id(self, data: st.DataObject, stream: str) -> str:
        ids = self.ids[stream]
        return data.draw(st.sampled_from(ids)) if ids else "1-0"

    @rule(stream=st.sampled_from(STREAMS), nomkstream=st.booleans(), maxlen=st.sampled_from([None, 2, 5]))
    def xadd(self, stream: str, nomkstream: bool, maxlen: int | None) -> None:
        entry_id = f"{self.next_ms}-0"
        self.next_ms += 1
        command: list[Any] = ["XADD", self.key(stream)]
        if nomkstream:
            command.append("NOMKSTREAM")
        if maxlen is not None:
            command += ["MAXLEN", maxlen]
        reply = self.same(*command, entry_id, "f", entry_id)
        if reply[0] == "ok" and reply[1] is not None:
            self.ids[stream].append(entry_id)

    @rule(
        stream=st.sampled_from(STREAMS),
        group=st.sampled_from(GROUPS),
        start=st.sampled_from(["0", "$"]),
        mkstream=st.booleans(),
    )
    def xgroup_create(self, stream: str, group: str, start: str, mkstream: bool) -> None:
        self.same("XGROUP", "CREATE", self.key(stream), group, start, *(["MKSTREAM"] if mkstream else []))

    @rule(stream=st.sampled_from(STREAMS), group=st.sampled_from(GROUPS))
    def xgroup_destroy(self, stream: str, group: str) -> None:
        self.same("XGROUP", "DESTROY", self.key(stream), group)

    @rule(stream=st.sampled_from(STREAMS), group=st.sampled_from(GROUPS), consumer=st.sampled_from(CONSUMERS))
    def xgroup_delconsumer(self, stream: str, group: str, consumer: str) -> None:
        self.same("XGROUP", "DELCONSUMER", self.key(stream), group, consumer)

    @rule(stream=st.sampled_from(STREAMS), group=st.sampled_from(GROUPS), consumer=st.sampled_from(CONSUMERS))
    def xgroup_createconsumer(self, stream: str, group: str, consumer: str) -> None:
        self.same("XGROUP", "CREATECONSUMER", self.key(stream), group, consumer)

    @rule(data=st.data(), stream=st.sampled_from(STREAMS), group=st.sampled_from(GROUPS))
    def xgroup_setid(self, data: st.DataObject, stream: str, group: str) -> None:
        self.same("XGROUP", "SETID", self.key(stream), group, data.draw(st.sampled_from(["0", "$"])))

    @rule(
        stream=st.sampled_from(STREAMS),
        group=st.sampled_from(GROUPS),
        consumer=st.sampled_from(CONSUMERS),
        start=st.sampled_from([">", "0"]),
        count=st.sampled_from([None, 1, 3]),
        noack=st.booleans(),
    )
    def xreadgroup(
        self, stream: str, group: str, consumer: str, start: str, count: int | None, noack: bool
    ) -> None:
        command: list[Any] = ["XREADGROUP", "GROUP", group, consumer]
        if count is not None:
            command += ["COUNT", count]
        if noack:
            command.append("NOACK")
        self.same(*command, "STREAMS", self.key(stream), start)

    @rule(data=st.data(), stream=st.sampled_from(STREAMS), group=st.sampled_from(GROUPS))
    def xack(self, data: st.DataObject, stream: str, group: str) -> None:
        self.same("XACK", self.key(stream), group, self.known_id(data, stream))

    @rule(
        data=st.data(),
        stream=st.sampled_from(STREAMS),
        group=st.sampled_from(GROUPS),
        consumer=st.sampled_from(CONSUMERS),
        justid=st.booleans(),
    )
    def xclaim(self, data: st.DataObject, stream: str, group: str, consumer: str, justid: bool) -> None:
        entry_id = self.known_id(data, stream)
        self.same("XCLAIM", self.key(stream), group, consumer, 0, entry_id, *(["JUSTID"] if justid else []))

    @rule(
        stream=st.sampled_from(STREAMS),
        group=st.sampled_from(GROUPS),
        consumer=st.sampled_from(CONSUMERS),
        count=st.sampled_from([1, 2, 100]),
        justid=st.booleans(),
    )
    def xautoclaim(self, stream: str, group: str, consumer: str, count: int, justid: bool) -> None:
        extra = ["JUSTID"] if justid else []
        self.same("XAUTOCLAIM", self.key(stream), group, consumer, 0, "0-0", "COUNT", count, *extra)

    @rule(
        stream=st.sampled_from(STREAMS),
        group=st.sampled_from(GROUPS),
        consumer=st.sampled_from([None, *CONSUMERS]),
    )
    def xpending(self, stream: str, group: str, consumer: str | None) -> None:
        self.same("XPENDING", self.key(stream), group)
        self.same("XPENDING", self.key(stream), group, "-", "+", 10, *([consumer] if consumer else []))

    @rule(stream=st.sampled_from(STREAMS), maxlen=st.sampled_from([0, 1, 3]))
    def xtrim(self, stream: str, maxlen: int) -> None:
        self.same("XTRIM", self.key(stream), "MAXLEN", maxlen)

    @rule(data=st.data(), stream=st.sampled_from(STREAMS))
    def xdel(self, data: st.DataObject, stream: str) -> None:
        self.same("XDEL", self.key(stream), self.known_id(data, stream))

    @rule(stream=st.sampled_from(STREAMS), group=st.sampled_from(GROUPS))
    def xinfo(self, stream: str, group: str) -> None:
        self.same("XINFO", "GROUPS", self.key(stream))
        self.same("XINFO", "CONSUMERS", self.key(stream), group)
        self.same("XINFO", "STREAM", self.key(stream))

    @rule(stream=st.sampled_from(STREAMS))
    def xrange(self, stream: str) -> None:
        self.same("XRANGE", self.key(stream), "-", "+")
        self.same("XLEN", self.key(stream))


EXAMPLES = int(os.environ.get("ABE_REDIS_DIFFERENTIAL_EXAMPLES", "25"))
"""Examples per differential run; the nightly job raises it."""


def run_differential(name: str, real: Any, tested: Any, **attrs: Any) -> None:
    """Run :class:`StreamsDifferential` with ``tested`` (fakeredis or the model) as its fake."""
    machine = type(
        name,
        (StreamsDifferential,),
        {"real": real, "fake": tested, "prefix": f"abe-diff.{uuid.uuid4().hex[:8]}.", **attrs},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@contextlib.contextmanager
def fresh_key(real: Any) -> Iterator[str]:
    """A key no other test uses (and its ``.z``/``.set``/``.str`` siblings), deleted from the
    real server afterwards."""
    key = f"abe-diff.{uuid.uuid4().hex[:8]}.s"
    try:
        yield key
    finally:
        real.delete(key, f"{key}.z", f"{key}.set", f"{key}.str")
