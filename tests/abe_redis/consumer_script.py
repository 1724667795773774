"""A RedisConsumer in its own process, for the kill -9 and SIGTERM tests.

Settings come as JSON in ``ABE_REDIS_TEST_CONSUMER`` (url, group, handler_s). It prints one line
per event, flushed at once: ``ready``, ``start <n>``, ``sigterm``, ``end <n>``, ``stopped``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any

from abe_redis import RedisConsumer, RedisStreamsBackend


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


class _SaySigterm(logging.Handler):
    """Reports that the consumer handled a SIGTERM, so the test knows when to send the next."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("SIGTERM"):
            say("sigterm")


async def main(settings: dict[str, Any]) -> None:
    logging.getLogger("abe_redis").addHandler(_SaySigterm())
    handler_s = float(settings.pop("handler_s"))
    group = settings.pop("group")
    url = settings.pop("url")
    async with RedisStreamsBackend.from_url(url, **settings) as backend:
        consumer = RedisConsumer(backend, group=group, shutdown_grace_s=30)

        async def handler(message: dict[str, Any]) -> None:
            say("start", message["n"])
            await asyncio.sleep(handler_s)
            say("end", message["n"])

        say("ready")
        await consumer.run(handler)
        say("stopped")


if __name__ == "__main__":
    asyncio.run(main(json.loads(os.environ["ABE_REDIS_TEST_CONSUMER"])))
