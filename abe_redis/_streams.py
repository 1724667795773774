"""Which streams a consumer reads: those the backend registered, an explicit list, a pattern.

Publishing adds the stream's name to a registry set, so consumers find every stream any
abe-redis publisher wrote to, including streams created after the consumer started, without
``KEYS``. Streams written by other programs are found through the explicit list or a ``SCAN``
pattern restricted to ``TYPE stream``. Dead-letter streams are never consumed.
"""

from __future__ import annotations

from redis.asyncio import Redis

from ._config import RedisConfig


def to_str(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


class StreamDiscovery:
    def __init__(self, client: Redis, config: RedisConfig) -> None:
        self._client = client
        self._config = config

    async def discover(self) -> list[str]:
        config = self._config
        names = set(config.streams)
        for member in await self._client.smembers(config.registry_key):
            names.add(to_str(member))
        if config.stream_pattern:
            async for found in self._client.scan_iter(
                match=config.stream_pattern, count=1000, _type="STREAM"
            ):
                names.add(to_str(found))
        return sorted(
            name for name in names if name != config.registry_key and not config.is_dead_letter_stream(name)
        )
