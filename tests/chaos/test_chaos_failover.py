"""The failover scenarios: the loss they document without WAIT, none with it, and the policy that
judges a run by that allowance."""

from __future__ import annotations

from chaos import (
    SCENARIOS,
    Context,
    Environment,
    Profile,
    Workload,
    run_scenario,
    scenarios_of,
)
from chaos._failover import LAG_S, loss_bound
from chaos._ledger import Delivery
from chaos._profiles import SETTINGS

# ~2 s of traffic around the failover, at a rate that makes the stall's loss clearly visible.
SMALL = Profile("test", rate=80, pre_s=0.8, fault_s=1.0, post_s=0.8, consumers=2)


def test_the_bound_covers_what_the_stall_lets_the_producer_acknowledge() -> None:
    assert loss_bound(100) >= 100 * LAG_S + 5
    assert loss_bound(100, lag_s=0) == 5
    assert loss_bound(150) > loss_bound(100)


def test_the_quick_profile_leaves_one_cluster_failover_to_the_nightly_run() -> None:
    quick, long = scenarios_of("quick"), scenarios_of("long")
    assert {"sentinel-failover", "sentinel-failover-wait", "cluster-failover-wait"} <= set(quick)
    assert "cluster-failover" not in quick
    assert set(long) == set(SCENARIOS)


def _judged(lost: int, gone: int | None, allowed: int) -> list[str]:
    """Problems of a run where ``lost`` of 10 returned publishes were never delivered, and
    ``gone`` of them were not in the stream afterwards."""
    w = Workload("policy", "none", "redis://unused", SMALL, SETTINGS, recovery_bound_s=1.0, outage=False)
    w.result.lost_allowed = allowed
    for msg in range(1, 11):
        w.ledger.publish_returned(msg, 0.1)
    for msg in range(1, 11 - lost):
        w.ledger.delivered(Delivery(0.2, "c1", msg))
    w.result.gone = gone
    w._finish()
    return w.result.problems


def test_a_loss_within_the_allowance_passes_and_one_beyond_it_fails() -> None:
    assert _judged(lost=3, gone=3, allowed=3) == []
    assert any("not delivered" in p and "at most 3" in p for p in _judged(lost=4, gone=3, allowed=3))
    assert any("not in the stream" in p for p in _judged(lost=0, gone=4, allowed=3))
    # Without an allowance (every other scenario, and every WAIT run) one lost message fails.
    assert any("not delivered" in p for p in _judged(lost=1, gone=None, allowed=0))
    assert any("not in the stream" in p for p in _judged(lost=0, gone=1, allowed=0))


async def test_sentinel_failover_loses_the_stall_without_wait_and_nothing_with_it(
    env: Environment,
) -> None:
    ctx = Context(env, SMALL, SETTINGS)
    plain = await run_scenario(SCENARIOS["sentinel-failover"], ctx)
    waited = await run_scenario(SCENARIOS["sentinel-failover-wait"], ctx)
    assert plain.verdict == "pass", plain.problems
    assert waited.verdict == "pass", waited.problems
    # Without WAIT the publishes acknowledged during the stall died with the master: the run
    # shows a real loss (so the WAIT run's 0 means something), within the documented bound.
    assert plain.gone is not None and 0 < plain.gone <= loss_bound(SMALL.rate)
    assert plain.lost_allowed == loss_bound(SMALL.rate)
    assert waited.gone == 0 and waited.lost_allowed == 0
    assert waited.tally is not None and waited.tally.lost == 0
    for result in (plain, waited):
        assert result.tally is not None and result.tally.published > 50
        # Traffic went on after the failover: something was published and delivered after it.
        assert result.recovery is not None and result.recovery.resume_s is not None
        assert result.fault_end_s is not None
        assert sum(result.published_per_bin[int(result.fault_end_s / result.bin_s) + 1 :]) > 0
