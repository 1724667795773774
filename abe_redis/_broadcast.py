"""Broadcast: every consumer instance receives every message published after it started.

Read with ``XREAD`` (no group, nothing acknowledged, nothing left behind), positioned by the
server's clock, on a connection of the consumer's own. The notification stream is read in the
same wait, so a brand-new stream is picked up at once. Entries that are not valid payloads are
logged and skipped: without a group there is no one place to dead-letter them to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ._codec import decode_fields
from ._config import RedisConfig
from ._connection import TRANSIENT_ERRORS, close_client, dedicated_client, is_missing_group, setup_error
from ._delivery import Throttle, wait_out
from ._errors import PoisonMessageError
from ._message import ReceivedMessage
from ._reads import stream_entries
from ._registry import StreamRegistry, StreamSet

log = logging.getLogger("abe_redis")


class BroadcastReader:
    def __init__(self, client: Redis, config: RedisConfig, *, registry: StreamRegistry) -> None:
        self._client: Any = client
        self._config = config
        self._registry = registry
        self._streams = StreamSet(registry, config)
        self._throttle = Throttle()

    async def messages(self) -> AsyncGenerator[ReceivedMessage]:
        reader: Any = dedicated_client(self._client)
        try:
            async for message in self._loop(reader):
                yield message
        finally:
            await close_client(reader)

    async def _loop(self, reader: Any) -> AsyncGenerator[ReceivedMessage]:
        seconds, micros = await self._client.time()
        # Everything from the start millisecond on; the server's clock, not ours.
        start = f"{int(seconds) * 1000 + int(micros) // 1000 - 1}-18446744073709551615"
        notifications = self._registry.notifications_key
        last: dict[str, str] = {notifications: start}
        failures = 0
        while True:
            try:
                if self._streams.due(time.monotonic()):
                    await self._streams.refresh()
                    for stream in self._streams.streams:
                        last.setdefault(stream, start)
                response = await reader.xread(
                    dict(last), count=self._config.batch_size, block=self._config.block_ms
                )
                failures = 0
            except TRANSIENT_ERRORS as exc:
                failures += 1
                await wait_out(exc, failures, self._throttle)
                continue
            except ResponseError as exc:
                fatal = setup_error(exc)
                if fatal is not None:
                    raise fatal from None
                if not is_missing_group(exc):
                    raise
                await asyncio.sleep(min(self._config.block_ms, 100) / 1000)
                continue
            for stream, entry_id, fields in stream_entries(response):
                last[stream] = entry_id
                if stream == notifications:
                    self._streams.force()
                    continue
                try:
                    payload = decode_fields(fields)
                except PoisonMessageError as exc:
                    self._throttle.warn("skipping poison entry %s %s: %s", stream, entry_id, exc)
                    continue
                yield ReceivedMessage(payload, stream=stream, message_id=entry_id, group=None)
