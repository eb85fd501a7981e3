"""A new feed's history against a backlog: the websocket has delivered the older trades of what
REST pages back through (a consumer behind at start; ``benchmarks/ingest.py``'s flood). REST
reads only what the websocket has not given, and every trade is in the bars exactly once.

Real parts: the simulator's REST (every trade published at once), ccxt's client, a FeedRunner;
the websocket's deliveries are handed to the runner as its hook would."""

from __future__ import annotations

import math
import time
from decimal import Decimal
from typing import Any

import pytest
from stream_harness import stream_settings, unique_prefix

from streamer.backfill import History
from streamer.exchange_link import ExchangeLink
from streamer.feed import FeedRunner
from streamer.offline import aggregate_trades
from streamer.simulator import ReplayServer, synthetic_tape
from streamer.source import create_exchange
from volcast.bar import Bar, Trade
from volcast.keys import Feed

TRADES = 5_000
DELIVERED = 3_500  # by the websocket before the history's pages come down to them
PAGE = 1_000


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")


def _trade(t: Any) -> Trade:
    return Trade(t.timestamp_ms, t.trade_id, Decimal(t.price), Decimal(t.amount), "sell" if t.buyer_maker else "buy")


async def test_history_pages_stop_at_the_websockets_trades() -> None:
    tape = synthetic_tape("BTC/USDT", TRADES, start_ms=int(time.time() * 1000) - 60_000)
    async with ReplayServer([tape], speed=math.inf) as server:
        await server.done.wait()  # REST has every trade, as the flood server has when it is read
        settings = stream_settings(server, ["BTC/USDT"], unique_prefix())
        exchange = create_exchange(settings.exchanges[0])
        try:
            link = ExchangeLink(exchange, settings.exchanges[0])
            await exchange.load_markets()
            bars: list[Bar] = []
            runner = FeedRunner(
                Feed("binance", "BTC/USDT", 1000), link, settings, lambda _f, bar: bars.append(bar), None
            )
            since = runner.aggregator.bar_open(tape.trades[0].timestamp_ms - 60_000)
            runner.backfill.history = History(since)  # as the catch-up starts it for a new feed
            for t in tape.trades[:DELIVERED]:
                runner._on_trade(_trade(t))
            weight = server.rest.weights.used
            await runner.backfill._backfill_recent_by_id(since)
            pages = (server.rest.weights.used - weight) // 25  # historicalTrades weighs 25
        finally:
            await exchange.close()
    # The newest page, the one the websocket had reached, and one below the websocket's first
    # trade (REST has nothing older): not the three pages in between that it had delivered.
    assert pages == 3
    aggregator = runner.aggregator
    assert aggregator.trades == TRADES and aggregator.duplicates == 0
    assert runner.frontier == tape.trades[-1].trade_id and runner.health.backfilled_trades == TRADES - DELIVERED
    aggregator.close_until(tape.trades[-1].timestamp_ms + 1_000)
    expected, _ = aggregate_trades([_trade(t) for t in tape.trades], 1000)
    assert [(b.open_time_ms, b.trades, b.volume, b.open, b.close) for b in bars] == [
        (b.open_time_ms, b.trades, b.volume, b.open, b.close) for b in expected
    ]
