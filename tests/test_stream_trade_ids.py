"""The aggregator's duplicate memory (runs of trade ids) behaves exactly like a set of ids."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.trade_ids import TradeIdSet

_INT64 = 2**63


def _runs(ids: TradeIdSet) -> list[tuple[int, int]]:
    return list(zip(ids._starts, ids._ends, strict=True))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=60), max_size=80))
def test_same_answers_as_a_set(sequence: list[int]) -> None:
    ids, reference = TradeIdSet(), set[int]()
    for trade_id in sequence:
        assert ids.add(trade_id) == (trade_id not in reference)
        reference.add(trade_id)
    assert all((i in ids) == (i in reference) for i in range(-2, 63))
    assert len(ids) == len(reference)
    runs = _runs(ids)
    # Canonical: sorted, disjoint, and never two runs that could be one.
    assert all(start <= end for start, end in runs)
    assert all(end + 1 < next_start for (_s, end), (next_start, _e) in pairwise(runs))


def test_consecutive_ids_are_one_run() -> None:
    ids = TradeIdSet()
    for trade_id in range(553_287_559, 553_287_559 + 100_000):
        assert ids.add(trade_id)
    assert ids.runs == 1 and len(ids) == 100_000
    assert not ids.add(553_287_600)  # a resent trade


def test_a_backfilled_hole_joins_its_neighbours() -> None:
    ids = TradeIdSet()
    for trade_id in [*range(10, 20), *range(30, 40)]:
        ids.add(trade_id)
    assert ids.runs == 2
    for trade_id in reversed(range(20, 30)):  # the hole, filled in any order
        assert ids.add(trade_id)
    assert _runs(ids) == [(10, 39)]


def test_ids_beyond_64_bits_still_count() -> None:
    ids = TradeIdSet()
    assert ids.add(5) and ids.add(_INT64 + 7) and ids.add(-_INT64 - 3) and ids.add(_INT64 + 8)
    assert not ids.add(_INT64 + 7)
    assert _INT64 + 8 in ids and -_INT64 - 3 in ids and _INT64 + 6 not in ids
    assert ids.runs == 3
