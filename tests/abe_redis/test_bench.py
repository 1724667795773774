"""``abe-redis bench --quick``: every workload reports positive figures (never judged on speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abe_redis import cli
from abe_redis_testing.servers import RedisEndpoint

WORKLOADS = {
    "sequential publish": {"raw", "ours", "publisher"},
    "64 concurrent publishers": {"raw", "ours", "publisher"},
    "publish_many": {"raw", "publisher"},
    "consume + ack, 1 consumer": {"raw", "ours", "ours, batch 500"},
    "consume + ack, 4 consumers": {"raw", "ours", "ours, batch 500"},
    "end-to-end latency": {"raw", "ours"},
    "RSS over messages": {"raw", "ours"},
}


def test_quick_bench_reports_every_workload(
    redis_server: RedisEndpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, svg = tmp_path / "bench.json", tmp_path / "bench.svg"
    # The size sweep is left out here: it measures the same code paths with bigger payloads; the
    # cluster workload has a test of its own (test_bench_cluster.py).
    argv = ["bench", "--quick", "--url", redis_server.url, "--json", str(out), "--svg", str(svg)]
    assert cli.main([*argv, "--skip", "scaling", "--skip", "cluster"]) == 0

    data = json.loads(out.read_text())
    found: dict[str, set[str]] = {}
    for row in data["results"]:
        found.setdefault(row["workload"], set()).add(row["impl"])
        assert row["messages"] > 0 and row["seconds"] > 0 and row["msg_per_s"] > 0, row
    for workload, impls in WORKLOADS.items():
        assert impls <= found.get(workload, set()), (workload, found.get(workload))
    for workload in ("sequential publish", "64 concurrent publishers", "end-to-end latency"):
        for row in data["results"]:
            if row["workload"] == workload:
                assert 0 < row["p50_ms"] <= row["p99_ms"], row
    assert data["ratios"]["64 concurrent publishers"]["publisher"] > 0
    rss = [row for row in data["results"] if row["workload"] == "RSS over messages"]
    assert all(row["extra"]["rss_end"] > 0 and row["extra"]["rss_tenth"] > 0 for row in rss)
    assert set(data["targets"]) >= {"sequential publish", "end-to-end latency", "RSS over messages"}
    assert svg.read_text().startswith("<svg") and "64 concurrent publishers" in svg.read_text()
    assert "64 concurrent publishers" in capsys.readouterr().out
    # The bench cleans up after itself on a server it was given.
    assert not _bench_keys(redis_server.url)


def test_figures_can_be_rendered_again_from_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {
        "meta": {"redis_version": "7.0", "python": "Python 3.12", "started_at": "now"},
        "results": [
            {"workload": "sequential publish", "impl": "raw", "messages": 10, "seconds": 1.0,
             "p50_ms": 1.0, "p99_ms": 2.0, "extra": {}, "note": "", "msg_per_s": 10.0},
            {"workload": "sequential publish", "impl": "ours", "messages": 10, "seconds": 0.5,
             "p50_ms": 0.5, "p99_ms": 1.0, "extra": {}, "note": "", "msg_per_s": 20.0},
        ],
        "ratios": {"sequential publish": {"ours": 2.0}},
        "targets": {"sequential publish": {"target": "ours/raw >= 0.9", "ratio": 2.0, "met": True}},
    }  # fmt: skip
    source, svg = tmp_path / "old.json", tmp_path / "old.svg"
    source.write_text(json.dumps(data))
    assert cli.main(["bench", "--from-json", str(source), "--svg", str(svg)]) == 0
    printed = capsys.readouterr().out
    assert "2.00x" in printed and "sequential publish" in printed
    assert "20 msg/s" in svg.read_text()


def _bench_keys(url: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match="abe-redis-bench:*"))
    finally:
        client.close()


def test_the_best_round_counts_and_the_spread_is_kept() -> None:
    from abe_redis._bench import Result, best_rounds

    runs = [
        Result("publish", "raw", 100, 1.0),
        Result("publish", "ours", 100, 2.0),
        Result("publish", "raw", 100, 0.5),
        Result("publish", "ours", 100, 4.0),
        Result("end-to-end latency", "ours", 100, 1.0, p50_ms=0.4, p99_ms=3.0),
        Result("end-to-end latency", "ours", 100, 1.0, p50_ms=0.5, p99_ms=1.5),
    ]
    best = {(r.workload, r.impl): r for r in best_rounds(runs)}
    assert list(best) == [("publish", "raw"), ("publish", "ours"), ("end-to-end latency", "ours")]
    assert best["publish", "raw"].rate == 200 and best["publish", "ours"].rate == 50
    assert best["publish", "raw"].extra == {"rounds": 2, "rate_spread": 2.0}
    assert best["end-to-end latency", "ours"].p99_ms == 1.5
