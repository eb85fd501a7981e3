"""The bar aggregator's policies and invariants, with a list as the handler."""

from __future__ import annotations

from decimal import Decimal
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.aggregator import BarAggregator, Outcome
from volcast.bar import Bar, BarStatus, Trade

MIN = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % MIN  # an aligned minute


def trade(ts: int, tid: int, price: str = "10", amount: str = "1", side: str | None = "buy") -> Trade:
    return Trade(ts, tid, Decimal(price), Decimal(amount), side)  # type: ignore[arg-type]


def test_fields_of_one_bar() -> None:
    bars: list[Bar] = []
    agg = BarAggregator(MIN, 1_000, bars.append)
    agg.add(trade(T0 + 5, 1, "10", "2", "buy"))
    agg.add(trade(T0 + 9, 2, "12", "1", "sell"))
    agg.add(trade(T0 + 7, 3, "9", "1", "buy"))
    agg.advance(T0 + MIN + 999)
    assert bars == []  # still inside the grace period
    agg.advance(T0 + MIN + 1_000)
    (bar,) = bars
    assert (bar.open, bar.high, bar.low, bar.close) == (Decimal(10), Decimal(12), Decimal(9), Decimal(12))
    assert bar.volume == 4 and bar.quote_volume == Decimal(41) and bar.trades == 3
    assert (bar.buy_volume, bar.sell_volume) == (Decimal(3), Decimal(1))
    assert bar.vwap == Decimal(41) / Decimal(4)
    assert (bar.first_trade_id, bar.last_trade_id) == (1, 3)
    assert bar.status is BarStatus.COMPLETE and bar.open_time_ms == T0


def test_empty_intervals_are_zero_bars_at_last_close() -> None:
    bars: list[Bar] = []
    agg = BarAggregator(MIN, 0, bars.append)
    agg.add(trade(T0 + 1, 1, "10"))
    agg.add(trade(T0 + 3 * MIN + 1, 2, "11"))
    agg.advance(T0 + 4 * MIN)
    assert [b.open_time_ms for b in bars] == [T0 + i * MIN for i in range(4)]
    assert [b.volume for b in bars] == [1, 0, 0, 1]
    assert bars[1].close == bars[1].open == bars[1].vwap == Decimal(10)
    assert bars[1].first_trade_id is None


def test_duplicates_and_late_trades_are_counted_not_added() -> None:
    bars: list[Bar] = []
    agg = BarAggregator(MIN, 1_000, bars.append)
    assert agg.add(trade(T0 + 1, 1)) is Outcome.ADDED
    assert agg.add(trade(T0 + 1, 1)) is Outcome.DUPLICATE
    agg.add(trade(T0 + MIN + 500, 3))
    # Within grace: a trade of the first bar, arriving after a trade of the second, still lands in it.
    assert agg.add(trade(T0 + 2, 2)) is Outcome.ADDED
    agg.advance(T0 + MIN + 1_000)
    assert bars[0].trades == 2
    assert agg.add(trade(T0 + 3, 4)) is Outcome.LATE
    assert agg.add(trade(T0 + 2, 2)) is Outcome.DUPLICATE  # its bar just closed: still known
    assert (agg.trades, agg.duplicates, agg.late) == (3, 2, 1)
    assert bars[0].trades == 2


def test_waits_while_feed_has_not_moved() -> None:
    bars: list[Bar] = []
    agg = BarAggregator(MIN, 0, bars.append)
    agg.add(trade(T0 + 1, 1))
    agg.advance(T0 + MIN - 1)
    assert bars == []
    agg.advance(T0 + 10)  # a watermark never moves back
    agg.advance(T0 + MIN)
    assert len(bars) == 1


def test_gap_and_backfilled_status() -> None:
    bars: list[Bar] = []
    agg = BarAggregator(MIN, 0, bars.append)
    agg.add(trade(T0 + 1, 1))
    agg.add(trade(T0 + MIN + 1, 2), backfilled=True)
    agg.mark_gap(T0 + 2 * MIN + 30_000, T0 + 2 * MIN + 40_000)
    agg.advance(T0 + 3 * MIN)
    assert [b.status for b in bars] == [BarStatus.COMPLETE, BarStatus.BACKFILLED, BarStatus.GAP]


