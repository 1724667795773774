"""The invariant checker and the derived figures, on synthetic data."""

from __future__ import annotations

import pytest

from chaos import Delivery, Ledger, recovery, tally, throughput
from chaos._ledger import first_delivery_after, log_budget


def _ledger(published: dict[int, float], failed: dict[int, str], deliveries: list[Delivery]) -> Ledger:
    ledger = Ledger()
    for msg, t in published.items():
        ledger.publish_returned(msg, t)
    for msg, error in failed.items():
        ledger.publish_failed(msg, error)
    for d in deliveries:
        ledger.delivered(d)
    return ledger


def test_counts_lost_duplicates_and_failed_publishes() -> None:
    ledger = _ledger(
        published={1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4},
        failed={5: "ConnectionError", 6: "TimeoutError"},
        deliveries=[
            Delivery(0.5, "c1", 1, "1-0"),
            Delivery(0.6, "c2", 1, "1-0", 2),  # redelivered: same entry
            Delivery(0.7, "c1", 2, "2-0"),
            Delivery(0.8, "c2", 2, "2-1"),  # a second entry for the same message
            Delivery(0.9, "c1", 4, "4-0"),
            Delivery(1.0, "c1", 5, "5-0"),  # failed publish that reached Redis anyway
        ],
    )
    t = tally(ledger)
    assert t.published == 4
    assert t.failed_publishes == 2
    assert t.delivered == 4  # 1, 2, 4, 5
    assert t.deliveries == 6
    assert t.duplicates == 2
    assert t.duplicate_entries == 1
    assert t.lost == 1 and t.lost_ids == (3,)
    assert t.failed_but_delivered == 1
    assert t.unknown == 0
    assert ledger.outstanding == 1


def test_a_failed_publish_never_delivered_is_not_lost() -> None:
    t = tally(_ledger({1: 0.0}, {2: "ConnectionError"}, [Delivery(0.1, "c1", 1)]))
    assert (t.lost, t.failed_publishes, t.failed_but_delivered) == (0, 1, 0)


def test_delivery_of_an_unpublished_message_is_flagged() -> None:
    t = tally(_ledger({1: 0.0}, {}, [Delivery(0.1, "c1", 1), Delivery(0.2, "c1", 99)]))
    assert t.unknown == 1


def test_lost_ids_are_capped_but_counted() -> None:
    t = tally(_ledger({i: 0.0 for i in range(50)}, {}, []), max_lost_ids=5)
    assert t.lost == 50
    assert t.lost_ids == (0, 1, 2, 3, 4)


def test_outstanding_ignores_messages_delivered_before_their_publish_returned() -> None:
    # A consumer can see a message before the producer sees XADD's reply.
    ledger = Ledger()
    ledger.delivered(Delivery(0.1, "c1", 7))
    ledger.publish_returned(7, 0.2)
    assert ledger.outstanding == 0


def test_recovery_measures_resume_and_drain_from_the_fault_end() -> None:
    ledger = _ledger(
        published={1: 0.5, 2: 1.5, 3: 1.9, 4: 3.0},
        failed={},
        deliveries=[
            Delivery(0.6, "c1", 1),
            Delivery(2.4, "c1", 2),  # first delivery after the fault (ends at 2.0)
            Delivery(3.5, "c2", 3),  # the last message published before the fault end
            Delivery(3.1, "c2", 4),
        ],
    )
    rec = recovery(ledger, fault_end=2.0)
    assert rec.resume_s == pytest.approx(0.4)
    assert rec.drain_s == pytest.approx(1.5)


def test_recovery_drain_is_zero_when_the_backlog_was_delivered_during_the_fault() -> None:
    ledger = _ledger({1: 0.5}, {}, [Delivery(0.7, "c1", 1), Delivery(2.5, "c1", 1)])
    rec = recovery(ledger, fault_end=2.0)
    assert rec.drain_s == 0.0
    assert rec.resume_s == pytest.approx(0.5)


def test_recovery_is_none_when_nothing_came_back() -> None:
    ledger = _ledger({1: 0.5, 2: 1.0}, {}, [Delivery(0.7, "c1", 1)])
    rec = recovery(ledger, fault_end=2.0)
    assert rec.resume_s is None
    assert rec.drain_s is None


def test_throughput_bins_events_and_clamps_late_ones() -> None:
    assert throughput([0.0, 0.1, 0.3, 0.9, 5.0, -1.0], bin_s=0.25, duration=1.0) == [2, 1, 0, 2]


def test_log_budget_grows_with_consumers_and_outage_length() -> None:
    assert log_budget(2, 5.0) < log_budget(3, 5.0) < log_budget(3, 30.0)
    # A hot loop logs hundreds of records a second; the budget stays far below that.
    assert log_budget(3, 10.0) < 50


def test_first_delivery_after() -> None:
    deliveries = [Delivery(1.0, "c1", 3), Delivery(2.0, "c2", 3), Delivery(3.0, "c2", 4)]
    assert first_delivery_after(deliveries, 3, 1.5) == 2.0
    assert first_delivery_after(deliveries, 3, 2.5) is None


def test_the_tally_comes_from_the_shared_history_checker() -> None:
    ledger = _ledger(
        published={1: 0.1, 2: 0.2},
        failed={},
        deliveries=[
            Delivery(0.5, "c1", 1, "1-0", 2),
            Delivery(0.6, "c2", 1, "1-0", 1),  # the count went backwards
        ],
    )
    verdict = ledger.check()
    t = tally(ledger)
    assert (t.lost, t.lost_ids, t.duplicates) == (verdict.counts["lost"], (2,), verdict.counts["duplicated"])
    assert t.anomalies["count_backwards"] == 1
    assert t.anomalies["lost"] == 1
    assert set(verdict.failures) == {"lost", "count_backwards"}
