from __future__ import annotations

from typing import Any

from abe_redis import DeadLetters
from abe_redis_testing import RedisBackendFactory

from .helpers import take


async def test_list_replay_and_purge(queue_backend_factory: RedisBackendFactory) -> None:
    backend = queue_backend_factory()
    client: Any = queue_backend_factory.client()
    # Another program writes an entry our codec refuses, then fixes its mind.
    await client.xadd("ledger", {"payload": b"{broken", "trace": b"\xff\x00"})
    await backend.publish("ledger", {"n": 1})
    stream = backend.consume(group="g")
    try:
        assert await take(stream, 1) == [{"n": 1}]
        dead = DeadLetters(backend)
        assert await dead.keys() == ["ledger"]
        [letter] = await dead.entries("ledger")
        assert letter.source_stream == "ledger"
        assert letter.group == "g"
        assert "not valid JSON" in letter.reason
        assert letter.fields == {b"payload": b"{broken", b"trace": b"\xff\x00"}

        # Replay after "fixing" it by hand: the repaired entry reaches the consumer again.
        await client.xadd(
            "ledger:dead-letter", {"reason": "manual", "source_stream": "ledger", "field:payload": '{"n": 2}'}
        )
        assert await dead.count("ledger") == 2
        fixed = [x for x in await dead.entries("ledger") if x.reason == "manual"]
        assert await dead.replay("ledger", ids=[fixed[0].id]) == 1
        assert await take(stream, 1) == [{"n": 2}]
        assert await dead.count("ledger") == 1
        assert await dead.purge("ledger") == 1
        assert await dead.count("ledger") == 0
    finally:
        await stream.aclose()
