"""The grace of the closing proofs per exchange: a fixed ``exchanges[].grace``, or ``auto`` from
the delivery delay the exchange's trades showed, and what happens when a proof was wrong: a trade
for a bar already closed amends it (one of the last two closed) or is counted ``late`` (older, or
no writer of revisions), is logged, and raises ``auto`` for ten minutes. Pure: the feed's real
closing code (FeedRunner) on a stand-in connection, clocks given by the test."""

from __future__ import annotations

import logging
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from streamer.close_proof import CloseProof, Grace
from streamer.exchange_link import ExchangeLink, now_ms
from streamer.feed import FeedRunner
from streamer.liveness import ConnectionProbe
from streamer.source import create_exchange
from streamer.store import ResumePoint
from volcast.bar import Bar
from volcast.keys import Feed
from volcast.settings import ConfigError, settings_from_mapping
from volcast.status_render import DASH, _grace

SEC = 1_000
CEILING = 800  # bars.grace in these tests
FIRST_ID = 5_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % SEC


class _Clock:
    def __init__(self) -> None:
        self.s = 1_000.0

    def __call__(self) -> float:
        return self.s


_ABSENT = object()


def _settings(grace: Any = _ABSENT, *, interval: str = "1s") -> Any:
    exchange: dict[str, Any] = {
        "id": "binance", "symbols": ["BTC/USDT"], "options": {"fetchMarkets": {"types": ["spot"]}},
        "urls": {"api": {"public": "http://127.0.0.1:9/api/v3", "ws": {"spot": "ws://127.0.0.1:9/stream/ws"}}},
    }
    if grace is not _ABSENT:
        exchange["grace"] = grace
    return settings_from_mapping({"exchanges": [exchange], "bars": {"interval": interval, "grace": f"{CEILING}ms"}},
                                 env={})


def _measured(grace: Grace, clock: _Clock, delays: list[int], seconds: float = 61.0) -> None:
    """``delays`` spread over ``seconds`` of the test clock."""
    for delay in delays:
        clock.s += seconds / len(delays)
        grace.note_delivery(delay)


def test_grace_settings() -> None:
    assert _settings().exchanges[0].grace == "auto"  # the default
    assert _settings(None).exchanges[0].grace is None  # bars.grace
    assert _settings("auto").exchanges[0].grace == "auto"
    assert _settings("250ms").exchanges[0].grace == 250
    with pytest.raises(ConfigError, match=r"shorter than bars\.interval"):
        _settings("1s")
    with pytest.raises(ConfigError, match="grace"):
        _settings("soon")


def test_a_fixed_grace_is_bars_grace_or_the_exchanges() -> None:
    assert Grace(CEILING).ms == CEILING
    grace = Grace(CEILING, 250)
    grace.note_delivery(5_000)  # measured, but a fixed grace is what the user set
    assert grace.ms == 250
    grace.note_late()  # nothing to raise
    assert grace.fields() == {"grace_ms": 250, "grace_auto": 0, "grace_raised": 0}


def test_auto_is_3_2_of_the_largest_recent_delay_within_floor_and_bars_grace() -> None:
    clock = _Clock()
    grace = Grace(CEILING, "auto", rtt_ms=lambda: 4, clock=clock)
    assert grace.ms == CEILING  # nothing measured
    _measured(grace, clock, [20] * 150)
    assert grace.ms == CEILING  # 150 trades: too few to speak of the tail
    _measured(grace, clock, [20] * 60 + [66] + [30] * 60, seconds=10)
    assert grace.ms == 3 * (66 + 4) // 2
    assert grace.fields() == {"grace_ms": 105, "grace_auto": 1, "grace_raised": 0}
    grace.note_delivery(600)  # a slow one counts at once
    assert grace.ms == CEILING  # 3/2 x 604 is above bars.grace
    clock.s += 601  # ten minutes on, without trades: nothing measured in the window
    assert grace.ms == CEILING
    _measured(grace, clock, [10] * 100, seconds=5)
    assert grace.ms == 100  # 3/2 x 14, raised to the floor


