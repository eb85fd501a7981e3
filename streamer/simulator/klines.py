"""``GET /api/v3/klines``: the candles a replayed symbol has had by the replay clock.

Two sources, one timeline per symbol (replayed time):

- **The tape**: 1-minute candles computed exactly from its trades, with the streamer's own trade
  check and aggregator (``aggregate_trades``, what ``volcast bars`` runs), moved as the replay
  moves the trades (whole days per tape, and the loop period per pass). A candle holds only the
  trades published so far: the one containing the clock is the current, still forming candle,
  as on Binance; candles after the clock do not exist yet. Minutes after the tape's last trade
  (and between the passes of a loop) are empty candles at the last close.
- **Bar files** given for the symbol (``--history``): the weeks before the tape, moved by whole
  minutes so that the file's last bar ends exactly where the tape's first candle starts (files
  that end at 23:59 UTC before a tape starting at 00:00 keep their time of day). Minutes a sparse
  file leaves out are empty candles at the last close; before the file's first bar (or the tape's,
  without a file) there are no candles: the symbol was not listed.

Paging is Binance's: ``interval`` (1m and the whole-minute intervals that divide a day, built from
1-minute candles), ``limit`` 1..1000 (default 500), ``startTime``/``endTime`` inclusive on open
times: the first ``limit`` candles from ``startTime``, or the last ``limit`` up to ``endTime``
given alone, or the most recent ``limit`` with neither. Fields a source lacks (the bar files'
quote volume, trade count, taker buy volumes) go out as ``null``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from decimal import Decimal

from streamer.coarser_bars import combine, empty_like
from streamer.kline_rows import bar_from_candle, binance_row
from streamer.offline import aggregate_trades
from streamer.simulator.bar_files import BarFile
from streamer.simulator.tape import Tape
from streamer.trade_validation import Refusal, check_trade
from volcast.bar import EXACT, Bar, BarStatus, Trade

MINUTE_MS = 60_000
DAY_MS = 86_400_000
INTERVALS: dict[str, int] = {
    "1m": MINUTE_MS, "3m": 3 * MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS, "30m": 30 * MINUTE_MS,
    "1h": 60 * MINUTE_MS, "2h": 120 * MINUTE_MS, "4h": 240 * MINUTE_MS, "6h": 360 * MINUTE_MS,
    "8h": 480 * MINUTE_MS, "12h": 720 * MINUTE_MS, "1d": DAY_MS,
}
_STATUS = BarStatus.COMPLETE  # candles have no status; the bars they are made of need one
Candle = tuple[Bar, Decimal | None]
"""A 1-minute (or coarser) candle: its bar and its taker buy quote volume (None: unknown)."""


def _side(buyer_maker: bool) -> str:
    return "sell" if buyer_maker else "buy"


def _buy_quote(trades: list[Trade | Refusal]) -> Decimal:
    total = Decimal(0)
    for t in trades:
        if isinstance(t, Trade) and t.side == "buy":
            total = EXACT.add(total, EXACT.multiply(t.price, t.amount))
    return total


class KlineBook:
    """The candles of one symbol: its bar file's (if any) before its tape's, by the replay clock."""

    def __init__(self, tape: Tape, shift_ms: int, period_ms: int, *, loop: bool, history: BarFile | None) -> None:
        self.symbol = tape.symbol
        self._shift = shift_ms
        self._period = period_ms
        self._loop = loop
        trades = tape.trades
        self._checked: list[Trade | Refusal] = [
            check_trade(t.timestamp_ms, t.trade_id, t.price, t.amount, _side(t.buyer_maker)) for t in trades
        ]
        self._times = [t.timestamp_ms for t in trades]  # as recorded, sorted
        bars, _ = aggregate_trades(self._checked, MINUTE_MS)
        self._bars = bars  # recorded time, one per minute from the first usable trade's to the last's
        first_minute = trades[0].timestamp_ms - trades[0].timestamp_ms % MINUTE_MS
        self._first_rec = bars[0].open_time_ms if bars else first_minute
        self.tape_start_ms = first_minute + shift_ms
        """Replayed open time of the tape's first candle (first pass): where the history ends."""
        self._buy_quotes = [self._bar_buy_quote(b.open_time_ms) for b in bars]
        self._history = history
        # Bar file time + this = replayed time: the file's last bar ends where the tape starts.
        self.history_shift_ms = 0 if history is None else self.tape_start_ms - (history.times[-1] + MINUTE_MS)

    def _trade_range(self, open_rec: int, until_rec: int | None = None) -> tuple[int, int]:
        """Indices of the tape's trades in the minute ``open_rec`` (and stamped <= ``until_rec``)."""
        end = open_rec + MINUTE_MS - 1 if until_rec is None else min(until_rec, open_rec + MINUTE_MS - 1)
        return bisect_left(self._times, open_rec), bisect_right(self._times, end)

    def _bar_buy_quote(self, open_rec: int) -> Decimal:
        lo, hi = self._trade_range(open_rec)
        return _buy_quote(self._checked[lo:hi])

    @property
    def first_ms(self) -> int:
        """Replayed open time of the first candle the symbol has."""
        if self._history is not None:
            return self._history.times[0] + self.history_shift_ms
        return self.tape_start_ms

    def minute(self, open_ms: int, now_ms: int) -> Candle | None:
        """The 1-minute candle opening at ``open_ms`` as of replay time ``now_ms`` (None: none yet or ever)."""
        if open_ms > now_ms or open_ms < self.first_ms:
            return None
        if open_ms < self.tape_start_ms:
            return self._file_minute(open_ms)
        passes = (open_ms - self.tape_start_ms) // self._period if self._loop else 0
        offset = self._shift + passes * self._period
        rec = open_ms - offset
        index = (rec - self._first_rec) // MINUTE_MS
        if index >= len(self._bars) or not self._bars:
            last = self._bars[-1].close if self._bars else None
            return None if last is None else (empty_like(open_ms, last, _STATUS), Decimal(0))
        if index < 0:  # before the first usable trade of a pass
            if passes == 0 or not self._bars:
                return None
            return empty_like(open_ms, self._bars[-1].close, _STATUS), Decimal(0)
        bar, buy_quote = self._bars[index], self._buy_quotes[index]
        if open_ms + MINUTE_MS - 1 > now_ms:  # the current candle: only the trades published so far
            lo, hi = self._trade_range(rec, now_ms - offset)
            subset = self._checked[lo:hi]
            made, _ = aggregate_trades(subset, MINUTE_MS)
            if made and made[-1].open_time_ms == rec:
                bar, buy_quote = made[-1], _buy_quote(subset)
            else:
                previous = self._bars[index - 1].close if index > 0 else None
                if previous is None:
                    return None
                bar, buy_quote = empty_like(rec, previous, _STATUS), Decimal(0)
        return _moved(bar, open_ms), buy_quote

    def _file_minute(self, open_ms: int) -> Candle | None:
        history = self._history
        if history is None:
            return None
        rec = open_ms - self.history_shift_ms
        index = history.last_before(rec)
        if index < 0:
            return None
        row = history.row(index)
        if history.times[index] != rec:  # a minute the file leaves out: nothing traded
            return empty_like(open_ms, Decimal(row[3]), _STATUS), Decimal(0)
        o, h, lo, c, v, quote, trades, buy = row
        raw: list[object] = [open_ms, o, h, lo, c, v, open_ms + MINUTE_MS - 1,
                             quote or None, int(trades) if trades else None, buy or None, None, "0"]
        bar = bar_from_candle(raw, raw, _STATUS)
        return bar, (Decimal(0) if not bar.volume else None)

    def _file_row(self, open_ms: int) -> list[object] | None:
        """The 1-minute kline of a file minute straight from the file's text (the bulk of a
        history request: a month is 43,200 of them; checked when the file was loaded)."""
        history = self._history
        assert history is not None
        rec = open_ms - self.history_shift_ms
        index = history.last_before(rec)
        if index < 0:
            return None
        o, h, lo, c, v, quote, trades, buy = history.row(index)
        end = open_ms + MINUTE_MS - 1
        if history.times[index] != rec or float(v) == 0:  # nothing traded: every sum is zero
            price = c if history.times[index] != rec else None
            if price is not None:
                return [open_ms, price, price, price, price, "0", end, "0", 0, "0", "0", "0"]
            return [open_ms, o, h, lo, c, v, end, "0", 0, "0", "0", "0"]
        return [open_ms, o, h, lo, c, v, end, quote or None, int(trades) if trades else None, buy or None, None, "0"]

    def candle(self, open_ms: int, interval_ms: int, now_ms: int) -> Candle | None:
        """The candle of ``interval_ms`` opening at ``open_ms``: its 1-minute candles combined."""
        if interval_ms == MINUTE_MS:
            return self.minute(open_ms, now_ms)
        minutes = [self.minute(t, now_ms) for t in range(open_ms, open_ms + interval_ms, MINUTE_MS)]
        present = [m for m in minutes if m is not None]
        if not present:
            return None
        bar = combine([b for b, _ in present], open_ms, _STATUS)
        quotes = [q for _, q in present]
        quote = None if any(q is None for q in quotes) else sum((q for q in quotes if q is not None), Decimal(0))
        return bar, quote

    def rows(self, interval_ms: int, start_ms: int | None, end_ms: int | None, limit: int,
             now_ms: int) -> list[list[object]]:
        """Binance's answer to ``klines`` with these parameters, oldest first."""
        first = self.first_ms - self.first_ms % interval_ms
        current = now_ms - now_ms % interval_ms  # the candle that contains the clock
        if start_ms is not None:
            lo = max(first, -(-start_ms // interval_ms) * interval_ms)
            hi = current if end_ms is None else min(current, end_ms - end_ms % interval_ms)
            hi = min(hi, lo + (limit - 1) * interval_ms)
        else:
            hi = current if end_ms is None else min(current, end_ms - end_ms % interval_ms)
            lo = max(first, hi - (limit - 1) * interval_ms)
        out: list[list[object]] = []
        for open_ms in range(lo, hi + 1, interval_ms):
            if interval_ms == MINUTE_MS and self._history is not None and open_ms < self.tape_start_ms:
                row = self._file_row(open_ms) if open_ms >= self.first_ms else None
                if row is not None:
                    out.append(row)
                continue
            got = self.candle(open_ms, interval_ms, now_ms)
            if got is not None:
                out.append(binance_row(got[0], interval_ms, got[1]))
        return out


def _moved(bar: Bar, open_ms: int) -> Bar:
    """``bar`` (recorded time) at its replayed open time; candles carry no trade ids or status."""
    return Bar(open_ms, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.quote_volume, bar.trades,
               bar.buy_volume, bar.sell_volume, bar.vwap, None, None, _STATUS)


def kline_books(
    tapes: Sequence[Tape],
    shifts_ms: Sequence[int],
    period_ms: int,
    *,
    loop: bool,
    history: Mapping[str, BarFile],
) -> dict[str, KlineBook]:
    """One book per tape, keyed by market id; a bar file for a symbol not replayed is refused."""
    replayed = {t.symbol for t in tapes}
    stray = sorted(set(history) - replayed)
    if stray:
        raise ValueError(f"history given for {', '.join(stray)}, which no --trades file replays "
                         f"(replayed: {', '.join(sorted(replayed))})")
    return {t.market_id: KlineBook(t, s, period_ms, loop=loop, history=history.get(t.symbol))
            for t, s in zip(tapes, shifts_ms, strict=True)}

