"""Aggregate a finished set of trades into bars, with the same aggregator the live streamer uses."""

from __future__ import annotations

from collections.abc import Iterable

from streamer.aggregator import BarAggregator
from volcast.bar import Bar, Trade


def aggregate_trades(trades: Iterable[Trade], interval_ms: int) -> tuple[list[Bar], BarAggregator]:
    """All bars from the first trade's bar to the last trade's bar, empty intervals included.

    Every trade is known up front, so no grace is needed: the feed is over once the last trade
    is in, and the watermark jumps past the last bar.
    """
    bars: list[Bar] = []
    aggregator = BarAggregator(interval_ms, 0, bars.append)
    last_timestamp: int | None = None
    for trade in trades:
        aggregator.add(trade)
        last_timestamp = trade.timestamp_ms if last_timestamp is None else max(last_timestamp, trade.timestamp_ms)
    if last_timestamp is not None:
        aggregator.advance(aggregator.bar_open(last_timestamp) + interval_ms)
    return bars, aggregator
