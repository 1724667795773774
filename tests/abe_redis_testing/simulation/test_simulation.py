"""The simulator: determinism, virtual time, fault injection, and the planted bugs it must find."""

from __future__ import annotations

import asyncio
import time

import pytest

from abe_redis_testing.simulation import FAULT_KINDS, SimulationFailure, parse_faults, replay_seed, run_seed

from .planted import PLANTED, PlantedBug, seeds_to_first_failure


def test_the_same_seed_gives_the_same_trace_byte_for_byte() -> None:
    first = [run_seed(seed, keep_trace=True) for seed in (3, 4)]
    again = [run_seed(seed, keep_trace=True) for seed in (4, 3)][::-1]
    assert [r.trace for r in first] == [r.trace for r in again]
    assert [r.trace_hash for r in first] == [r.trace_hash for r in again]
    assert first[0].trace_hash != first[1].trace_hash


def test_virtual_time_costs_no_real_time_and_leaves_the_clocks_alone() -> None:
    before = time.time()
    result = run_seed(1, workload="fast", faults=("partition",))
    assert result.virtual_seconds > 2.0
    assert result.wall_seconds < result.virtual_seconds
    assert abs(time.time() - before) < 60  # the real clock is back
    assert time.monotonic() > 0


def test_faults_are_injected_as_the_seed_says() -> None:
    result = run_seed(0, workload="fast", faults=("lost-reply", "reset"))
    assert set(result.plan.kinds) <= {"lost-reply", "reset"}
    injected = {k for k, v in result.stats.items() if k.startswith("net_") and v}
    assert injected, result.stats
    quiet = run_seed(0, workload="fast", faults=())
    assert not any(k.startswith("net_") for k in quiet.stats)
    assert quiet.stats["published"] == 200


def test_parse_faults() -> None:
    assert parse_faults("all") == FAULT_KINDS
    assert parse_faults("none") == ()
    assert parse_faults("kill, restart") == ("kill", "restart")
    with pytest.raises(ValueError, match="unknown fault kinds"):
        parse_faults("kill,meteor")


@pytest.mark.parametrize("bug", PLANTED, ids=lambda bug: bug.name.replace(" ", "-"))
def test_the_simulator_finds_each_planted_bug(bug: PlantedBug) -> None:
    found = seeds_to_first_failure(bug, max_seeds=200, budget_s=60.0)
    assert found.seed is not None, f"{bug.name}: not found in {found.seeds_run} seeds ({found.seconds:.1f}s)"


def test_replay_seed_raises_with_the_anomalies_and_the_command() -> None:
    bug = next(b for b in PLANTED if b.target == "lost" and b.faults == ("restart",))
    found = seeds_to_first_failure(bug, max_seeds=20)
    assert found.seed is not None
    with bug.patch(), pytest.raises(SimulationFailure) as failure:
        replay_seed(found.seed, workload=bug.workload, faults=bug.faults)
    text = str(failure.value)
    assert "lost" in text
    assert f"abe-redis simulate --seed {found.seed} --workload fast --faults restart" in text


def test_a_busy_loop_is_reported_not_hung() -> None:
    from abe_redis import RedisStreamsBackend

    class Spinning(RedisStreamsBackend):
        async def publish(self, key: str, payload: dict[str, object]) -> None:
            if payload.get("n") == 3:
                # A busy loop (the thing under test): it never lets virtual time pass.
                while True:  # noqa: ASYNC110
                    await asyncio.sleep(0)
            await super().publish(key, payload)

    result = run_seed(0, workload="fast", faults=(), backend_factory=Spinning.from_url)
    assert result.verdict.counts["crashed"] >= 1
    assert any("SimulationStuck" in e for e in result.verdict.examples["crashed"])


def test_a_run_that_never_ends_is_reported_not_hung(monkeypatch: pytest.MonkeyPatch) -> None:
    from abe_redis import RedisStreamsBackend
    from abe_redis_testing.simulation import _loop

    class Retrying(RedisStreamsBackend):
        async def publish(self, key: str, payload: dict[str, object]) -> None:
            if payload.get("n") == 3:
                # A retry that never gives up (the thing under test): virtual time keeps passing.
                while True:  # noqa: ASYNC110
                    await asyncio.sleep(1.0)
            await super().publish(key, payload)

    monkeypatch.setattr(_loop, "TIME_LIMIT_S", 30.0)
    result = run_seed(0, workload="fast", faults=(), backend_factory=Retrying.from_url)
    assert result.virtual_seconds <= 30.0
    assert any("virtual time would pass 30s" in e for e in result.verdict.examples["crashed"])
