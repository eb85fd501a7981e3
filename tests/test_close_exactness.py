"""Closing early is never closing short: a feed's real closing code (FeedRunner, fed the way ccxt
feeds it) given trades reordered within the grace, sent twice, or lost on the websocket (fetched
later, as REST does), and pongs, must give exactly the bars of ``volcast bars`` over the same
trades, and never see a trade for a bar it has closed (``late``). Delivered later than the grace
(a proof that was wrong), trades amend their bars, and the final bars (each bar's newest
revision) are exactly the offline ones. Pure: no network; the connection is a stand-in that only
says when a pong came."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from stream_harness import same_bars

from streamer.close_proof import CloseProof
from streamer.exchange_link import ExchangeLink
from streamer.feed import FeedRunner
from streamer.liveness import ConnectionProbe, now_ms
from streamer.offline import aggregate_trades
from streamer.source import create_exchange
from streamer.store import ResumePoint
from volcast.bar import Bar, Trade
from volcast.keys import Feed
from volcast.settings import settings_from_mapping

SEC = 1_000
GRACE = 200
FIRST_ID = 5_000


def _settings(interval: str = "1s") -> Any:
    return settings_from_mapping(
        {
            "exchanges": [{
                "id": "binance", "symbols": ["BTC/USDT"], "options": {"fetchMarkets": {"types": ["spot"]}},
                "urls": {"api": {"public": "http://127.0.0.1:9/api/v3", "ws": {"spot": "ws://127.0.0.1:9/stream/ws"}}},
            }],
            "bars": {"interval": interval, "grace": f"{GRACE}ms"},
        },
        env={},
    )


def _trade(trade_id: int, timestamp_ms: int) -> Trade:
    return Trade(trade_id=trade_id, timestamp_ms=timestamp_ms, price=Decimal(10), amount=Decimal(1), side="buy")


def _raw(trade: Trade) -> dict[str, Any]:
    """The trade as ccxt's ``watch_trades`` parses a Binance frame."""
    return {
        "id": str(trade.trade_id), "timestamp": trade.timestamp_ms, "side": trade.side,
        "price": float(trade.price), "amount": float(trade.amount),
        "info": {"t": trade.trade_id, "p": str(trade.price), "q": str(trade.amount), "T": trade.timestamp_ms},
    }


@dataclass(frozen=True)
class _Event:
    at_ms: int
    order: int  # ties: trades before pongs at the same moment
    kind: str  # "ws", "pong", "fill"
    index: int = 0


class _Harness:
    """One FeedRunner, live on a stand-in connection whose lower-bound clock equals ours."""

    def __init__(self, t0: int, *, amend: bool = False) -> None:
        settings = _settings()
        self.link = ExchangeLink(create_exchange(settings.exchanges[0], env={}), settings.exchanges[0])
        self.bars: list[Bar] = []
        self.revisions = 0
        resume = ResumePoint(start_ms=t0, last_close=Decimal(10), last_trade_id=FIRST_ID - 1)
        self.runner = FeedRunner(Feed("binance", "BTC/USDT", SEC), self.link, settings,
                                 lambda _f, bar: self.bars.append(bar), resume,
                                 on_amend=self._revised if amend else None)
        self.runner._live = True  # the catch-up is over
        self.probe = ConnectionProbe(SimpleNamespace(connection=None, subscriptions={}))
        self.runner._probe, self.runner._confirmed_ms = self.probe, 0
        self.link.liveness.clock.low_ms = 0

    def pong(self, sent_ms: int) -> None:
        self.probe.proven_local_ms = max(self.probe.proven_local_ms, sent_ms)
        self.runner.try_close()

    def _revised(self, _feed: Feed, bar: Bar, rev: int) -> None:
        """As the store writes a revision: in place of the bar of the same open time."""
        [i] = [i for i, b in enumerate(self.bars) if b.open_time_ms == bar.open_time_ms]
        self.bars[i] = bar
        self.revisions += 1


