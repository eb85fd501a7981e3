"""Coarser bars from finer ones, exactly: how a feed of 5m (or 1h, ...) bars gets history from
the exchange's 1-minute candles, and how the simulator serves candles of any whole-minute interval.

Sums (volume, quote volume, side volumes, trade counts) are exact (``EXACT``); open and close are
the first and last traded fine bars', high and low their extremes (an empty fine bar only
carries an earlier close); VWAP is quote volume / volume in the
default context, as the aggregator computes it, or the close of a bar without volume. A field
that one of the fine bars lacks (None: a history candle without it) is lacking in the sum too.
A fine interval with no bar (an exchange that skips candles without trades) is an empty bar at
the last close, as the aggregator would have made it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from decimal import Decimal

from volcast.bar import EXACT, Bar, BarStatus

_ZERO = Decimal(0)


def empty_like(open_time_ms: int, close: Decimal, status: BarStatus) -> Bar:
    """An interval without trades at price ``close``: every sum known to be zero."""
    return Bar(open_time_ms, close, close, close, close, _ZERO, _ZERO, 0, _ZERO, _ZERO, close, None, None, status)


def _sum(values: Iterable[Decimal | None]) -> Decimal | None:
    total = _ZERO
    for value in values:
        if value is None:
            return None
        total = EXACT.add(total, value)
    return total


def combine(fine: Sequence[Bar], open_time_ms: int, status: BarStatus) -> Bar:
    """One bar opening at ``open_time_ms`` from the fine bars inside it, in time order (at least one)."""
    if not fine:
        raise ValueError("no bars to combine")
    volume = _sum(b.volume for b in fine)
    assert volume is not None
    quote = _sum(b.quote_volume for b in fine)
    counts = [b.trades for b in fine]
    trades = None if any(c is None for c in counts) else sum(c for c in counts if c is not None)
    # Prices come from the fine bars that traded: an empty one carries the close of an earlier
    # bar (maybe of the coarse bar before), which no trade of this one was at.
    priced = [b for b in fine if b.volume] or [fine[-1]]
    close = priced[-1].close
    # No volume: no trade, and the aggregator's VWAP of an empty bar is its close.
    vwap = (quote / volume if quote is not None else None) if volume else close
    ids = [b.first_trade_id for b in fine if b.first_trade_id is not None]
    last_ids = [b.last_trade_id for b in fine if b.last_trade_id is not None]
    return Bar(
        open_time_ms=open_time_ms,
        open=priced[0].open,
        high=max(b.high for b in priced),
        low=min(b.low for b in priced),
        close=close,
        volume=volume,
        quote_volume=quote,
        trades=trades,
        buy_volume=_sum(b.buy_volume for b in fine),
        sell_volume=_sum(b.sell_volume for b in fine),
        vwap=vwap,
        first_trade_id=min(ids) if ids else None,
        last_trade_id=max(last_ids) if last_ids else None,
        status=status,
    )


class Coarsener:
    """Fine bars in, coarse bars out, across pages: feed ``add`` bars in time order (gaps allowed),
    take the coarse bars that are complete; ``finish(end_ms)`` closes the ones before ``end_ms``.

    Coarse bars start at the first coarse boundary at or after ``start_ms``; a coarse bar is made
    only once the fine bars have reached its end, so a page that ends inside one keeps it open.
    Before the first fine bar there is no price to carry: those intervals are not made.
    """

    def __init__(self, fine_ms: int, coarse_ms: int, start_ms: int, status: BarStatus,
                 last_close: Decimal | None = None) -> None:
        if coarse_ms % fine_ms:
            raise ValueError(f"{coarse_ms} ms bars cannot be built from {fine_ms} ms bars")
        self.fine_ms = fine_ms
        self.coarse_ms = coarse_ms
        self.status = status
        self._open = -(-start_ms // coarse_ms) * coarse_ms  # the first boundary at or after start
        self._next_fine = self._open
        self._pending: list[Bar] = []
        self.last_close = last_close

    def add(self, bars: Iterable[Bar]) -> Iterator[Bar]:
        """Take fine bars (time order); yield every coarse bar they complete."""
        for bar in bars:
            if bar.open_time_ms < self._next_fine:
                continue  # before the start, or a repeat of a bar already taken
            yield from self._fill_to(bar.open_time_ms)
            if self.coarse_ms == self.fine_ms:  # nothing to combine (a month of 1-minute history)
                self.last_close = bar.close
                self._open = self._next_fine = bar.open_time_ms + self.fine_ms
                yield bar if bar.status is self.status else replace(bar, status=self.status)
                continue
            self._pending.append(bar)
            self.last_close = bar.close
            self._next_fine = bar.open_time_ms + self.fine_ms
            if self._next_fine == self._open + self.coarse_ms:
                yield self._emit()

    def finish(self, end_ms: int) -> Iterator[Bar]:
        """Every coarse bar that ends at or before ``end_ms``, missing fine bars filled as empty."""
        while self.last_close is not None and self._open + self.coarse_ms <= end_ms:
            yield from self._fill_to(self._open + self.coarse_ms)  # emits the bar when it fills it

    def _fill_to(self, open_time_ms: int) -> Iterator[Bar]:
        """Empty fine bars up to ``open_time_ms`` (exclusive), emitting the coarse bars they complete."""
        while self._next_fine < open_time_ms:
            if self.last_close is None:  # nothing traded yet: no price to carry, no bar
                self._next_fine = min(open_time_ms, self._open + self.coarse_ms)
                if self._next_fine == self._open + self.coarse_ms:
                    self._open = self._next_fine
                    self._pending.clear()
                continue
            self._pending.append(empty_like(self._next_fine, self.last_close, self.status))
            self._next_fine += self.fine_ms
            if self._next_fine == self._open + self.coarse_ms:
                yield self._emit()

    def _emit(self) -> Bar:
        bar = combine(self._pending, self._open, self.status)
        self._pending = []
        self._open += self.coarse_ms
        self._next_fine = self._open
        return bar
