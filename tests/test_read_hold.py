"""When a busy connection's socket may rest between reads (ExchangeLink._may_hold): never when a
bar of one of its feeds ends within the hold and its margin, nor while such a bar waits to close,
so that its closing trade or pong is read as soon as it comes. A real FeedRunner on a stand-in
connection (as test_close_exactness); no network."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from streamer.exchange_link import HOLD_MARGIN_MS, ExchangeLink
from streamer.feed import FeedRunner
from streamer.liveness import now_ms
from streamer.source import create_exchange
from streamer.store import ResumePoint
from volcast.bar import Bar
from volcast.keys import Feed
from volcast.settings import settings_from_mapping

SEC = 1_000
HOLD_MS = 10
FIRST_ID = 7_000


def _link_and_runner(symbols: list[str], start: int) -> tuple[ExchangeLink, dict[str, FeedRunner], list[Bar]]:
    """A link streaming ``symbols`` from the bar opening at ``start`` (its first to close)."""
    settings = settings_from_mapping(
        {
            "exchanges": [{
                "id": "binance", "symbols": symbols, "options": {"fetchMarkets": {"types": ["spot"]}},
                "urls": {"api": {"public": "http://127.0.0.1:9/api/v3", "ws": {"spot": "ws://127.0.0.1:9/stream/ws"}}},
            }],
            "bars": {"interval": "1s", "grace": "200ms"},
            "streamer": {"read_hold": f"{HOLD_MS}ms"},
        },
        env={},
    )
    link = ExchangeLink(create_exchange(settings.exchanges[0], env={}), settings.exchanges[0],
                        read_hold_ms=settings.streamer.read_hold)
    bars: list[Bar] = []
    runners = {}
    for symbol in symbols:
        resume = ResumePoint(start_ms=start, last_close=Decimal(10), last_trade_id=FIRST_ID - 1)
        runner = FeedRunner(Feed("binance", symbol, SEC), link, settings, lambda _f, bar: bars.append(bar), resume)
        runner._live = True
        link.runners[symbol] = runner
        runners[symbol] = runner
    return link, runners, bars


def _connection(symbols: list[str]) -> Any:
    """A websocket client as ccxt holds it: its subscriptions name the symbols it carries."""
    return SimpleNamespace(subscriptions={f"trade::{s}": True for s in symbols}, futures={})


def _at(runner: FeedRunner, exchange_ms: int) -> None:
    """Set the feed's clock offset so that the exchange's clock reads ``exchange_ms`` now."""
    runner._offset_ms = exchange_ms - now_ms()


def _trade(trade_id: int, timestamp_ms: int) -> dict[str, Any]:
    """A trade as ccxt's ``watch_trades`` parses a Binance frame."""
    return {"id": str(trade_id), "timestamp": timestamp_ms, "side": "buy", "price": 10.0, "amount": 1.0,
            "info": {"t": trade_id, "p": "10", "q": "1", "T": timestamp_ms}}


def test_a_bar_far_from_its_end_lets_the_socket_rest_one_near_it_does_not() -> None:
    start = now_ms() // SEC * SEC + 5 * SEC
    link, runners, _bars = _link_and_runner(["BTC/USDT"], start)
    runner = runners["BTC/USDT"]
    client = _connection(["BTC/USDT"])
    _at(runner, start + 100)
    runner._on_raw(_trade(FIRST_ID, start + 100))
    end = runner.aggregator.next_end_ms
    assert end == start + SEC
    assert link._may_hold(client)
    _at(runner, end - HOLD_MS - HOLD_MARGIN_MS - 50)
    assert link._may_hold(client)
    _at(runner, end - HOLD_MS - HOLD_MARGIN_MS + 5)
    assert not link._may_hold(client)
    _at(runner, end + 300)  # ended, not closed yet (no later trade, no pong): still read at once
    assert not link._may_hold(client)


def test_its_closing_trade_lets_it_rest_again() -> None:
    start = now_ms() // SEC * SEC + 5 * SEC
    link, runners, bars = _link_and_runner(["BTC/USDT"], start)
    runner = runners["BTC/USDT"]
    client = _connection(["BTC/USDT"])
    _at(runner, start + 100)
    runner._on_raw(_trade(FIRST_ID, start + 100))
    _at(runner, start + SEC + 20)
    runner._on_raw(_trade(FIRST_ID + 1, start + SEC + 10))  # the next trade proves the bar whole
    assert [b.open_time_ms for b in bars][-1:] == [start]
    assert link._may_hold(client)


def test_one_feed_near_its_close_keeps_its_whole_connection_reading() -> None:
    start = now_ms() // SEC * SEC + 5 * SEC
    link, runners, _bars = _link_and_runner(["BTC/USDT", "ETH/USDT"], start)
    for i, runner in enumerate(runners.values()):
        _at(runner, start + 100)
        runner._on_raw(_trade(FIRST_ID + i * 100, start + 100))
    client = _connection(["BTC/USDT", "ETH/USDT"])
    assert link._may_hold(client)
    _at(runners["ETH/USDT"], start + SEC - 20)
    _at(runners["BTC/USDT"], start + SEC - 20)
    assert not link._may_hold(client)
    other, _, _ = _link_and_runner(["BTC/USDT", "ETH/USDT"], start)
    other.runners["ETH/USDT"].aggregator.next_open_ms = start + 10 * SEC  # only BTC's bar ends soon
    for runner in other.runners.values():
        _at(runner, start + SEC - 20)
    assert not other._may_hold(client)
    other.runners["BTC/USDT"].aggregator.next_open_ms = start + 10 * SEC
    assert other._may_hold(client)
    assert link._may_hold(_connection(["SOL/USDT"]))  # a symbol this link does not stream


async def test_the_setting_reaches_every_connection_zero_installs_no_hold() -> None:
    for setting, seconds in ((0, None), ("25ms", 0.025)):
        settings = settings_from_mapping({"exchanges": [{"id": "binance", "symbols": ["BTC/USDT"]}],
                                          "streamer": {"read_hold": setting}}, env={})
        link = ExchangeLink(create_exchange(settings.exchanges[0], env={}), settings.exchanges[0],
                            read_hold_ms=settings.streamer.read_hold)
        try:
            hold = link.exchange.client("ws://127.0.0.1:9/stream/ws")._volcast_hold
            assert (None if hold is None else hold.seconds) == seconds
        finally:
            await link.exchange.close()
