"""Reads stay within one prefetch bound per consumer, however many streams it reads."""

from __future__ import annotations

from typing import Any

import pytest

from abe_redis._reads import ReadPlan, ReadPlanner
from abe_redis_testing import RedisBackendFactory

from .helpers import take


@pytest.mark.abe_redis_targets("redis", "valkey")
async def test_one_consumer_of_a_thousand_backlogged_streams_holds_at_most_its_prefetch(
    queue_backend_factory: RedisBackendFactory,
) -> None:
    """1,000 streams x 20 entries, batch_size=100: a read per stream would put 20,000 entries in
    one consumer's hands. The bound is one total across all streams."""
    backend = queue_backend_factory(batch_size=100)
    client: Any = queue_backend_factory.client()
    streams = [f"backlog-{i}" for i in range(1000)]
    async with client.pipeline(transaction=False) as pipe:
        for stream in streams:
            for n in range(20):
                pipe.xadd(stream, {"payload": b'{"n": %d}' % n})
            pipe.sadd(backend.config.registry_key, stream)
        await pipe.execute()
    consumer = backend.consume(group="g")
    most_held = 0
    try:
        for _ in range(5):
            await take(consumer, 50)
            pending = await client.xpending_range(
                streams[0], "g", "-", "+", 1
            )  # touch one stream: the group exists everywhere by now
            del pending
            summary = 0
            async with client.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.xpending(stream, "g")
                for reply in await pipe.execute():
                    summary += int(reply["pending"])
            most_held = max(most_held, summary)
    finally:
        await consumer.aclose()
    print(f"1,000 streams x 20 backlog, batch_size=100: at most {most_held} entries held")
    assert 0 < most_held <= 100  # the target allows 10 x batch_size; we hold one batch


def test_planner_keeps_every_read_within_the_room() -> None:
    planner = ReadPlanner()
    streams = [f"s{i}" for i in range(250)]
    planner.track(streams)
    plans: list[ReadPlan] = []
    for _ in range(3):  # 250 new streams: three windows of at most 100
        plan = planner.plan(streams, 100)
        plans.append(plan)
        assert len(plan.streams) * plan.count <= 100
        assert not plan.block  # new streams may hold a backlog: look without waiting first
        planner.observe(plan, [])  # all drained
    final = planner.plan(streams, 100)
    assert final.block and final.count == 1 and len(final.streams) == 250
    few = planner.plan(streams[:4], 100)
    assert few.block and few.count == 25
