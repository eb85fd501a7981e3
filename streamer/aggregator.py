"""Trades to exact UTC time bars: a pure aggregator, fed trades and time, with no I/O and no clock.

Policies, each named because each one is a choice:

- **Alignment**: a trade at exchange time ``t`` belongs to the bar opening at ``t - t % interval``
  (UTC epoch alignment; intervals divide a day, so bars also align to UTC days).
- **Timestamp**: a bar is stamped with its open time.
- **Closing**: the caller says how far the feed has provably got: ``close_until(end_ms)`` when
  every trade before ``end_ms`` is known (a proof: streamer/close_proof.py), or
  ``advance(watermark_ms)`` when trades may still come up to ``grace`` late (a bar closes once
  ``open + interval + grace <= watermark``). The aggregator never guesses from a clock, so a
  feed that is down leaves its bars open until the backfill has filled them.
- **Empty intervals**: a bar of zero volume with open = high = low = close = VWAP = last close,
  never a missing bar.
- **Order**: open and close are the trades first and last by ``(timestamp, trade id)``, not by
  arrival, so any arrival order before a bar closes gives the same bar.
- **Duplicates**: a trade id seen in an open bar or in the last closed bars is dropped and counted.
- **Backfilled**: a bar holding a trade that only REST gave (``add(backfilled=True)``, and no
  copy of it from the websocket since: ``delivered_live``) is ``backfilled``; the overlap of a
  backfill with the live stream leaves a bar ``complete``.
- **Late, and amended bars**: a trade for a bar that has already closed (a closing proof was
  wrong: the grace was below the trade's delivery delay) is never added to a wrong bar. With an
  ``on_amend`` callback, a late trade of one of the last ``AMEND_BARS`` closed bars, whose ids are
  remembered, is added to that bar, which is handed out again as its next revision (``rev`` 1, 2,
  ...), and so are the empty bars after it within the window whose price it moved; it is counted
  ``amended``. Older bars' ids are forgotten, so a late trade there cannot be told from a
  duplicate: it is counted ``late`` and dropped, as without ``on_amend``.
- **Refused**: a trade whose id and time are known but whose values cannot be used
  (streamer/trade_validation.py) adds nothing to its bar and makes it ``gap`` (a trade of the
  interval is known to be missing from its sums); its id counts as seen, so a copy of it is a
  duplicate, valid or not: the first copy of an id decides.
- **Exact sums**: volume, quote volume and side volumes are summed in ``EXACT`` (volcast/bar.py),
  never rounded; VWAP, a quotient, is rounded in the default context (28 digits).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum

from streamer.trade_ids import TradeIdSet
from volcast.bar import EXACT, Bar, BarStatus, Trade

_add = EXACT.add
_multiply = EXACT.multiply

# The last closed bars kept whole (their sums and ids): a duplicate that arrives just after its bar
# closed is reported as a duplicate rather than as a late trade, and a late trade of one of them
# can amend it. Two bars: a trade delivered up to an interval after its bar closed (a delivery
# delay of up to about an interval plus the grace) still finds its bar; beyond that it is not a
# delivery delay but a loss that the backfill handles, and bars there wait rather than close.
AMEND_BARS = 2


class Outcome(Enum):
    ADDED = "added"
    DUPLICATE = "duplicate"
    LATE = "late"
    AMENDED = "amended"  # late, and added to its closed bar, handed out again as a revision


# Read on every trade: an Enum member read off its class costs a descriptor call (Python 3.11).
ADDED = Outcome.ADDED


@dataclass(slots=True)
class _ClosedBar:
    """One of the last closed bars, kept so that a late trade can still amend it."""

    open_ms: int
    accumulator: _Accumulator | None  # None: it closed empty (and has had no late trade since)
    refused: TradeIdSet | None
    status: BarStatus  # as it closed: GAP stays GAP
    price: Decimal  # an empty bar's price (the close before it)
    rev: int = 0

    def __contains__(self, trade_id: int) -> bool:
        return (self.accumulator is not None and trade_id in self.accumulator.ids) or (
            self.refused is not None and trade_id in self.refused)

    def bar(self) -> Bar:
        accumulator = self.accumulator
        if accumulator is None:
            return empty_bar(self.open_ms, self.price, self.status)
        status = self.status
        if status is not BarStatus.GAP:
            status = BarStatus.BACKFILLED if accumulator.backfilled else BarStatus.COMPLETE
        return accumulator.to_bar(self.open_ms, status)


@dataclass(slots=True)
class _Accumulator:
    """The running sums of one bar; prices are the extremes seen so far."""

    first_key: tuple[int, int]
    last_key: tuple[int, int]
    open: Decimal
    close: Decimal
    high: Decimal
    low: Decimal
    volume: Decimal = Decimal(0)
    quote_volume: Decimal = Decimal(0)
    buy_volume: Decimal = Decimal(0)
    sell_volume: Decimal = Decimal(0)
    trades: int = 0
    first_trade_id: int = 0
    last_trade_id: int = 0
    ids: TradeIdSet = field(default_factory=TradeIdSet)  # runs of ids: a busy 1h bar must not hold a set
    rest_ids: TradeIdSet | None = None  # ids taken from REST (a backfill)...
    live_ids: TradeIdSet | None = None  # ... of which the websocket delivered a copy later

    @property
    def backfilled(self) -> bool:
        """The bar holds a trade that only REST gave: one the websocket never delivered."""
        if self.rest_ids is None:
            return False
        return self.live_ids is None or len(self.rest_ids) > len(self.live_ids)

    def delivered_live(self, trade_id: int) -> None:
        """The websocket delivered a copy of ``trade_id``: if REST gave it first, it counts as live."""
        if self.rest_ids is not None and trade_id in self.rest_ids:
            if self.live_ids is None:
                self.live_ids = TradeIdSet()
            self.live_ids.add(trade_id)

    @classmethod
    def starting_with(cls, trade: Trade) -> _Accumulator:
        key = (trade.timestamp_ms, trade.trade_id)
        return cls(
            first_key=key,
            last_key=key,
            open=trade.price,
            close=trade.price,
            high=trade.price,
            low=trade.price,
            first_trade_id=trade.trade_id,
            last_trade_id=trade.trade_id,
        )

    def add(self, trade: Trade, backfilled: bool) -> bool:
        """Add the trade to the sums; False (and nothing added) if its id is already in this bar.

        On every trade. Each pair below is tested newest first with ``elif``: a bar's first key is
        never above its last, its low never above its high, its first id never above its last (all
        start equal), so a value past one end cannot be past the other.
        """
        trade_id = trade.trade_id
        if not self.ids.add(trade_id):
            return False
        key = (trade.timestamp_ms, trade_id)
        price, amount = trade.price, trade.amount
        if key > self.last_key:
            self.last_key, self.close = key, price
        elif key < self.first_key:
            self.first_key, self.open = key, price
        if price > self.high:
            self.high = price
        elif price < self.low:
            self.low = price
        self.volume = _add(self.volume, amount)
        self.quote_volume = _add(self.quote_volume, _multiply(price, amount))
        side = trade.side
        if side == "buy":
            self.buy_volume = _add(self.buy_volume, amount)
        elif side == "sell":
            self.sell_volume = _add(self.sell_volume, amount)
        self.trades += 1
        if trade_id > self.last_trade_id:
            self.last_trade_id = trade_id
        elif trade_id < self.first_trade_id:
            self.first_trade_id = trade_id
        if backfilled:
            if self.rest_ids is None:
                self.rest_ids = TradeIdSet()
            self.rest_ids.add(trade_id)
        return True

    def to_bar(self, open_time_ms: int, status: BarStatus) -> Bar:
        return Bar(
            open_time_ms=open_time_ms,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=self.volume,
            quote_volume=self.quote_volume,
            trades=self.trades,
            buy_volume=self.buy_volume,
            sell_volume=self.sell_volume,
            vwap=self.quote_volume / self.volume if self.volume else self.close,
            first_trade_id=self.first_trade_id,
            last_trade_id=self.last_trade_id,
            status=status,
        )


def empty_bar(open_time_ms: int, price: Decimal, status: BarStatus = BarStatus.COMPLETE) -> Bar:
    """An interval without trades: zero volume at the last known price."""
    zero = Decimal(0)
    return Bar(open_time_ms, price, price, price, price, zero, zero, 0, zero, zero, price, None, None, status)


class BarAggregator:
    """Builds contiguous bars of ``interval_ms`` from trades; calls ``on_bar`` for each closed bar."""

    def __init__(
        self,
        interval_ms: int,
        grace_ms: int,
        on_bar: Callable[[Bar], None],
        *,
        start_ms: int | None = None,
        last_close: Decimal | None = None,
        on_amend: Callable[[Bar, int], None] | None = None,
    ) -> None:
        if interval_ms <= 0 or not 0 <= grace_ms < interval_ms:
            raise ValueError("need interval_ms > 0 and 0 <= grace_ms < interval_ms")
        if start_ms is not None:
            if start_ms % interval_ms:
                raise ValueError(f"start_ms {start_ms} is not aligned to the {interval_ms} ms interval")
            if last_close is None:
                raise ValueError("resuming at start_ms needs last_close, the price empty bars carry")
        self.interval_ms = interval_ms
        self.grace_ms = grace_ms
        self._on_bar = on_bar
        self._on_amend = on_amend
        """Called with a closed bar's next revision and its number (1, 2, ...) after a late trade."""
        self.next_open_ms: int | None = start_ms
        # Once a resume point is given or a bar has closed, earlier trades are late.
        self._start_fixed = start_ms is not None
        self._last_close = last_close
        self._open: dict[int, _Accumulator] = {}
        # Ids of refused trades, by the open time of their bar (a bar of only refused trades has no
        # accumulator); a key marks the bar ``gap``.
        self._refused: dict[int, TradeIdSet] = {}
        self._closed: deque[_ClosedBar] = deque(maxlen=AMEND_BARS)
        self._gaps: list[tuple[int, int]] = []
        self._watermark_ms = -1
        self.trades = 0
        self.duplicates = 0
        self.late = 0
        self.amended = 0  # late trades (and refused records) added to their closed bar
        self.revisions = 0  # bars handed out again (a late trade's bar, and empty bars it re-priced)
        self.refused = 0
        self.bars_closed = 0

    def bar_open(self, timestamp_ms: int) -> int:
        return timestamp_ms - timestamp_ms % self.interval_ms

    def add(self, trade: Trade, *, backfilled: bool = False) -> Outcome:
        """Put a trade into its bar, unless it is a duplicate or its bar has closed."""
        timestamp_ms = trade.timestamp_ms
        open_ms = timestamp_ms - timestamp_ms % self.interval_ms  # bar_open, written out: on every trade
        next_open_ms = self.next_open_ms
        if next_open_ms is None or (open_ms < next_open_ms and not self._start_fixed):
            # Nothing has closed yet on a fresh start: the first bar is the earliest trade's bar.
            self.next_open_ms = next_open_ms = open_ms
        if open_ms < next_open_ms:
            return self._closed_outcome(trade, open_ms, backfilled)
        if self._refused:
            refused = self._refused.get(open_ms)
            if refused is not None and trade.trade_id in refused:
                self.duplicates += 1
                return Outcome.DUPLICATE
        accumulator = self._open.get(open_ms)
        if accumulator is None:
            accumulator = self._open[open_ms] = _Accumulator.starting_with(trade)
        if not accumulator.add(trade, backfilled):
            if not backfilled:
                accumulator.delivered_live(trade.trade_id)  # the overlap of a backfill, seen live too
            self.duplicates += 1
            return Outcome.DUPLICATE
        self.trades += 1
        return ADDED

    def delivered_live(self, trade_id: int, timestamp_ms: int) -> None:
        """The websocket delivered a trade that a backfill gave first (and the caller dropped): the
        bar is ``backfilled`` only if it holds a trade the websocket never delivered."""
        open_ms = self.bar_open(timestamp_ms)
        accumulator = self._open.get(open_ms)
        if accumulator is None:  # a kept closed bar: its next revision, if any, says so
            closed = self._closed_bar(open_ms)
            accumulator = None if closed is None else closed.accumulator
        if accumulator is not None:
            accumulator.delivered_live(trade_id)

    def refuse(self, trade_id: int | None, timestamp_ms: int) -> Outcome:
        """A trade that happened at ``timestamp_ms`` but cannot be summed: its bar becomes ``gap``.

        ADDED means newly recorded. Unlike a trade, it never starts the bars of a fresh start (it
        has no price for them): refused before the first trade's bar, it marks nothing unless a
        trade of that bar or earlier comes while nothing has closed.
        """
        open_ms = self.bar_open(timestamp_ms)
        if self.next_open_ms is not None and open_ms < self.next_open_ms and self._start_fixed:
            return self._closed_refusal(trade_id, open_ms)
        accumulator = self._open.get(open_ms)
        refused = self._refused.get(open_ms)
        if trade_id is not None and (
            (accumulator is not None and trade_id in accumulator.ids) or (refused is not None and trade_id in refused)
        ):
            self.duplicates += 1
            return Outcome.DUPLICATE
        if refused is None:
            refused = self._refused[open_ms] = TradeIdSet()
        if trade_id is not None:
            refused.add(trade_id)
        self.refused += 1
        return Outcome.ADDED

    def _closed_bar(self, open_ms: int) -> _ClosedBar | None:
        for closed in self._closed:
            if closed.open_ms == open_ms:
                return closed
        return None

    def _amendable(self, open_ms: int) -> _ClosedBar | None:
        """The kept closed bar a late record of ``open_ms`` amends; None, counted ``late``, if none."""
        closed = self._closed_bar(open_ms) if self._on_amend is not None else None
        if closed is None:
            self.late += 1
        return closed

    def _closed_outcome(self, trade: Trade, open_ms: int, backfilled: bool) -> Outcome:
        """A trade for a bar already closed: a duplicate if one of the last closed bars held its
        id; else amended into its bar if that bar is still kept (and ``on_amend`` is set); else late."""
        trade_id = trade.trade_id
        for kept in self._closed:
            if trade_id in kept:
                if not backfilled and kept.accumulator is not None:
                    kept.accumulator.delivered_live(trade_id)  # its next revision, if any, says so
                self.duplicates += 1
                return Outcome.DUPLICATE
        closed = self._amendable(open_ms)
        if closed is None:
            return Outcome.LATE
        if closed.accumulator is None:
            closed.accumulator = _Accumulator.starting_with(trade)
        closed.accumulator.add(trade, backfilled)
        self.trades += 1
        self.amended += 1
        self._revise(closed)
        return Outcome.AMENDED

    def _closed_refusal(self, trade_id: int | None, open_ms: int) -> Outcome:
        """A refused record for a bar already closed: a duplicate, or its kept bar becomes ``gap``
        (a revision), or late."""
        if trade_id is not None and any(trade_id in closed for closed in self._closed):
            self.duplicates += 1
            return Outcome.DUPLICATE
        closed = self._amendable(open_ms)
        if closed is None:
            return Outcome.LATE
        if closed.refused is None:
            closed.refused = TradeIdSet()
        if trade_id is not None:
            closed.refused.add(trade_id)
        self.refused += 1
        self.amended += 1
        if closed.status is not BarStatus.GAP:
            closed.status = BarStatus.GAP
            self._revise(closed)
        return Outcome.AMENDED

    def _revise(self, closed: _ClosedBar) -> None:
        """Hand out the bar's next revision; then the kept empty bars after it, whose price is its
        close, up to the next bar with trades (whose own prices do not depend on it)."""
        assert self._on_amend is not None
        bar = closed.bar()
        closed.rev += 1
        self.revisions += 1
        self._on_amend(bar, closed.rev)
        price = bar.close
        for later in self._closed:
            if later.open_ms <= closed.open_ms:
                continue
            if later.accumulator is not None:
                return
            if later.price != price:
                later.price = price
                later.rev += 1
                self.revisions += 1
                self._on_amend(later.bar(), later.rev)
        self._last_close = price  # the newest kept bar's close: the price of empty bars to come

    def advance(self, watermark_ms: int) -> int:
        """The feed has provably reached ``watermark_ms`` and trades may still come up to ``grace``
        late: close every bar with ``open + interval + grace <= watermark_ms``, in order."""
        if watermark_ms <= self._watermark_ms:
            return 0
        self._watermark_ms = watermark_ms
        return self.close_until(watermark_ms - self.grace_ms)

    def close_until(self, end_ms: int) -> int:
        """Every trade stamped before ``end_ms`` is known: close every bar ending by then, in order.

        The caller has the proof (a later trade with no hole before it, a pong, a REST read), so no
        grace is added here.
        """
        closed = 0
        while self.next_open_ms is not None and self.next_open_ms + self.interval_ms <= end_ms:
            self._start_fixed = True
            self._close(self.next_open_ms)
            self.next_open_ms += self.interval_ms
            closed += 1
        return closed

    @property
    def next_end_ms(self) -> int | None:
        """End of the oldest bar not closed yet (None before the first trade of a fresh start)."""
        return None if self.next_open_ms is None else self.next_open_ms + self.interval_ms

    def mark_gap(self, start_ms: int, end_ms: int) -> None:
        """Trades in ``[start_ms, end_ms)`` are known to be lost: their bars will say so."""
        if end_ms > start_ms:
            self._gaps.append((start_ms, end_ms))

    def open_bars(self) -> list[Bar]:
        """The bars not closed yet, oldest first, each with what it holds so far."""
        if self.next_open_ms is None:
            return []
        last = max(max(self._open, default=self.next_open_ms), max(self._refused, default=self.next_open_ms))
        bars = []
        price = self._last_close
        for open_ms in range(self.next_open_ms, last + 1, self.interval_ms):
            accumulator = self._open.get(open_ms)
            if accumulator is not None:
                bar = accumulator.to_bar(open_ms, self._status(open_ms, accumulator.backfilled))
                price = bar.close
            elif price is not None:
                bar = empty_bar(open_ms, price, self._status(open_ms, False))
            else:
                continue
            bars.append(bar)
        return bars

    @property
    def last_close(self) -> Decimal | None:
        return self._last_close

    def _status(self, open_ms: int, backfilled: bool) -> BarStatus:
        end_ms = open_ms + self.interval_ms
        if open_ms in self._refused or any(start < end_ms and open_ms < stop for start, stop in self._gaps):
            return BarStatus.GAP
        return BarStatus.BACKFILLED if backfilled else BarStatus.COMPLETE

    def _close(self, open_ms: int) -> None:
        accumulator = self._open.pop(open_ms, None)
        if accumulator is not None:
            bar = accumulator.to_bar(open_ms, self._status(open_ms, accumulator.backfilled))
        else:
            if self._last_close is None:  # only possible before the first trade of a fresh start
                raise AssertionError("an empty bar before any price is known")
            bar = empty_bar(open_ms, self._last_close, self._status(open_ms, False))
        refused = self._refused.pop(open_ms, None)
        self._closed.append(_ClosedBar(open_ms, accumulator, refused, bar.status, bar.close))
        if self._refused and min(self._refused) < open_ms:  # marks before the first bar of a fresh start
            self._refused = {k: v for k, v in self._refused.items() if k > open_ms}
        self._last_close = bar.close
        end_ms = open_ms + self.interval_ms
        self._gaps = [(start, stop) for start, stop in self._gaps if stop > end_ms]
        self.bars_closed += 1
        self._on_bar(bar)
