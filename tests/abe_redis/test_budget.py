"""PrefetchBudget: the partitions of a cluster consumer share one prefetch bound."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abe_redis._budget import PrefetchBudget


def test_a_reader_with_a_backlog_grows_and_a_drained_one_gives_its_room_back() -> None:
    budget = PrefetchBudget(100, 16)
    grants = []
    for _ in range(8):  # reader 0 fills every grant: its room doubles, up to what is free
        limit = budget.limit(0, held=0)
        grants.append(limit)
        for _ in range(limit):
            budget.delivered(0)
    assert grants[:4] == [1, 2, 4, 8]
    assert grants[-1] == 100 - 15, "the others keep one entry each"
    assert budget.limit(0, held=0) == 85, "the last grant was filled too"
    assert budget.limit(0, held=0) == 1, "nothing came: back to one entry of room"
    assert budget.granted == 16


def test_readers_that_all_fill_their_grants_split_the_budget() -> None:
    budget = PrefetchBudget(64, 4)
    for _ in range(10):
        for reader in range(4):
            for _ in range(budget.limit(reader, held=0)):
                budget.delivered(reader)
    assert [budget.limit(r, held=0) for r in range(4)] == [16, 16, 16, 16]


def test_fewer_entries_than_readers_is_refused() -> None:
    with pytest.raises(ValueError, match="one entry"):
        PrefetchBudget(3, 4)


@given(
    st.integers(1, 8).flatmap(
        lambda readers: st.tuples(
            st.just(readers),
            st.integers(readers, 64),
            st.lists(st.tuples(st.integers(0, readers - 1), st.floats(0, 1), st.floats(0, 1)), max_size=60),
        )
    )
)
def test_grants_never_exceed_the_budget_and_a_reply_never_exceeds_its_grant(
    case: tuple[int, int, list[tuple[int, float, float]]],
) -> None:
    readers, total, steps = case
    budget = PrefetchBudget(total, readers)
    held = [0] * readers
    for reader, done_share, read_share in steps:
        held[reader] -= int(held[reader] * done_share)  # the caller finished some
        limit = budget.limit(reader, held[reader])
        assert limit >= held[reader]
        got = int((limit - held[reader]) * read_share)  # a reply of at most the room
        for _ in range(got):
            budget.delivered(reader)
        held[reader] += got
        assert budget.granted <= total
        assert sum(held) <= total
