"""A consumer in its own process, for the "consumer killed with SIGKILL" scenario.

It reports on stdout, one line per event, flushed at once so that nothing is lost when it is
killed::

    ready
    got <n> <entry id> <delivery count>     # handed to the handler
    done <n> <entry id> <delivery count>    # the handler finished
    hold <n> <entry id>                     # the handler is stuck on this one (never acked)

After ``--hold-after`` handled messages it gets stuck in the handler of the next one, so the
parent can kill it while it holds an unacknowledged message.

Run as ``python -m chaos.consumer_process`` with the settings as JSON in the environment
variable ``CHAOS_CONSUMER_SETTINGS`` (not in argv, where a password in the URL would show in
``ps``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from abe_redis import RedisStreamsBackend


def _say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


async def consume(settings: dict[str, Any]) -> None:
    url = settings.pop("url")
    group = settings.pop("group")
    hold_after = int(settings.pop("hold_after"))
    settings["streams"] = tuple(settings["streams"])
    handled = 0
    async with RedisStreamsBackend.from_url(url, **settings) as backend:
        _say("ready")
        async for message in backend.consume(group=group):
            _say("got", message["n"], message.message_id, message.delivery_count)
            if handled >= hold_after:
                _say("hold", message["n"], message.message_id)
                await asyncio.sleep(3600)  # a stuck handler: the parent kills us here
            handled += 1
            _say("done", message["n"], message.message_id, message.delivery_count)


SETTINGS_ENV = "CHAOS_CONSUMER_SETTINGS"


def main() -> int:
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        print(f"python -m chaos.consumer_process: set {SETTINGS_ENV} to the JSON settings", file=sys.stderr)
        return 2
    asyncio.run(consume(json.loads(raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
