"""The demo's history (volcast/demo_history.py): the shipped trades before the split, served by the
simulator as candles, are exactly the bars of those trades, and end where the live tape starts."""

from __future__ import annotations

from streamer.kline_rows import bar_from_candle
from streamer.offline import aggregate_trades
from streamer.simulator.klines import KlineBook
from streamer.simulator.tape import load_tape
from streamer.trade_validation import check_trade
from volcast.bar import Bar
from volcast.commands.demo import DEMO_SPLIT_MS, DEMO_TRADES
from volcast.demo_history import split_tape

MINUTE_MS = 60_000
DAY_MS = 86_400_000


def _served(book: KlineBook, start_ms: int, end_ms: int, now_ms: int) -> list[Bar]:
    rows: list[list[object]] = []
    while start_ms <= end_ms:
        page = book.rows(MINUTE_MS, start_ms, end_ms, 1000, now_ms)
        if not page:
            break
        rows.extend(page)
        first = page[-1][0]
        assert isinstance(first, int)
        start_ms = first + MINUTE_MS
    return [bar_from_candle(row, row) for row in rows]


def _key(bar: Bar) -> tuple[object, ...]:
    return (bar.open_time_ms, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades, bar.buy_volume)


def test_the_history_is_the_bars_of_the_trades_before_the_split_and_ends_where_the_live_tape_starts() -> None:
    tape = load_tape(DEMO_TRADES)
    history, live = split_tape(tape, DEMO_SPLIT_MS)
    assert live.trades[0].timestamp_ms >= DEMO_SPLIT_MS
    assert tape.trades[: len(tape.trades) - len(live.trades)] + live.trades == tape.trades
    live_from = live.trades[0].timestamp_ms - live.trades[0].timestamp_ms % MINUTE_MS
    # Contiguous minutes up to the live tape's first: the simulator ends the file exactly there.
    assert list(history.times) == list(range(history.times[0], live_from, MINUTE_MS))
    assert len(history.times) >= 2 * 1440  # a day for the regressors, and a day to train on

    split = KlineBook(live, 0, DAY_MS, loop=False, history=history)
    whole = KlineBook(tape, 0, DAY_MS, loop=False, history=None)
    assert split.history_shift_ms == 0  # the history keeps its recorded times (and time of day)
    now = tape.trades[-1].timestamp_ms + MINUTE_MS
    end = live_from + 30 * MINUTE_MS
    served = _served(split, history.times[0], end, now)
    # The candles a feed loads from the split replay are those of the whole recording: the file's
    # before the live tape, the tape's after it.
    assert [_key(b) for b in served] == [_key(b) for b in _served(whole, history.times[0], end, now)]
    checked = [check_trade(t.timestamp_ms, t.trade_id, t.price, t.amount, "sell" if t.buyer_maker else "buy")
               for t in tape.trades if t.timestamp_ms < end + MINUTE_MS]
    bars, _ = aggregate_trades(checked, MINUTE_MS)
    assert [_key(b) for b in served] == [_key(b) for b in bars if b.open_time_ms <= end]