def test_resume_needs_aligned_start_and_a_price() -> None:
    with pytest.raises(ValueError, match="not aligned"):
        BarAggregator(MIN, 0, print, start_ms=T0 + 1, last_close=Decimal(1))
    with pytest.raises(ValueError, match="last_close"):
        BarAggregator(MIN, 0, print, start_ms=T0)
    bars: list[Bar] = []
    agg = BarAggregator(MIN, 0, bars.append, start_ms=T0, last_close=Decimal(7))
    agg.add(trade(T0 + MIN + 1, 5, "8"))
    agg.advance(T0 + 2 * MIN)
    assert [(b.volume, b.close) for b in bars] == [(Decimal(0), Decimal(7)), (Decimal(1), Decimal(8))]
    assert agg.add(trade(T0 - 1, 4)) is Outcome.LATE


def test_open_bars_snapshot() -> None:
    agg = BarAggregator(MIN, 0, print)
    agg.add(trade(T0 + 1, 1, "3"))
    agg.add(trade(T0 + 2 * MIN + 1, 2, "4"))
    snapshot = agg.open_bars()
    assert [b.open_time_ms for b in snapshot] == [T0, T0 + MIN, T0 + 2 * MIN]
    assert [b.volume for b in snapshot] == [1, 0, 1]


# --- invariants -------------------------------------------------------------------------------

amounts = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(1000), places=8)
prices = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(100_000), places=4)
trade_lists = st.lists(
    st.tuples(st.integers(0, 10 * MIN), prices, amounts, st.sampled_from(["buy", "sell"])),
    min_size=1,
    max_size=60,
)


def build(trades: list[Trade], grace: int = 0) -> list[Bar]:
    bars: list[Bar] = []
    agg = BarAggregator(MIN, grace, bars.append)
    for t in trades:
        assert agg.add(t) is Outcome.ADDED
    agg.advance(max(t.timestamp_ms for t in trades) + 2 * MIN)
    return bars


@settings(max_examples=150, deadline=None)
@given(trade_lists, st.randoms(use_true_random=False))
def test_invariants(raw: list[tuple[int, Decimal, Decimal, str]], rng: object) -> None:
    trades = [trade(T0 + ts, i, str(p), str(a), side) for i, (ts, p, a, side) in enumerate(raw)]
    trades.sort(key=lambda t: (t.timestamp_ms, t.trade_id))
    bars = build(trades)
    # Volumes sum exactly to trade volumes, and counts to trade counts.
    assert sum((b.volume for b in bars), Decimal(0)) == sum((t.amount for t in trades), Decimal(0))
    assert sum(cast(int, b.trades) for b in bars) == len(trades)  # built from trades: never None
    assert all(cast(Decimal, b.buy_volume) + cast(Decimal, b.sell_volume) == b.volume for b in bars)
    # Bars are contiguous and aligned.
    opens = [b.open_time_ms for b in bars]
    assert opens == list(range(opens[0], opens[0] + MIN * len(bars), MIN))
    assert all(o % MIN == 0 for o in opens)
    assert all(b.low <= min(b.open, b.close) and b.high >= max(b.open, b.close) for b in bars)
    # Any arrival order gives the same bars, as long as no bar closed in between.
    shuffled = list(trades)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert build(shuffled) == bars
    # Duplicates change nothing.
    bars_with_duplicates: list[Bar] = []
    agg = BarAggregator(MIN, 0, bars_with_duplicates.append)
    for t in trades + trades[: len(trades) // 2]:
        agg.add(t)
    agg.advance(max(t.timestamp_ms for t in trades) + 2 * MIN)
    assert bars_with_duplicates == bars and agg.duplicates == len(trades) // 2


@settings(max_examples=100, deadline=None)
@given(trade_lists, st.data())
def test_arrival_within_grace_gives_same_bars(
    raw: list[tuple[int, Decimal, Decimal, str]], data: st.DataObject
) -> None:
    """Live arrival: each trade arrives up to `grace` after its timestamp, interleaved with watermarks."""
    grace = 3_000
    trades = [trade(T0 + ts, i, str(p), str(a), side) for i, (ts, p, a, side) in enumerate(raw)]
    trades.sort(key=lambda t: (t.timestamp_ms, t.trade_id))
    expected = build(trades, grace)
    delays = data.draw(st.lists(st.integers(0, grace), min_size=len(trades), max_size=len(trades)))
    arrivals = sorted((t.timestamp_ms + d, i) for i, (t, d) in enumerate(zip(trades, delays, strict=True)))
    bars: list[Bar] = []
    agg = BarAggregator(MIN, grace, bars.append)
    for arrival_ms, index in arrivals:
        assert agg.add(trades[index]) is Outcome.ADDED
        agg.advance(arrival_ms)  # the feed has reached the arrival time, and no further
    agg.advance(max(t.timestamp_ms for t in trades) + 2 * MIN)
    assert bars == expected