def test_a_spike_is_forgotten_after_ten_minutes_not_before() -> None:
    clock = _Clock()
    grace = Grace(CEILING, "auto", clock=clock)
    _measured(grace, clock, [300] + [50] * 299)
    assert grace.ms == 450
    _measured(grace, clock, [50] * 600, seconds=500)
    assert grace.ms == 450  # 561 s after the spike
    _measured(grace, clock, [50] * 100, seconds=60)
    assert grace.ms == 100


class _Harness:
    """One FeedRunner, live on a stand-in connection whose lower-bound clock equals ours."""

    def __init__(self, grace_setting: Any, clock: _Clock, *, amend: bool = False) -> None:
        settings = _settings(grace_setting)
        self.link = ExchangeLink(create_exchange(settings.exchanges[0], env={}), settings.exchanges[0])
        self.link._grace = Grace(settings.bars.grace, settings.exchanges[0].grace, clock=clock)
        self.bars: list[Bar] = []
        self.revisions: list[tuple[Bar, int]] = []
        resume = ResumePoint(start_ms=T0, last_close=Decimal(10), last_trade_id=FIRST_ID - 1)
        self.runner = FeedRunner(Feed("binance", "BTC/USDT", SEC), self.link, settings,
                                 lambda _f, bar: self.bars.append(bar), resume,
                                 on_amend=(lambda _f, bar, rev: self.revisions.append((bar, rev))) if amend else None)
        self.runner._live = True
        self.probe = ConnectionProbe(SimpleNamespace(connection=None, subscriptions={}))
        self.runner._probe, self.runner._confirmed_ms = self.probe, 0
        self.link.liveness.clock.low_ms = 0

    def pong(self, sent_ms: int) -> None:
        self.probe.proven_local_ms = max(self.probe.proven_local_ms, sent_ms)
        self.runner.try_close()


def _deliver(runner: FeedRunner, trade_id: int, timestamp_ms: int, delay_ms: int) -> None:
    """A trade as ccxt's ``watch_trades`` parses a Binance frame, arriving ``delay_ms`` after its
    time on the exchange's clock (the clock the feed measures delays with is set so)."""
    runner._offset_ms = timestamp_ms + delay_ms - now_ms()
    runner._on_raw({"id": str(trade_id), "timestamp": timestamp_ms, "side": "buy", "price": 10.0, "amount": 1.0,
                    "info": {"t": trade_id, "p": "10", "q": "1", "T": timestamp_ms}})


def test_an_auto_grace_closes_on_the_pong_past_end_plus_it() -> None:
    clock = _Clock()
    harness = _Harness("auto", clock)
    grace = harness.link._grace
    assert grace is not None
    _measured(grace, clock, [80] * 300)
    runner = harness.runner
    _deliver(runner, FIRST_ID, T0 + 500, 10)
    assert grace.ms == 120
    harness.pong(T0 + SEC + 119)
    assert harness.bars == []  # 3/2 x 80 = 120 ms of grace: not yet
    harness.pong(T0 + SEC + 120)
    assert [b.trades for b in harness.bars] == [1]
    assert runner.close_stats.counts[CloseProof.LIVENESS] == 1
    runner.sync_health()
    assert (runner.health.grace_ms, runner.health.grace_auto) == (120, 1)


def test_a_trade_for_a_bar_closed_too_early_is_counted_logged_and_raises_auto(
        caplog: pytest.LogCaptureFixture) -> None:
    """Without a writer of revisions: the trade is never put into a later bar nor dropped unseen,
    and the exchange's auto grace is raised: factor 2 over a largest delay that includes it, for
    ten minutes; then 3/2 again."""
    clock = _Clock()
    harness = _Harness("auto", clock)
    grace = harness.link._grace
    assert grace is not None
    _measured(grace, clock, [80] * 300)  # grace 120 ms
    runner = harness.runner
    _deliver(runner, FIRST_ID, T0 + 500, 10)
    harness.pong(T0 + SEC + 120)
    assert [b.trades for b in harness.bars] == [1]
    with caplog.at_level(logging.WARNING, logger="streamer.feed"):
        _deliver(runner, FIRST_ID + 1, T0 + 990, 140)  # 130 ms after the bar's end: its bar has closed
    assert (runner.aggregator.late, runner.aggregator.amended) == (1, 0)
    assert [b.trades for b in harness.bars] == [1]  # not moved into the next bar
    assert "for a bar already closed" in caplog.text and "raised for 10 minutes" in caplog.text
    raised = grace.ms
    assert raised >= 2 * 140  # its delay as measured: 140 ms and the moments the test itself took
    runner.sync_health()
    assert (runner.health.late, runner.health.grace_ms, runner.health.grace_auto, runner.health.grace_raised) == (
        1, raised, 1, 1)
    _deliver(runner, FIRST_ID + 2, T0 + SEC + 300, 10)
    harness.pong(T0 + 2 * SEC + raised - 1)
    assert len(harness.bars) == 1  # the raised grace
    harness.pong(T0 + 2 * SEC + raised)
    assert [b.trades for b in harness.bars] == [1, 1]
    clock.s += 300
    _measured(grace, clock, [80] * 10, seconds=10)
    assert grace.ms == raised  # still raised, 310 s on
    clock.s += 290
    _measured(grace, clock, [80] * 10, seconds=10)
    assert (grace.ms, grace.raised) == (120, False)  # 610 s on: 3/2 again, and the 140 ms sample left the window


