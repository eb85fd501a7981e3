"""The demo's history: the shipped trades split in two, the earlier part served as klines.

The LSTM reads a day of bars (its HAR-style regressors) plus ``look_back``, and the refit worker
trains once a feed has that plus the held-out bars. The demo has one real recording (2.5 days of
XRP/ETH trades), so it plays the trades before ``split_ms`` as the exchange's candle history and
replays the rest live: the streamer's history bootstrap loads those candles over REST, as it
would from Binance, and the refit worker trains on them at once. Nothing is made up: the history
bars are ``volcast bars`` of the same real trades (the simulator's bar-file format, with quote
volume, trade count and taker buy volume), ending at the minute the live tape starts, so the
simulator serves them at the replayed times their trades would have had.
"""

from __future__ import annotations

from streamer.offline import aggregate_trades
from streamer.simulator.bar_files import BarFile
from streamer.simulator.tape import Tape
from streamer.trade_validation import check_trade
from volcast.bar import Bar, format_decimal

MINUTE_MS = 60_000


def split_tape(tape: Tape, split_ms: int) -> tuple[BarFile, Tape]:
    """The 1-minute bars of the trades before the minute of the first trade at or after
    ``split_ms``, and the tape of the trades from that minute on."""
    start = next((i for i, t in enumerate(tape.trades) if t.timestamp_ms >= split_ms), None)
    if start is None or start == 0:
        raise ValueError(f"{tape.symbol}: no trades on both sides of {split_ms}")
    live_from = tape.trades[start].timestamp_ms - tape.trades[start].timestamp_ms % MINUTE_MS
    before = [t for t in tape.trades if t.timestamp_ms < live_from]
    live = tuple(t for t in tape.trades if t.timestamp_ms >= live_from)
    if not before:
        raise ValueError(f"{tape.symbol}: no trades before {live_from}")
    checked = [check_trade(t.timestamp_ms, t.trade_id, t.price, t.amount, "sell" if t.buyer_maker else "buy")
               for t in before]
    bars, _ = aggregate_trades(checked, MINUTE_MS)
    times = [b.open_time_ms for b in bars]
    rows = [_row(b) for b in bars]
    # The simulator ends a bar file where the tape's first candle starts: the minutes between the
    # last earlier trade and the live tape had no trades, so they are written out as such.
    close = format_decimal(bars[-1].close)
    for open_ms in range(times[-1] + MINUTE_MS, live_from, MINUTE_MS):
        times.append(open_ms)
        rows.append(f"{close},{close},{close},{close},0,0,0,0")
    history = BarFile(tape.symbol, tuple(times), tuple(rows), f"{tape.symbol} trades before {live_from} (ms)")
    return history, Tape(tape.symbol, live, tape.skipped)


def _row(bar: Bar) -> str:
    """``BarFile.row``'s fields: open, high, low, close, volume, quote volume, trades, buy volume."""
    fields = bar.to_fields()
    return ",".join(fields[name] for name in ("open", "high", "low", "close", "volume", "quote_volume", "trades",
                                              "buy_volume"))