@st.composite
def tapes(draw: st.DrawFn) -> tuple[int, list[Trade]]:
    """Consecutive ids, monotone times over a few bars, some bars empty, trades on the boundaries."""
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % SEC
    offsets = sorted(draw(st.lists(st.one_of(st.integers(0, 6 * SEC), st.sampled_from([SEC, 2 * SEC, 3 * SEC - 1])),
                                   min_size=1, max_size=40)))
    amounts = draw(st.lists(st.sampled_from(["0.1", "1", "2.5", "0.003"]), min_size=len(offsets),
                            max_size=len(offsets)))
    trades = [
        Trade(trade_id=FIRST_ID + i, timestamp_ms=t0 + off, price=Decimal(10 + i % 3), amount=Decimal(a),
              side="buy" if i % 2 else "sell")
        for i, (off, a) in enumerate(zip(offsets, amounts, strict=True))
    ]
    return t0, trades


@settings(max_examples=200, deadline=None)
@given(tapes(), st.data())
def test_bars_closed_on_proofs_equal_the_offline_bars(tape: tuple[int, list[Trade]], data: st.DataObject) -> None:
    t0, trades = tape
    # Each trade reaches the websocket up to the grace after its time (in any order within that),
    # some twice, some never (a lost frame: the hole it leaves is fetched over REST).
    dropped = set(data.draw(st.sets(st.integers(0, len(trades) - 1), max_size=len(trades) // 3)))
    events: list[_Event] = []
    for i, trade in enumerate(trades):
        copies = 0 if i in dropped else 1 + data.draw(st.integers(0, 1))
        for _ in range(copies):
            events.append(_Event(trade.timestamp_ms + data.draw(st.integers(0, GRACE)), 0, "ws", i))
    last = trades[-1].timestamp_ms
    for _ in range(data.draw(st.integers(0, 12))):  # pongs of pings sent at these moments
        events.append(_Event(t0 + data.draw(st.integers(0, last - t0 + 3 * SEC)), 1, "pong"))
    for _ in range(data.draw(st.integers(0, 6))):  # REST answers for the holes seen so far
        events.append(_Event(t0 + data.draw(st.integers(0, last - t0 + 3 * SEC)), 1, "fill"))
    events.sort(key=lambda e: (e.at_ms, e.order))

    harness = _Harness(t0)
    runner = harness.runner
    fetched: set[int] = set()

    def fetch(up_to_id: int) -> None:
        """REST fills the lost trades up to ``up_to_id``, oldest first, as Backfill.backfill_ids does."""
        for i in sorted(dropped - fetched):
            if trades[i].trade_id <= up_to_id:
                fetched.add(i)
                runner._take(trades[i], backfilled=True)
        runner.try_close()

    for event in events:
        if event.kind == "ws":
            runner._on_raw(_raw(trades[event.index]))
        elif event.kind == "fill" and runner._ahead:
            fetch(max(runner._ahead))
        elif event.kind == "pong":
            # A live connection loses no frame: a trade missing at a pong was lost with a dropped
            # connection, whose catch-up fetched it before any pong of the new one.
            fetch(max((t.trade_id for t in trades if t.timestamp_ms <= event.at_ms - GRACE), default=0))
            harness.pong(event.at_ms)
        assert runner.aggregator.late == 0, "a bar closed before a trade of its interval arrived"
    fetch(trades[-1].trade_id)
    harness.pong(last + 2 * SEC + GRACE)

    expected, _ = aggregate_trades(trades, SEC)
    same_bars(harness.bars, expected, statuses=False)
    assert runner.aggregator.late == 0
    assert runner.aggregator.trades == len(trades)
    counts = runner.close_stats.counts
    assert counts[CloseProof.TRADE] + counts[CloseProof.LIVENESS] == len(harness.bars)


@settings(max_examples=200, deadline=None)
@given(tapes(), st.data())
def test_trades_later_than_the_grace_amend_their_bars_which_end_exact(
        tape: tuple[int, list[Trade]], data: st.DataObject) -> None:
    """Each trade reaches the websocket up to an interval plus the grace after its time (in order:
    a stream lagging; an out-of-order one leaves a hole, which holds every proof), some twice;
    pongs at any moment. A trade that comes after its bar closed on a pong finds it among the
    last two closed bars: it is added, never counted ``late``, never twice, and the final bars
    equal the offline ones."""
    t0, trades = tape
    lag = 0
    events: list[_Event] = []
    for i, trade in enumerate(trades):
        lag = data.draw(st.integers(max(0, lag - (trade.timestamp_ms - trades[i - 1].timestamp_ms if i else 0)),
                                    GRACE + SEC))
        at = trade.timestamp_ms + lag  # not before the trade before it: the stream keeps its order
        for _ in range(1 + data.draw(st.integers(0, 1))):
            events.append(_Event(at, 0, "ws", i))
    last = trades[-1].timestamp_ms
    for _ in range(data.draw(st.integers(0, 12))):
        events.append(_Event(t0 + data.draw(st.integers(0, last - t0 + 3 * SEC)), 1, "pong"))
    events.sort(key=lambda e: (e.at_ms, e.order, e.index))
    harness = _Harness(t0, amend=True)
    runner = harness.runner
    for event in events:
        if event.kind == "ws":
            runner._on_raw(_raw(trades[event.index]))
        else:
            harness.pong(event.at_ms)
    harness.pong(last + 3 * SEC + GRACE)
    expected, _ = aggregate_trades(trades, SEC)
    same_bars(harness.bars, expected, statuses=False)
    assert runner.aggregator.late == 0
    assert runner.aggregator.trades == len(trades)
    assert runner.aggregator.revisions == harness.revisions >= (runner.aggregator.amended > 0)


def test_a_trade_past_the_end_closes_the_bar_at_once_and_a_hole_holds_it() -> None:
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % SEC
    trades = [_trade(FIRST_ID + i, t0 + ts) for i, ts in enumerate([10, 900, 1_000, 1_001])]
    harness = _Harness(t0)
    runner = harness.runner
    runner._on_raw(_raw(trades[0]))
    runner._on_raw(_raw(trades[2]))  # past the end, but id 5001 is missing: the bar waits
    assert harness.bars == []
    runner._on_raw(_raw(trades[1]))  # the hole fills: 5002 proves the first bar complete
    assert [b.trades for b in harness.bars] == [2]
    assert runner.close_stats.counts[CloseProof.TRADE] == 1
    runner._on_raw(_raw(trades[3]))
    harness.pong(t0 + 2 * SEC + GRACE - 1)  # not yet past the second bar's end plus grace
    assert len(harness.bars) == 1
    harness.pong(t0 + 2 * SEC + GRACE)
    assert [b.trades for b in harness.bars] == [2, 2]
    assert runner.close_stats.counts[CloseProof.LIVENESS] == 1


class _Socket:
    closed = False

    def __init__(self) -> None:
        self.pings: list[bytes] = []

    async def ping(self, payload: bytes) -> None:
        self.pings.append(payload)


async def test_a_pong_proves_its_ping_on_the_clock_bound_of_the_pings_sending() -> None:
    """A replay faster than real time raises the exchange clock's lower bound between a ping and
    its pong. The pong proves the ping's send time on the bound of that moment: the newer bound
    added to the older send time overstated the proof by the bound's rise, and closed bars before
    their trades came (test_stream_faults' stall test on the cluster: ETH/USDT's bars closed
    empty, then their trades came over REST as late, 3 runs of 6)."""
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % SEC
    harness = _Harness(t0)
    socket = _Socket()
    probe = ConnectionProbe(SimpleNamespace(connection=socket, subscriptions={}))
    harness.runner._probe = probe
    clock = harness.link.liveness.clock
    clock.low_ms = t0 - now_ms()  # the exchange's time now is t0, at least
    await probe.ping(clock.low_ms)
    clock.low_ms += 5 * SEC  # a reading made meanwhile: the replay's clock ran ahead of ours
    assert probe.on_pong(socket.pings[0])
    harness.runner.try_close()
    assert harness.bars == []  # the ping left at about t0: no bar after t0 has ended by then
    await probe.ping(clock.low_ms)  # sent on the new bound: its pong proves about t0 + 5 s
    assert probe.on_pong(socket.pings[1])
    harness.runner.try_close()
    assert len(harness.bars) >= 4 and all(b.trades == 0 for b in harness.bars)


def test_a_time_reversal_is_counted_and_ends_the_trade_proof() -> None:
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % SEC
    harness = _Harness(t0)
    runner = harness.runner
    runner._on_raw(_raw(_trade(FIRST_ID, t0 + 1_100)))
    runner._on_raw(_raw(_trade(FIRST_ID + 1, t0 + 2_500)))
    runner._on_raw(_raw(_trade(FIRST_ID + 2, t0 + 2_400)))  # older than 5001
    assert runner.health.time_reversals == 1
    closed = len(harness.bars)
    runner._on_raw(_raw(_trade(FIRST_ID + 3, t0 + 3_100)))
    assert len(harness.bars) == closed  # no longer on the next trade alone
    runner._on_raw(_raw(_trade(FIRST_ID + 4, t0 + 3_200)))  # grace past 3 s
    assert len(harness.bars) == closed + 1


def test_trades_rest_gave_first_and_the_websocket_delivered_too_leave_the_bar_complete() -> None:
    """The catch-up reads REST once the server has the subscription, so REST and the websocket
    overlap: a bar is ``backfilled`` only for a trade the websocket never delivered. (Before, any
    trade REST gave first made it so: test_three_symbols_equal_offline_bars failed under load.)"""
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % SEC
    overlap = [_trade(FIRST_ID + i, t0 + 100 * i) for i in range(4)]  # the first bar
    after = [_trade(FIRST_ID + 4 + i, t0 + SEC + 100 * i) for i in range(4)]  # the second bar
    harness = _Harness(t0)
    runner = harness.runner
    for trade in overlap + after:
        runner._take(trade, backfilled=True)  # the catch-up's page
    for trade in overlap:  # the websocket delivers the first bar's trades too
        runner._on_raw(_raw(trade))
    for trade in after[:2]:  # ... but only half of the second's: the rest came before it subscribed
        runner._on_raw(_raw(trade))
    harness.pong(t0 + 3 * SEC)
    assert [(b.trades, b.status.value) for b in harness.bars[:2]] == [(4, "complete"), (4, "backfilled")]
    assert runner.aggregator.duplicates == 0  # the websocket's copies are not duplicates the exchange sent


def test_a_bar_the_catch_up_completes_before_the_websocket_copies_come_is_backfilled() -> None:
    """Why ``backfilled`` depends on load (test_stream_restart, test_stream_replay): the catch-up
    reads REST after the server confirmed the subscription, so its page overlaps what the websocket
    will deliver. Where REST's page reaches past a bar's end, that bar closes on the trade proof at
    once; if the websocket's copies of its trades are still on their way (a loaded machine: the
    websocket lags REST), the bar holds trades only REST had given at its close, and says so. The
    copies that come later are neither duplicates nor late; the values are exact either way."""
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % SEC
    first = [_trade(FIRST_ID + i, t0 + 100 * i) for i in range(4)]
    second = [_trade(FIRST_ID + 4 + i, t0 + SEC + 100 * i) for i in range(4)]
    harness = _Harness(t0)
    runner = harness.runner
    for trade in first + second:
        runner._take(trade, backfilled=True)  # the catch-up's page
    runner.try_close()  # live again: 5004 (past the first bar's end, no hole before it) closes it
    assert [(b.trades, b.status.value) for b in harness.bars] == [(4, "backfilled")]
    for trade in first + second:  # the websocket's copies, after the close
        runner._on_raw(_raw(trade))
    runner._on_raw(_raw(_trade(FIRST_ID + 8, t0 + 2 * SEC)))
    assert [(b.trades, b.status.value) for b in harness.bars] == [(4, "backfilled"), (4, "complete")]
    assert runner.aggregator.duplicates == 0 and runner.aggregator.late == 0
    expected, _ = aggregate_trades(first + second, SEC)
    same_bars(harness.bars, expected, statuses=False)
