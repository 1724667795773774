"""Where keys live in a Redis Cluster: a fixed number of partitions, each pinned to one hash slot.

A multi-key command (one ``XREADGROUP`` over many streams, a ``MULTI`` over a stream and its
dead letters) is refused as ``CROSSSLOT`` unless all its keys share a slot. So in a cluster:

* there are ``REDIS_CLUSTER_PARTITIONS`` partitions; partition ``i`` has a hash tag whose slot lies
  in the ``i``-th of as many equal slices of the 16384 slots, so the partitions spread over the
  masters as evenly as the slots do;
* a stream published under the key ``K`` is stored as ``K{tag}``, where ``tag`` is the tag of
  partition ``crc32(K) mod P``: the user's name stays in front (an ACL pattern such as ``~app:*``
  still covers it), the tag pins the slot;
* each partition has its own registry, version counter, retired set, notification stream and
  consumer records under ``<REDIS_KEY_PREFIX>{tag}:``, in the same slot as its streams, so that
  the consume engine runs unchanged on each partition: every command it sends stays in one slot.

Changing the number of partitions moves keys to other partitions: streams written before the
change keep their old names, and consumers of the new layout do not read them.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

from ._config import RedisConfig
from ._errors import ConfigurationError, InvalidKeyError
from ._topology import CLUSTER_SLOTS, hash_tag_for_slots

TAG_PREFIX = "abe-"


@functools.cache
def partition_tags(count: int) -> tuple[str, ...]:
    """The hash tag of each of ``count`` partitions: partition ``i``'s slot lies in the ``i``-th
    of ``count`` equal slices of the slot space. Every process derives the same tags."""
    tags = []
    for index in range(count):
        low = index * CLUSTER_SLOTS // count
        high = (index + 1) * CLUSTER_SLOTS // count - 1
        tags.append(hash_tag_for_slots([(low, high)], prefix=TAG_PREFIX))
    return tuple(tags)


def partition_of(key: str, count: int) -> int:
    """The partition a user key belongs to: stable across processes and Python versions."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % count


@dataclass(frozen=True, slots=True)
class Partition:
    index: int
    tag: str
    config: RedisConfig
    """The backend's settings with this partition's keys: its prefix, registry, streams, its
    share of the sweep budget, and an even share of the prefetch bound (a consumer of every
    partition lends the whole bound between them instead, see :mod:`abe_redis._budget`)."""


class Partitions:
    """The cluster layout of one backend: stream names and per-partition settings."""

    def __init__(self, config: RedisConfig) -> None:
        self.count = config.cluster_partitions
        self.tags = partition_tags(self.count)
        self._index = {f"{{{tag}}}": i for i, tag in enumerate(self.tags)}
        self._config = config
        self.prefetch = config.effective_prefetch
        """One consumer's bound over all partitions together."""
        self.partitions = tuple(
            Partition(i, tag, _partition_config(config, i, tag, self)) for i, tag in enumerate(self.tags)
        )

    def stream(self, key: str) -> str:
        """The stream that stores messages published under ``key`` (a stream name given already
        in that form is returned as it is)."""
        if self.index_of(key) is not None:
            return key
        if "{" in key or "}" in key:
            raise InvalidKeyError(
                f"key {key!r}: in a Redis Cluster the backend adds its own hash tag to stream names, "
                "so a key may not contain '{' or '}'"
            )
        return f"{key}{{{self.tags[partition_of(key, self.count)]}}}"

    def index_of(self, stream: str) -> int | None:
        """The partition of a stream name of this layout (``K{tag}``), else ``None``."""
        if not stream.endswith("}"):
            return None
        opening = stream.rfind("{")
        if opening < 0:
            return None
        index = self._index.get(stream[opening:])
        if index is None or partition_of(stream[:opening], self.count) != index:
            return None
        if "{" in stream[:opening] or "}" in stream[:opening]:
            return None  # the key's own tag would win, and the slot would be another
        return index

    def key(self, stream: str) -> str:
        """The user key of a stream of this layout (the name itself for any other)."""
        index = self.index_of(stream)
        return stream if index is None else stream[: -len(self.tags[index]) - 2]

    def partition(self, stream: str) -> Partition:
        """The partition of a stream name, or of a user key."""
        index = self.index_of(stream)
        if index is None:
            index = self.index_of(self.stream(stream))
        assert index is not None
        return self.partitions[index]


def _share(total: int, count: int, index: int) -> int:
    return total // count + (1 if index < total % count else 0)


def _partition_config(config: RedisConfig, index: int, tag: str, layout: Partitions) -> RedisConfig:
    registry = str(config.registry_key)
    follows_prefix = registry == config.key_prefix + "streams"
    prefix = f"{config.key_prefix}{{{tag}}}:"
    try:
        streams = tuple(
            layout.stream(name)
            for name in config.streams
            if partition_of(layout.key(name), layout.count) == index
        )
    except InvalidKeyError as exc:
        raise ConfigurationError("REDIS_STREAMS (streams)", config.streams, str(exc)) from None
    prefetch = config.effective_prefetch
    return config.with_overrides(
        key_prefix=prefix,
        registry_key=prefix + "streams" if follows_prefix else f"{registry}{{{tag}}}",
        streams=streams,
        # SCAN's glob treats braces literally: this finds the partition's streams among the keys
        # matching the user's pattern.
        stream_pattern=f"{config.stream_pattern}{{{tag}}}" if config.stream_pattern else None,
        # A consumer reads every partition at once: each gets a share of the bounds, so that the
        # consumer as a whole sweeps `sweep_streams` streams per interval and, read without the
        # budget that lends the prefetch bound, holds at most `prefetch` entries.
        prefetch=max(1, _share(prefetch, layout.count, index)),
        sweep_streams=max(1, _share(config.sweep_streams, layout.count, index)),
    )
