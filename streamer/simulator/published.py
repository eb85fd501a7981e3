"""The trades a symbol has published so far, searchable by id and time as Binance's REST API is.

A symbol publishes its tape in order, pass after pass, so what it has published is a prefix of
the endless sequence "loop 0, loop 1, ...": this keeps only its length and builds the trades a
request returns on demand. Within a pass ids and timestamps increase, and every pass starts
after the previous one ended (ids by the tape's id span, time by the timeline's whole-day
period), so both stay bisectable across passes.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from streamer.simulator.frames import LiveTrade
from streamer.simulator.tape import Tape


class PublishedTrades:
    def __init__(self, tape: Tape, shift_ms: int, period_ms: int) -> None:
        self._tape = tape
        self._shift_ms = shift_ms
        self._period_ms = period_ms
        self._ids = [t.trade_id for t in tape.trades]
        self._times = [t.timestamp_ms + shift_ms for t in tape.trades]
        self._n = len(tape.trades)
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def advance(self, n: int) -> None:
        self.count += n

    def trade(self, index: int) -> LiveTrade:
        """The ``index``-th trade ever published (0 = the tape's first trade in loop 0)."""
        loop, k = divmod(index, self._n)
        t = self._tape.trades[k]
        return LiveTrade(
            t.timestamp_ms + self._shift_ms + loop * self._period_ms,
            t.trade_id + loop * self._tape.id_span,
            t.price,
            t.amount,
            t.buyer_maker,
        )

    def _slice(self, start: int, stop: int) -> list[LiveTrade]:
        start, stop = max(0, start), min(self.count, stop)
        return [self.trade(i) for i in range(start, stop)]

    def _first_index(self, value: int, keys: list[int], step: int, right: bool) -> int:
        """Index of the first trade whose key (id or time) is >= value (> value if ``right``)."""
        loop = max(0, (value - keys[0]) // step)
        find = bisect_right if right else bisect_left
        return loop * self._n + find(keys, value - loop * step)

    def last(self, limit: int) -> list[LiveTrade]:
        return self._slice(self.count - limit, self.count)

    def from_id(self, from_id: int, limit: int) -> list[LiveTrade]:
        start = self._first_index(from_id, self._ids, self._tape.id_span, right=False)
        return self._slice(start, start + limit)

    def between(self, start_ms: int | None, end_ms: int | None, limit: int) -> list[LiveTrade]:
        """Trades with start <= T <= end (both inclusive): the first ``limit`` from the start, or,
        given only an end, the last ``limit`` up to it."""
        lo = 0 if start_ms is None else self._first_index(start_ms, self._times, self._period_ms, right=False)
        hi = self.count if end_ms is None else self._first_index(end_ms, self._times, self._period_ms, right=True)
        hi = min(hi, self.count)
        if start_ms is None:
            return self._slice(max(lo, hi - limit), hi)
        return self._slice(lo, min(hi, lo + limit))
