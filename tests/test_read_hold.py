"""When a busy connection's socket may rest between reads (ExchangeLink._may_hold): never when a
bar of a live feed of the exchange ends within the hold and its margin, nor while such a bar waits
to close, so that closing trades and pongs are read as soon as they come (a quiet feed's pong
proves no more than the busy flows' newest trade). Real FeedRunners on a stand-in connection (as
test_close_exactness); the link's clock is set by the test; no network."""

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
HORIZON_MS = 13 + HOLD_MARGIN_MS  # a rest ends on the hold's grid: up to 5/4 of it (12.5 ms)
FIRST_ID = 7_000
CONNECTION = SimpleNamespace(subscriptions={}, futures={})  # the rule is the exchange's, not one connection's


class Clock:
    """The link's clock (local ms), moved by the test; the feeds' offsets are 0."""

    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms

    def __call__(self) -> float:
        return self.at_ms


def _link(symbols: list[str], start: int) -> tuple[ExchangeLink, dict[str, FeedRunner], list[Bar], Clock]:
    """A link streaming ``symbols``, live, from the bar opening at ``start`` (its first to close)."""
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
    clock = Clock(start)
    link._clock_ms = clock
    bars: list[Bar] = []
    runners = {}
    for symbol in symbols:
        resume = ResumePoint(start_ms=start, last_close=Decimal(10), last_trade_id=FIRST_ID - 1)
        runner = FeedRunner(Feed("binance", symbol, SEC), link, settings, lambda _f, bar: bars.append(bar), resume)
        runner._live = True
        link.runners[symbol] = runner
        runners[symbol] = runner
    return link, runners, bars, clock


def _trade(trade_id: int, timestamp_ms: int) -> dict[str, Any]:
    """A trade as ccxt's ``watch_trades`` parses a Binance frame."""
    return {"id": str(trade_id), "timestamp": timestamp_ms, "side": "buy", "price": 10.0, "amount": 1.0,
            "info": {"t": trade_id, "p": "10", "q": "1", "T": timestamp_ms}}


def _asked_at(link: ExchangeLink, clock: Clock, at_ms: int) -> bool:
    """``_may_hold`` at ``at_ms``, its remembered answer forgotten (the test moves time both ways)."""
    clock.at_ms = at_ms
    link._hold_until_ms = link._hold_recheck_ms = float("-inf")
    return link._may_hold(CONNECTION)


def _start() -> int:
    return now_ms() // SEC * SEC - 10 * SEC  # in the past: its trades are not from the future


def test_far_from_the_end_it_may_rest_near_it_or_after_it_not() -> None:
    start = _start()
    link, _runners, _bars, clock = _link(["BTC/USDT"], start)
    end = start + SEC
    assert _asked_at(link, clock, start + 100)
    assert _asked_at(link, clock, end - HORIZON_MS - 1)
    assert not _asked_at(link, clock, end - HORIZON_MS + 1)
    assert not _asked_at(link, clock, end + 300)  # ended, not closed yet (no later trade, no pong)


def test_a_closed_bar_lets_it_rest_until_the_next_end() -> None:
    start = _start()
    link, runners, bars, clock = _link(["BTC/USDT"], start)
    runner = runners["BTC/USDT"]
    runner._on_raw(_trade(FIRST_ID, start + 100))
    assert not _asked_at(link, clock, start + SEC + 20)
    runner._on_raw(_trade(FIRST_ID + 1, start + SEC + 10))  # the next trade proves the bar whole
    assert [b.open_time_ms for b in bars] == [start]
    assert _asked_at(link, clock, start + SEC + 20)
    assert not _asked_at(link, clock, start + 2 * SEC - HORIZON_MS + 1)


def test_one_feed_waiting_to_close_keeps_every_connection_reading() -> None:
    """The quiet feed's bar waits for its pong, whose proof the busy flow caps: no rest anywhere."""
    start = _start()
    link, runners, _bars, clock = _link(["BTC/USDT", "XRP/ETH"], start)
    runners["BTC/USDT"]._on_raw(_trade(FIRST_ID, start + 100))
    runners["BTC/USDT"]._on_raw(_trade(FIRST_ID + 1, start + SEC + 10))  # BTC's bar closes
    assert not _asked_at(link, clock, start + SEC + 20)  # XRP/ETH's has not
    runners["XRP/ETH"]._live = False  # a feed reconnecting closes nothing on pongs: it is left out
    assert _asked_at(link, clock, start + SEC + 20)


def test_a_yes_is_remembered_a_no_looked_at_again_soon() -> None:
    start = _start()
    link, runners, _bars, clock = _link(["BTC/USDT"], start)
    assert _asked_at(link, clock, start + 100)
    runners["BTC/USDT"].aggregator.next_open_ms = start - 5 * SEC  # an older bar to close (a feed back live)
    clock.at_ms = start + 150
    assert link._may_hold(CONNECTION)  # remembered: at most 100 ms
    clock.at_ms = start + 201
    assert not link._may_hold(CONNECTION)
    runners["BTC/USDT"].aggregator.next_open_ms = start
    clock.at_ms = start + 204
    assert not link._may_hold(CONNECTION)  # the no stands for 5 ms
    clock.at_ms = start + 207
    assert link._may_hold(CONNECTION)


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
