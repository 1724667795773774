"""The history checker on synthetic histories: each category, and what fails by default."""

from __future__ import annotations

import pytest

from abe_redis_testing.simulation import DeadLettered, Handling, History, check


def _history(**kwargs: object) -> History:
    history = History(groups={"g"})
    for name, value in kwargs.items():
        setattr(history, name, value)
    return history


def test_a_clean_history_passes_and_duplicates_are_counted_not_failed() -> None:
    history = _history(
        published={1: 0.0, 2: 0.1},
        handlings=[
            Handling(1, "a", 1.0, 1.1, "g", "1-0", 1),
            Handling(2, "a", 1.2, 1.3, "g", "2-0", 1),
            Handling(2, "b", 5.0, 5.1, "g", "2-0", 2),  # redelivered later: a duplicate
        ],
    )
    verdict = check(history, claim_idle_s=1.0, max_deliveries=3)
    assert verdict.ok
    assert verdict.counts["duplicated"] == 1


def test_lost_means_never_finished_and_a_restart_excuses_earlier_publishes() -> None:
    history = _history(
        publish_started={1: 0.0, 2: 2.0, 3: 2.1},
        published={1: 0.0, 2: 2.0, 3: 2.1},
        handlings=[Handling(3, "a", 3.0, 3.1, "g", "3-0", 1, "killed")],
        restarts=[1.0],
    )
    verdict = check(history)
    assert verdict.counts["lost_to_restart"] == 1  # message 1
    assert verdict.counts["lost"] == 2  # never handled (2), handler killed and never redone (3)
    assert verdict.failures == {"lost": 2}


def test_unexpected_and_recovered() -> None:
    history = _history(
        published={1: 0.0},
        failed={2: "ConnectionError"},
        handlings=[
            Handling(1, "a", 1, 1.1, "g"),
            Handling(2, "a", 1, 1.1, "g"),
            Handling(9, "a", 1, 1.1, "g"),
        ],
    )
    verdict = check(history)
    assert verdict.counts["recovered"] == 1
    assert verdict.counts["unexpected"] == 1
    assert not verdict.ok


def test_concurrent_handling_within_the_claim_timeout_fails_unless_excused() -> None:
    overlapping = [Handling(1, "a", 1.0, 1.5, "g", "1-0", 1), Handling(1, "b", 1.2, 1.4, "g", "1-0", 2)]
    assert (
        check(_history(published={1: 0.0}, handlings=overlapping), claim_idle_s=1.0).counts[
            "concurrently_handled"
        ]
        == 1
    )
    # The first handler ran past the claim timeout: a peer may take the message over.
    slow = [Handling(1, "a", 1.0, 3.0, "g", "1-0", 1), Handling(1, "b", 2.1, 2.2, "g", "1-0", 2)]
    assert check(_history(published={1: 0.0}, handlings=slow), claim_idle_s=1.0).ok
    # A partition during the first handling excuses it.
    excused = _history(published={1: 0.0}, handlings=overlapping, excused=[(1.1, 1.15)])
    assert check(excused, claim_idle_s=1.0).ok


def test_false_dead_letters_and_delivery_counts() -> None:
    history = _history(
        published={1: 0.0, 2: 0.0},
        handlings=[
            Handling(1, "a", 1.0, 1.1, "g", "1-0", 3, "failed"),
            Handling(2, "a", 1.0, 1.1, "g", "2-0", 2),
            Handling(2, "b", 2.0, 2.1, "g", "2-0", 1),
        ],
        dead_letters=[DeadLettered(1, "g", 4)],
    )
    verdict = check(history, max_deliveries=3)
    assert verdict.counts["falsely_dead_lettered"] == 1
    assert verdict.counts["count_backwards"] == 1
    assert verdict.counts["count_skipped"] == 2  # 3 at the first delivery of 1, 2 at the first of 2
    assert set(verdict.failures) == {"falsely_dead_lettered", "count_backwards"}


def test_a_dead_letter_short_of_max_deliveries_is_excused_only_by_skips_made_while_cut_off() -> None:
    # Read at 0.5 by a holder that was then cut off; the peer's claim counted 2 at the first
    # handler delivery, and the dead letter came after 2 handler deliveries of 3.
    handlings = [
        Handling(1, "b", 2.0, 2.1, "g", "1-0", 2, "failed"),
        Handling(1, "b", 2.2, 2.3, "g", "1-0", 3, "failed"),
    ]
    letters = [DeadLettered(1, "g", 4)]
    cut_off = check(
        _history(published={1: 0.0}, handlings=handlings, dead_letters=letters, excused=[(0.6, 1.8)]),
        max_deliveries=3,
    )
    assert cut_off.ok
    assert cut_off.counts["dead_lettered_after_cut_off"] == 1
    assert cut_off.counts["falsely_dead_lettered"] == 0
    # The same skip with no holder cut off (a live consumer that did not set the count back).
    live = check(_history(published={1: 0.0}, handlings=handlings, dead_letters=letters), max_deliveries=3)
    assert live.failures == {"falsely_dead_lettered": 1}
    # A cut-off window that ended before the skip's gap began excuses nothing.
    early = check(
        _history(published={1: 1.0}, handlings=handlings, dead_letters=letters, excused=[(0.1, 0.5)]),
        max_deliveries=3,
    )
    assert early.failures == {"falsely_dead_lettered": 1}
    # A cut-off after the last handler delivery excuses the dead letter's own extra count.
    tail = [
        Handling(1, "b", 2.0, 2.1, "g", "1-0", 1, "failed"),
        Handling(1, "b", 2.2, 2.3, "g", "1-0", 2, "failed"),
    ]
    late = check(
        _history(published={1: 0.0}, handlings=tail, dead_letters=letters, excused=[(3.0, 4.0)]),
        max_deliveries=3,
    )
    assert late.counts["dead_lettered_after_cut_off"] == 1 and late.ok


def test_failing_categories_are_configurable_and_checked() -> None:
    history = _history(
        published={1: 0.0}, handlings=[Handling(1, "a", 1, 2, "g"), Handling(1, "b", 3, 4, "g")]
    )
    assert check(history).ok
    assert check(history, failing={"duplicated"}).failures == {"duplicated": 1}
    with pytest.raises(ValueError, match="unknown anomaly categories"):
        check(history, failing={"dupes"})


def test_stranded_and_crashed_fail() -> None:
    history = _history(stranded=[("g", "5-0")], crashes=[(1.0, "c1", "ResponseError: boom")])
    assert check(history).failures == {"stranded": 1, "crashed": 1}
