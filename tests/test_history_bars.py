"""History bars: the ``history`` status, fields a candle may lack, candles read exactly, and coarser
bars built from 1-minute ones equal to the aggregator's (pure: no I/O)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecaster.features import usable_features
from forecaster.frame import BarFrame
from streamer.coarser_bars import Coarsener
from streamer.kline_rows import CandleError, bar_from_candle, binance_row
from streamer.offline import aggregate_trades
from streamer.trades_csv import read_trades
from volcast.bar import HISTORY_MAY_LACK, Bar, BarStatus, Trade

DATA = Path(__file__).parent / "data"
XRP_TRADES = DATA / "binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz"
MIN = 60_000
# Binance's documented example kline.
ROW = [1499040000000, "0.01634790", "0.80000000", "0.01575800", "0.01577100", "148976.11427815",
       1499040059999, "2434.19055334", 308, "1756.87402397", "28.46694368", "0"]


def test_binance_candle_is_read_exactly() -> None:
    bar = bar_from_candle(ROW, [ROW[0], 0.0163479, 0.8, 0.015758, 0.015771, 148976.11427815])
    assert bar.status is BarStatus.HISTORY
    assert (bar.open, bar.high, bar.low, bar.close) == tuple(Decimal(v) for v in ROW[1:5])  # type: ignore[arg-type]
    assert bar.volume == Decimal("148976.11427815") and bar.quote_volume == Decimal("2434.19055334")
    assert bar.trades == 308 and bar.buy_volume == Decimal("1756.87402397")
    assert bar.sell_volume == Decimal("148976.11427815") - Decimal("1756.87402397")
    assert bar.vwap == Decimal("2434.19055334") / Decimal("148976.11427815")
    assert bar.first_trade_id is None and bar.last_trade_id is None


def test_ohlcv_candle_lacks_the_other_fields_unless_nothing_traded() -> None:
    parsed = [1499040000000, 2.327, 2.331, 2.326, 2.33, 86872.0]
    bar = bar_from_candle({"t": 1}, parsed)  # not Binance's layout: ccxt's parsed values
    assert bar.close == Decimal("2.33") and bar.volume == Decimal("86872.0")
    assert all(getattr(bar, name) is None for name in HISTORY_MAY_LACK)
    row = [1499040000000, "2.33", "2.33", "2.33", "2.33", "0", 1499040059999, None, None, None, None, "0"]
    empty = bar_from_candle(row, row)
    assert (empty.quote_volume, empty.trades, empty.buy_volume, empty.sell_volume) == (
        Decimal(0), 0, Decimal(0), Decimal(0))
    assert empty.vwap == Decimal("2.33")


@pytest.mark.parametrize(
    ("index", "value"),
    [(1, "NaN"), (4, "0"), (5, "-1"), (5, "Infinity"), (5, "abc"), (8, -3), (9, "1e999999")],
)
def test_candles_that_cannot_be_real_are_refused(index: int, value: object) -> None:
    row = list(ROW)
    row[index] = value
    with pytest.raises(CandleError):
        bar_from_candle(row, [])


def test_history_bar_round_trips_with_empty_fields_and_only_history_may_lack_them() -> None:
    row = [1499040000000, "2.327", "2.331", "2.326", "2.33", "86872", 1499040059999, None, None, None, None, "0"]
    bar = bar_from_candle(row, row)
    fields = bar.to_fields()
    assert all(fields[name] == "" for name in HISTORY_MAY_LACK) and fields["status"] == "history"
    assert Bar.from_fields(fields) == bar
    with pytest.raises(ValueError, match="complete bar without"):
        Bar.from_fields({**fields, "status": "complete"})


def test_binance_row_round_trip() -> None:
    bar = bar_from_candle(ROW, [])
    assert binance_row(bar, MIN, Decimal("28.46694368")) == [
        ROW[0], "0.0163479", "0.8", "0.015758", "0.015771", "148976.11427815", ROW[6], "2434.19055334", 308,
        "1756.87402397", "28.46694368", "0"]


def _history(bars: list[Bar]) -> list[Bar]:
    return [replace(b, first_trade_id=None, last_trade_id=None, status=BarStatus.HISTORY) for b in bars]


@pytest.mark.parametrize("coarse", [5 * MIN, 60 * MIN])
def test_coarser_bars_equal_the_aggregators_on_real_trades(coarse: int) -> None:
    trades = list(read_trades(XRP_TRADES))
    minutes, _ = aggregate_trades(trades, MIN)
    expected, _ = aggregate_trades(trades, coarse)
    # Drop the empty minutes, as an exchange that skips candles without trades would send them.
    sparse = [b for b in _history(minutes) if b.trades]
    start = minutes[0].open_time_ms - minutes[0].open_time_ms % coarse
    coarsener = Coarsener(MIN, coarse, start, BarStatus.HISTORY)
    got: list[Bar] = []
    for lo in range(0, len(sparse), 700):  # pages that end inside a coarse bar
        got.extend(coarsener.add(sparse[lo:lo + 700]))
    got.extend(coarsener.finish(expected[-1].open_time_ms + coarse))
    assert got == _history(expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40 * MIN - 1), st.sampled_from(["1.5", "2", "0.25"]),
                          st.sampled_from(["buy", "sell"])), min_size=1, max_size=60))
def test_coarsening_is_exact_for_any_trades(rows: list[tuple[int, str, str]]) -> None:
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % (15 * MIN)
    trades = [Trade(t0 + ts, i, Decimal("100") + Decimal(i % 7), Decimal(amount), side)  # type: ignore[arg-type]
              for i, (ts, amount, side) in enumerate(sorted(rows))]
    minutes, _ = aggregate_trades(trades, MIN)
    expected, _ = aggregate_trades(trades, 15 * MIN)
    coarsener = Coarsener(MIN, 15 * MIN, t0, BarStatus.HISTORY)
    got = [*coarsener.add(_history(minutes)), *coarsener.finish(expected[-1].open_time_ms + 15 * MIN)]
    assert got == _history(expected)


def test_frame_of_history_without_trade_counts_does_not_claim_them() -> None:
    row = [1499040000000, "2.327", "2.331", "2.326", "2.33", "86872", 1499040059999, None, None, None, None, "0"]
    history = bar_from_candle(row, row)
    live = bar_from_candle([1499040060000, *ROW[1:]], [])
    live = replace(live, status=BarStatus.COMPLETE, first_trade_id=1, last_trade_id=308)
    frame = BarFrame.from_bars([history, live], MIN)
    assert frame.known == frozenset()
    assert usable_features(("log_volume", "trades", "buy_share"), frame.known) == ("log_volume",)
    assert BarFrame.from_bars([live], MIN).known == frozenset({"trades", "buy_volume"})


def test_one_minute_history_passes_through_with_quiet_minutes_filled() -> None:
    trades = list(read_trades(XRP_TRADES))[:400]
    minutes, _ = aggregate_trades(trades, MIN)
    sparse = [b for b in _history(minutes) if b.trades]
    coarsener = Coarsener(MIN, MIN, minutes[0].open_time_ms, BarStatus.HISTORY)
    got = [*coarsener.add(sparse[:50]), *coarsener.add(sparse[50:]), *coarsener.finish(minutes[-1].open_time_ms + MIN)]
    assert got == _history(minutes)
