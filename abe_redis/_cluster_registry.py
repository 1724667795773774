"""The stream registry of a Redis Cluster backend: one :class:`StreamRegistry` per partition,
behind the registry's interface (``abe-redis streams``, publishers, retention).

Each partition's registry, version counter, retired set and notification stream share the slot
of the partition's streams, so registering a stream after its ``XADD`` talks to the same master
as the ``XADD``, and a consumer's blocking read covers the notification stream of its partition.
Names may be given as user keys or as stored stream names (``K{tag}``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from ._partitions import Partitions
from ._registry import StreamRegistry


class ClusterRegistry(StreamRegistry):
    """Register, list and retire streams over every partition."""

    def __init__(self, client: Any, partitions: Partitions) -> None:
        super().__init__(client, partitions.partitions[0].config)
        self._partitions = partitions
        self.partitions = [StreamRegistry(client, p.config) for p in partitions.partitions]

    def _of(self, name: str) -> tuple[StreamRegistry, str]:
        stream = self._partitions.stream(name)
        return self.partitions[self._partitions.partition(stream).index], stream

    async def register(self, stream: str) -> None:
        registry, stream = self._of(stream)
        await registry.register(stream)

    async def retire(self, stream: str) -> bool:
        registry, stream = self._of(stream)
        return await registry.retire(stream)

    async def unretire(self, stream: str) -> bool:
        registry, stream = self._of(stream)
        return await registry.unretire(stream)

    async def retired(self) -> set[str]:
        found = await asyncio.gather(*(r.retired() for r in self.partitions))
        return set().union(*found)

    async def repair(self, streams: Iterable[str]) -> None:
        by_partition: dict[int, list[str]] = {}
        for name in streams:
            stream = self._partitions.stream(name)
            by_partition.setdefault(self._partitions.partition(stream).index, []).append(stream)
        for index, names in by_partition.items():
            await self.partitions[index].repair(names)

    async def version(self) -> bytes | None:
        """Changes whenever any partition's registry changes."""
        versions = await asyncio.gather(*(r.version() for r in self.partitions))
        return b",".join(v or b"" for v in versions)

    async def listed(self) -> tuple[set[str], set[str]]:
        """(readable, retired) stream names of every partition, as stored (``K{tag}``)."""
        listed: set[str] = set()
        retired: set[str] = set()
        for names, gone in await asyncio.gather(*(r.listed() for r in self.partitions)):
            listed |= names
            retired |= gone
        return listed, retired

    async def types(self, names: list[str]) -> dict[str, str]:
        return await self.partitions[0].types(names)

    def warn_not_a_stream(self, name: str, kind: str) -> None:
        self.partitions[0].warn_not_a_stream(name, kind)