def test_a_late_trade_amends_its_bar_and_a_duplicate_does_not() -> None:
    """With a writer of revisions (the bar store): the late trade goes into its closed bar, which
    is handed out again as revision 1 with the trade's sums; a copy of an id already counted, in
    that bar or in the one before, is a duplicate and changes nothing."""
    clock = _Clock()
    harness = _Harness("120ms", clock, amend=True)
    runner = harness.runner
    _deliver(runner, FIRST_ID, T0 + 500, 10)
    harness.pong(T0 + SEC + 120)
    assert [b.trades for b in harness.bars] == [1]
    _deliver(runner, FIRST_ID + 1, T0 + 990, 250)  # delivered 240 ms after the bar's end
    assert (runner.aggregator.late, runner.aggregator.amended) == (0, 1)
    assert len(harness.bars) == 1  # the next bar is not touched
    [(bar, rev)] = harness.revisions
    assert (rev, bar.open_time_ms, bar.trades, bar.volume, bar.close, bar.last_trade_id) == (
        1, T0, 2, Decimal(2), Decimal(10), FIRST_ID + 1)
    assert bar.status.value == "complete"
    _deliver(runner, FIRST_ID + 1, T0 + 990, 300)  # the same trade again
    _deliver(runner, FIRST_ID, T0 + 500, 900)
    assert len(harness.revisions) == 1 and runner.aggregator.duplicates == 2
    runner.sync_health()
    assert (runner.health.late, runner.health.amended, runner.health.bars_amended) == (0, 1, 1)


def test_only_the_last_two_closed_bars_are_amended() -> None:
    """A trade of a bar three bars back is counted late and dropped: its bar's ids are forgotten,
    so it could be a duplicate; amending there could count a trade twice."""
    clock = _Clock()
    harness = _Harness("120ms", clock, amend=True)
    runner = harness.runner
    for n in range(4):
        _deliver(runner, FIRST_ID + n, T0 + n * SEC + 500, 10)
    harness.pong(T0 + 4 * SEC + 120)
    assert [b.trades for b in harness.bars] == [1, 1, 1, 1]
    _deliver(runner, FIRST_ID + 10, T0 + SEC + 700, 10)  # bar 1: three bars back from the open bar 4
    assert (runner.aggregator.late, runner.aggregator.amended, harness.revisions) == (1, 0, [])
    _deliver(runner, FIRST_ID + 11, T0 + 2 * SEC + 700, 10)  # bar 2: kept
    assert (runner.aggregator.late, runner.aggregator.amended) == (1, 1)
    assert [(b.open_time_ms, b.trades, rev) for b, rev in harness.revisions] == [(T0 + 2 * SEC, 2, 1)]


def test_one_grace_per_exchange() -> None:
    settings = _settings("auto")
    link = ExchangeLink(create_exchange(settings.exchanges[0], env={}), settings.exchanges[0])
    assert link.grace(CEILING) is link.grace(CEILING)


def test_status_shows_the_grace() -> None:
    assert _grace(0, 0) == DASH
    assert _grace(2000, 0) == "2000ms"
    assert _grace(140, 1) == "140ms auto"
    assert _grace(280, 1, 1) == "280ms auto raised"
