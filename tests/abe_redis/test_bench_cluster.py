"""``abe-redis bench``'s cluster workload, on the session's cluster: figures for raw and ours,
streams on every master, and nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from abe_redis import cli
from abe_redis_testing.servers import RedisClusterHandle, RedisEndpoint

OTHERS = ("publish", "consume", "latency", "RSS", "scaling")


def test_the_cluster_workload_spreads_streams_over_every_master(
    redis_server: RedisEndpoint, redis_cluster: RedisClusterHandle, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    skips = [arg for word in OTHERS for arg in ("--skip", word)]
    argv = ["bench", "--quick", "--url", redis_server.url, "--cluster-url", redis_cluster.url]
    assert cli.main([*argv, *skips, "--json", str(out)]) == 0

    rows = json.loads(out.read_text())["results"]
    by = {(row["workload"], row["impl"]): row for row in rows}
    publish = "cluster: 64 concurrent publishers, 12 streams"
    consume = "cluster: consume + ack, 12 streams"
    assert {(publish, "raw"), (publish, "ours"), (consume, "raw"), (consume, "ours")} <= set(by)
    assert "not measured" not in by[consume, "raw"]["note"], "ours failed to consume from the cluster"
    for row in rows:
        assert row["workload"].startswith("cluster: ")
        assert row["messages"] > 0 and row["msg_per_s"] > 0, row
        # 12 streams over 3 masters: not all on one (the names are random, so which master
        # gets how many varies; all twelve on one happens once in ~170,000 runs).
        assert row["extra"]["masters"] == 3 and row["extra"]["streams_max"] < 12, row
    for node in redis_cluster.masters:
        client = redis.Redis(host=node.host, port=node.port)
        try:
            assert not list(client.scan_iter(match="abe-redis-bench:*")), node.port
        finally:
            client.close()
