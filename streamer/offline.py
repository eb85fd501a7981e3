"""Aggregate a finished set of trades into bars, with the same aggregator the live streamer uses."""

from __future__ import annotations

from collections.abc import Iterable

from streamer.aggregator import BarAggregator
from streamer.trade_validation import Refusal
from volcast.bar import Bar, Trade


def aggregate_trades(trades: Iterable[Trade | Refusal], interval_ms: int) -> tuple[list[Bar], BarAggregator]:
    """All bars from the first trade's bar to the last trade's bar, empty intervals included.

    Every trade is known up front, so no grace is needed: the feed is over once the last trade
    is in, and the watermark jumps past the last bar. A refused row (``Refusal``) adds nothing
    and marks its bar ``gap``, as the live feed does; one without a usable time lies somewhere
    between the rows around it, so the bars from the trade before it to the trade after it are.
    Without any usable trade there is no price, so no bars.
    """
    bars: list[Bar] = []
    aggregator = BarAggregator(interval_ms, 0, bars.append)
    last_timestamp: int | None = None
    last_trade_ms: int | None = None  # of the previous usable trade, in file order
    unplaced_from: int | None = None  # a row without time is pending since this time (-1: file start)
    for item in trades:
        if isinstance(item, Trade):
            aggregator.add(item)
            if unplaced_from is not None:
                aggregator.mark_gap(item.timestamp_ms if unplaced_from < 0 else unplaced_from, item.timestamp_ms + 1)
                unplaced_from = None
            last_trade_ms = timestamp = item.timestamp_ms
        elif item.timestamp_ms is not None:
            aggregator.refuse(item.trade_id, item.timestamp_ms)
            timestamp = item.timestamp_ms
        else:
            if unplaced_from is None:
                unplaced_from = -1 if last_trade_ms is None else last_trade_ms
            continue
        last_timestamp = timestamp if last_timestamp is None else max(last_timestamp, timestamp)
    if unplaced_from is not None and unplaced_from >= 0:
        aggregator.mark_gap(unplaced_from, (last_timestamp or unplaced_from) + 1)
    if last_timestamp is not None and aggregator.trades:
        aggregator.advance(aggregator.bar_open(last_timestamp) + interval_ms)
    return bars, aggregator
