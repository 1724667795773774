"""Turns in the prefetch budget of a cluster consumer: when every partition has a backlog, a few
read large batches in turn instead of all reading a sliver each (see ``abe_redis._budget``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from abe_redis._budget import PrefetchBudget


def _fill(budget: PrefetchBudget, reader: int, entries: int) -> None:
    for _ in range(entries):
        budget.delivered(reader)


def _turn(budget: PrefetchBudget, reader: int) -> int:
    """One turn of ``reader``, filled: its grant."""
    budget.release(reader, 0)
    assert budget.ready(reader, 0)
    granted = budget.reserve(reader, 0)
    assert budget.limit(reader, 0) == granted, "limit() returns the reserved grant"
    _fill(budget, reader, granted)
    return granted


def _all_filling(budget: PrefetchBudget, readers: int) -> None:
    """Every reader read a backlog (filled two turns) and drained it."""
    for _ in range(2):
        for reader in range(readers):
            _turn(budget, reader)
    for reader in range(readers):
        budget.release(reader, 0)
    assert all(budget.filling(r) for r in range(readers))


def test_with_every_reader_filling_a_turn_reads_a_share_not_a_sliver() -> None:
    budget = PrefetchBudget(100, 16)
    _all_filling(budget, 16)
    grants = [_turn(budget, 0) for _ in range(5)]
    assert grants == [4, 8, 16, 25, 25], "doubling up to a quarter, not the equal split of 100 / 16"
    assert budget.granted == 25 + 15


def test_a_reader_waits_while_its_share_is_lent_and_reads_when_it_comes_back() -> None:
    returned: list[bool] = []
    budget = PrefetchBudget(100, 16, on_return=lambda: returned.append(True))
    _all_filling(budget, 16)
    for reader in range(3):
        assert [_turn(budget, reader) for _ in range(4)] == [4, 8, 16, 25]  # and holds its 25
    assert [_turn(budget, 3) for _ in range(2)] == [4, 8]
    budget.release(3, 0)
    assert not budget.ready(3, 0), "16 wanted, 100 - 3 * 25 - 12 others' one entry = 13 free"
    returned.clear()
    budget.release(0, 0)  # 0 drained: its room comes back, and whoever waits is told
    assert returned == [True]
    assert budget.ready(3, 0)
    assert budget.reserve(3, 0) == 16
    assert budget.granted == 16 + 2 * 25 + 13


def test_a_reader_without_a_backlog_never_waits_and_reads_one_entry() -> None:
    budget = PrefetchBudget(32, 16)
    for reader in range(1, 16):  # the others read backlogs, and hold their grants
        _turn(budget, reader)
        _turn(budget, reader)
    budget.release(0, 0)
    assert not budget.filling(0) and budget.ready(0, 0)
    assert budget.reserve(0, 0) == 1


def test_a_reader_reads_what_is_free_when_nothing_lent_is_left_to_come_back() -> None:
    budget = PrefetchBudget(16, 16)
    _all_filling(budget, 16)  # one entry each, all released: nothing more will come back
    budget.release(0, 0)
    assert budget.filling(0) and budget.ready(0, 0), "waiting would wait forever"
    assert budget.reserve(0, 0) == 1 and budget.granted == 16


def test_a_release_that_keeps_its_grant_still_wakes_the_line() -> None:
    """A reader released while it still counts its whole grant as held (acknowledgements in
    flight, say) gives nothing back, but it is no longer lent out, and the first in line may be
    waiting for exactly that (nothing left to come back): it must be told, or it waits forever
    (seen under load, a consumer stalled with every partition in line)."""
    returned: list[bool] = []
    budget = PrefetchBudget(100, 16, on_return=lambda: returned.append(True))
    _all_filling(budget, 16)
    budget.release(0, 0)
    granted = budget.reserve(0, 0)
    budget.limit(0, 0)
    _fill(budget, 0, granted)
    returned.clear()
    budget.release(0, granted)
    assert returned == [True]
    assert budget.granted == 15 + granted


@given(
    st.integers(1, 8).flatmap(
        lambda readers: st.tuples(
            st.just(readers),
            st.integers(readers, 64),
            st.lists(
                st.tuples(st.integers(0, readers - 1), st.booleans(), st.floats(0, 1), st.floats(0, 1)),
                max_size=80,
            ),
        )
    )
)
def test_turns_and_limits_never_grant_past_the_budget(
    case: tuple[int, int, list[tuple[int, bool, float, float]]],
) -> None:
    readers, total, steps = case
    budget = PrefetchBudget(total, readers)
    held = [0] * readers
    for reader, by_turn, done_share, read_share in steps:
        held[reader] -= int(held[reader] * done_share)  # the caller finished some
        if by_turn:
            budget.release(reader, held[reader])
            if not budget.ready(reader, held[reader]):
                continue
            budget.reserve(reader, held[reader])
        limit = budget.limit(reader, held[reader])
        assert limit >= held[reader]
        got = int((limit - held[reader]) * read_share)  # a reply of at most the room
        _fill(budget, reader, got)
        held[reader] += got
        assert budget.granted <= total
        assert sum(held) <= total
