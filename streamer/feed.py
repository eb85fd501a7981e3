"""One feed (an exchange's symbol): websocket trades and REST backfill into one bar aggregator.

Every trade ccxt parses reaches ``_on_raw`` through the hooked trade buffer (source.py), and every
Binance trade frame read without ccxt's parse (binance_frames.py) reaches ``_on_checked``, so a
burst loses nothing. A bar closes as soon as a proof says no trade of its interval can still
come (streamer/close_proof.py names them; docs/streamer.md draws the timeline):

- **trade**: where ids are consecutive and times monotone, the trade at ``frontier`` (every id up
  to it known) stamped at or after the bar's end closes it at once; without consecutive ids, a
  trade stamped ``grace`` past the end does.
- **liveness**: the connection answered a ping sent when the exchange's clock (a lower bound,
  liveness.py) had passed the bar's end plus ``grace``. Valid only for pings sent after the
  server confirmed the subscription, and capped at the start of a stalled trade flow.
- **rest**: after a stalled flow, a REST read made after the bar's end plus grace.

While a feed is connecting, backfilling, has a hole in its trade ids or a loss of unknown end,
nothing closes: its bars wait instead of closing short. The watchdog reconnects a connection that
answers no ping (or whose trade flow stopped for a watchdog), never one whose symbols are quiet;
a REST check that finds trades a busy symbol's stream did not send dials its connection again
(feed_flow.py).

Where ids are consecutive (``consecutive_trade_ids``), ``frontier`` is the id up to which every
trade is known; an id beyond ``frontier + 1`` opens a hole, filled by REST ``fromId`` pages (backfill.py). A
hole REST cannot fill (refused, or older than the exchange keeps) is marked on the aggregator,
whose overlapping bars close with status ``gap``. Elsewhere backfill asks ``since`` the newest
trade seen and the aggregator drops the overlap as duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import ccxt.pro

from streamer.aggregator import ADDED, BarAggregator, Outcome
from streamer.backfill import Backfill, History
from streamer.close_proof import CloseProof, CloseStats, DeliveryStats
from streamer.exchange_link import ExchangeLink, now_ms
from streamer.feed_errors import FeedStopped, NotTrading, WatchdogTimeout
from streamer.feed_flow import FeedFlow
from streamer.health import FeedHealth, FeedState
from streamer.liveness import ConnectionProbe
from streamer.receive_pump import pump_state
from streamer.source import (
    check_hook,
    drop_connection,
    install_hook,
    sends_queued,
    subscription_sent,
    trade_from_ccxt,
)
from streamer.store import ResumePoint
from streamer.tick_grid import TICK_S, sleep_to_tick
from streamer.trade_validation import MAX_AHEAD_MS, Refusal, RefusedTrade, ahead_of_clock, placed
from volcast.backoff import Backoff
from volcast.bar import Bar, Trade
from volcast.keys import Feed
from volcast.settings import Settings

log = logging.getLogger(__name__)

# A hole in the ids may be a reorder within one moment: wait this long before fetching it.
_HOLE_PATIENCE_S = 0.2
# A trade stamped past the exchange's clock (as last read) waits for a fresh reading, taken at
# most this often: a replay faster than real time runs ahead of any reading.
_CLOCK_READ_EVERY_S = 1.0
# A REST check of the bars after a stalled flow, at most this often per feed.
_REST_CHECK_EVERY_S = 1.0
# Refused trades logged one by one per feed; after that one line per this many.
_REFUSALS_LOGGED = 10
_REFUSALS_LOG_EVERY = 1000

# The proof tried on every trade (an Enum member read off its class costs a descriptor call).
_BY_TRADE = CloseProof.TRADE

# A trade as the feed places it: a usable one, or one refused whose id and time are known.
Placed = Trade | RefusedTrade


def describe_error(error: BaseException) -> str:
    """One line for a health hash and a log: the error's class and the start of its text."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 300 else text[:297] + "..."


def _subscription_id(client: Any, symbol: str) -> int | None:
    """The request id of ``symbol``'s subscription on ``client`` (ccxt keeps ``{"id": N}`` with it)."""
    for key, value in list(getattr(client, "subscriptions", {}).items()):
        if isinstance(key, str) and key.endswith("::" + symbol) and isinstance(value, dict):
            request_id = value.get("id")
            if isinstance(request_id, int):
                return request_id
    return None


class FeedRunner:
    """Runs one feed until cancelled: connect, backfill, stream, reconnect with backoff."""

    def __init__(
        self,
        feed: Feed,
        link: ExchangeLink,
        settings: Settings,
        on_bar: Callable[[Feed, Bar], None],
        resume: ResumePoint | None,
        on_amend: Callable[[Feed, Bar, int], None] | None = None,
    ) -> None:
        self.feed = feed
        self.link = link
        self.symbol = feed.symbol
        self.settings = settings
        self.consecutive = link.settings.consecutive_trade_ids
        self.health = FeedHealth()
        self._on_bar = on_bar
        self._on_amend = on_amend
        amend = None if on_amend is None else self._amended_bar
        bars = settings.bars
        self.resume = resume
        self.start_ms: int | None = None
        if resume is not None:
            self.start_ms = resume.start_ms
            self.aggregator = BarAggregator(
                bars.interval, bars.grace, self._closed, start_ms=self.start_ms, last_close=resume.last_close,
                on_amend=amend,
            )
            self.frontier: int | None = resume.last_trade_id if self.consecutive else None
        else:
            self.aggregator = BarAggregator(bars.interval, bars.grace, self._closed, on_amend=amend)
            self.frontier = None
        self.frontier_ms = resume.start_ms - 1 if resume else 0
        self._ahead: dict[int, int] = {}  # ids seen beyond frontier + 1 -> their timestamps
        self._hole_since: float | None = None
        # Highest ids taken from the websocket and from REST: a websocket trade between the two was
        # already backfilled (the overlap of a reconnect), not a duplicate the exchange sent.
        self._live_high = -1
        # The REST side: catch-up, holes, history (backfill.py); it places its trades through this runner.
        self.backfill = Backfill(self, tick_s=TICK_S)
        # Trades from this time on may be lost and no trade after the loss has come yet: the gap
        # ends at the next trade, and until then the feed's bars wait (see _give_up).
        self._gap_from: int | None = None
        self._first_live_ms: int | None = None  # exchange time of this session's first websocket trade
        self._subscribed_at: float | None = None
        self._backfill_high = -1
        self._offset_ms = 0
        # The offset by which trades are judged "from the future" (ahead_of_clock): read again
        # whenever a trade runs ahead of it, unlike _offset_ms, whose lag the watermark relies on.
        self._check_offset_ms = 0
        self._clock_read_at = float("-inf")
        self._held: list[Placed] = []  # trades past the clock as last read, waiting for a new reading
        self._unplaced_ids: set[int] = set()  # ids refused live without a usable time, already counted
        self._live = False
        self._last_message = time.monotonic()
        self._hook = install_hook(link.exchange, feed.symbol, self._on_raw, self._on_checked)
        link.runners[feed.symbol] = self
        self._recheck_listing = False  # silent, or refused by the exchange: is the symbol still listed?
        self._task: asyncio.Task[None] | None = None
        self.on_error: Callable[[FeedRunner], None] | None = None
        """Called once when the feed stops for good (state ``error``)."""
        self._watchdog_s = settings.streamer.watchdog / 1000
        self._backoff = Backoff(settings.streamer.backoff_initial / 1000, settings.streamer.backoff_max / 1000)
        self._grace = link.grace(bars.grace)
        self.close_stats = CloseStats()
        self.delivery = DeliveryStats()
        self._closing = CloseProof.TRADE  # the proof of the bars being closed now (read by _closed)
        # Trade times never went back by id: a later trade proves the bars before it complete.
        self._monotone = True
        self._probe: ConnectionProbe | None = None  # the connection whose pongs prove this feed's bars
        self._confirmed_ms = 0  # local time the server had confirmed the subscription on it
        self._seen_probe_stalls = 0
        self._seen_link_stalls = 0
        # This symbol's own websocket trades: a stream that stops inside a connection shared with
        # busy neighbours shows only here (feed_flow.py).
        self._own = FeedFlow()
        self._seen_own_stalls = 0
        self._redialled_stall = 0  # the own stall after which the connection was dialled again
        # After a stalled trade flow: pongs prove trades only up to this time, until a REST read
        # or a trade with no hole before it shows that nothing was lost.
        self._unverified_from: int | None = None
        self._rest_proof_ms: int | None = None  # every trade up to this exchange time was read over REST
        self._rest_checked_at = float("-inf")
        self._listing_checked_at = time.monotonic()
        self._live_since_ms: int | None = None  # exchange time the feed first went live (delays from then)

    # -- trades in ------------------------------------------------------------------------------

    def _closed(self, bar: Bar) -> None:
        self.health.bars_closed += 1
        if bar.status.value == "gap":
            self.health.gap_bars += 1
        elif bar.status.value == "backfilled":
            self.health.backfilled_bars += 1
        end = bar.open_time_ms + self.aggregator.interval_ms
        live_since = self._live_since_ms
        delay = None if live_since is None or end <= live_since else max(0, now_ms() + self._figures_offset() - end)
        self.close_stats.record(self._closing, delay)
        self._on_bar(self.feed, bar)

    def _amended_bar(self, bar: Bar, rev: int) -> None:
        """A closed bar's revision after a late trade (aggregator.py): rewritten in Redis, its event sent again."""
        assert self._on_amend is not None
        self._on_amend(self.feed, bar, rev)

    def _on_raw(self, raw: dict[str, Any]) -> None:
        """A trade ccxt parsed (into the hooked buffer)."""
        self._on_checked(trade_from_ccxt(raw))

    def _on_checked(self, checked: Trade | Refusal) -> None:
        """A websocket trade, checked: from ``_on_raw``, or read off its frame without ccxt's
        parse (binance_frames.py)."""
        self._last_message = time.monotonic()
        item: Placed | None = placed(checked) if isinstance(checked, Refusal) else checked
        if item is None:
            assert isinstance(checked, Refusal)
            self._refused_unplaced(checked)
            return
        # _ahead_of_clock(item) is not None, written out (on every trade): stamped past MAX_AHEAD_MS
        # beyond the exchange's clock as last read (now_ms() written out too, as in _note_arrival).
        if self._held or item.timestamp_ms > int(time.time() * 1000) + self._check_offset_ms + MAX_AHEAD_MS:
            self._held.append(item)  # judged once the exchange's clock has been read again (ticker)
            return
        self._on_trade(item)

    def _on_trade(self, trade: Placed) -> None:
        """A websocket trade (usable or refused) of plausible time. (On every trade: the checks
        whose answer is almost always the same come first, and _may_close is written out.)"""
        tid = trade.trade_id
        if self._live_high < tid and self.consecutive and (
            tid <= self._backfill_high or (self.backfill.history is not None and self.backfill.in_history(tid))
        ):
            self._live_high = tid  # REST had it first (the overlap of a reconnect or of the history)
            self.aggregator.delivered_live(tid, trade.timestamp_ms)
            self._own.delivered(trade.timestamp_ms)  # the stream runs, if behind REST
            return
        if tid > self._live_high:
            self._live_high = tid
        if self._first_live_ms is None:
            self._first_live_ms = trade.timestamp_ms
        self._take(trade, backfilled=False)
        self._note_arrival(trade.timestamp_ms)
        if self._unverified_from is not None and self.consecutive and self.frontier == tid:
            # Delivered by the websocket with no hole before it: the stream runs again and every
            # trade up to this one is in.
            self._unverified_from = None
        if self._live and not self._ahead and self._gap_from is None and not self._held:
            if self._monotone and self.consecutive and self.frontier is not None:
                # _close_by_trades's case with consecutive ids and _close_until, written out
                frontier_ms, aggregator = self.frontier_ms, self.aggregator
                next_open = aggregator.next_open_ms
                if next_open is not None and frontier_ms >= next_open + aggregator.interval_ms:
                    self._closing = _BY_TRADE
                    aggregator.close_until(frontier_ms)
            else:
                self._close_by_trades()

    def _figures_offset(self) -> int:
        """Exchange clock minus ours for the delays shown in health (the exchange's best reading)."""
        mid = self.link.liveness.clock.mid_ms
        return self._offset_ms if mid is None else mid

    def _note_arrival(self, timestamp_ms: int) -> None:
        """A websocket trade's delivery delay, and its time as the newest of its flows."""
        liveness = self.link.liveness
        mid = liveness.clock.mid_ms  # _figures_offset, written out (on every trade)
        delay = int(time.time() * 1000) + (self._offset_ms if mid is None else mid) - timestamp_ms  # now_ms()
        self.delivery.record(delay)
        grace = self._grace
        hold = self.link.read_hold
        # Only an auto grace keeps the delays; not of a frame read after a rest (receive_pump.py):
        # its delay is partly our choice, and no rest is taken where a bar is about to close.
        if grace.auto and (hold is None or not hold.rested):
            grace.note_delivery(delay)
        if timestamp_ms > liveness.flow.newest_ms:
            liveness.flow.newest_ms = liveness.clock.newest_trade_ms = timestamp_ms
        probe = self._probe
        if probe is not None and timestamp_ms > probe.flow.newest_ms:
            probe.flow.newest_ms = timestamp_ms
        own = self._own  # own.delivered(timestamp_ms), written out (on every trade)
        own.trades += 1
        if timestamp_ms > own.newest_ms:
            own.newest_ms = timestamp_ms

    def _take(self, trade: Placed, *, backfilled: bool) -> None:
        if self.start_ms is not None and trade.timestamp_ms < self.start_ms:
            return  # already in a bar closed before this process started
        if self._gap_from is not None and self.backfill.history is None and trade.timestamp_ms >= self._gap_from:
            self.aggregator.mark_gap(self._gap_from, trade.timestamp_ms)  # the loss ends before this trade
            self._gap_from = None
        if self.consecutive:
            if backfilled and (
                (self.frontier is not None and trade.trade_id <= self.frontier) or trade.trade_id in self._ahead
            ):
                return  # the websocket already delivered it
            self._track_id(trade)
        if not backfilled and isinstance(trade, Trade):  # _add's first case, written out: every live trade
            outcome = self.aggregator.add(trade, backfilled=False)
        else:
            outcome = self._add(trade, backfilled)
        if outcome is not ADDED:  # on almost every trade: one test
            if outcome is Outcome.DUPLICATE:
                return
            self._late(trade, backfilled, outcome)  # LATE or AMENDED
            if outcome is Outcome.LATE:
                return
        if backfilled:
            if trade.trade_id > self._backfill_high:
                self._backfill_high = trade.trade_id
            self._own.note_rest_trade(trade.timestamp_ms)
        health = self.health
        if trade.timestamp_ms > health.last_trade_ms:
            health.last_trade_ms = trade.timestamp_ms

    def _late(self, trade: Placed, backfilled: bool, outcome: Outcome) -> None:
        """A trade for a bar already closed: a proof was wrong, most likely a grace below the
        exchange's delivery delay. AMENDED: its bar (one of the last closed) took it and is
        rewritten as a revision; LATE: its bar is older, the trade is counted and its bar lacks it.
        Either way an ``auto`` grace is raised (close_proof.py ``Grace.note_late``)."""
        grace = self._grace
        delay = now_ms() + self._figures_offset() - trade.timestamp_ms
        was_raised = grace.raised
        grace.note_late()
        raised = grace.raised and not was_raised
        aggregator = self.aggregator
        count = aggregator.late + aggregator.amended
        if count <= 10 or count % 1000 == 0 or raised:
            amended = outcome is Outcome.AMENDED
            log.warning(
                "%s: trade %s of %d ms (%s, arrived %d ms after its time) is for a bar already closed; %s%s",
                self.symbol, trade.trade_id, trade.timestamp_ms, "REST" if backfilled else "websocket", delay,
                f"added to it, the bar is rewritten as a revision (amended {aggregator.amended})" if amended else
                f"counted in late ({aggregator.late}), its bar is no longer kept for amending and lacks it",
                f"; grace auto of {self.link.exchange.id} raised for 10 minutes (factor 2)" if raised else
                "" if grace.auto else "; if this repeats, raise the grace above the delivery delay in health")

    def _add(self, trade: Placed, backfilled: bool) -> Outcome:
        """Into the aggregator: a trade into its bar's sums, a refused one as its bar's mark."""
        if isinstance(trade, Trade):
            outcome = self.aggregator.add(trade, backfilled=backfilled)
            if backfilled and outcome is Outcome.ADDED:
                self.health.backfilled_trades += 1
            return outcome
        outcome = self.aggregator.refuse(trade.trade_id, trade.timestamp_ms)
        if outcome is not Outcome.DUPLICATE:
            if trade.trade_id in self._unplaced_ids:  # counted when the websocket sent it without a time
                self._unplaced_ids.discard(trade.trade_id)
            else:
                self._count_refused(trade.refusal)
        return outcome

    def _count_refused(self, refusal: Refusal) -> None:
        health = self.health
        health.count_malformed(refusal.reason)
        if health.malformed <= _REFUSALS_LOGGED or health.malformed % _REFUSALS_LOG_EVERY == 0:
            log.warning(
                "%s: trade %s refused (%s); %d refused so far%s",
                self.symbol,
                refusal.trade_id if refusal.trade_id is not None else "without id",
                refusal,
                health.malformed,
                "" if health.malformed < _REFUSALS_LOGGED else f" (logged every {_REFUSALS_LOG_EVERY} from now on)",
            )

    def _refused_unplaced(self, refusal: Refusal) -> None:
        """A websocket record refused without a usable id and time: it can mark no bar by itself.

        Where ids are consecutive, a real trade behind it shows as a hole in the ids: REST then
        returns the exchange's record, which places it (or, refused again, marks its neighbours).
        Elsewhere a record with a time marks its bar; one without may lie anywhere from the last
        trade on, so the bars from there wait and close as gaps up to the next trade.
        """
        self._count_refused(refusal)
        if self.consecutive:
            if refusal.trade_id is not None and (self.frontier is None or refusal.trade_id > self.frontier):
                if len(self._unplaced_ids) > 10_000:  # ids REST never returned: do not grow for ever
                    self._unplaced_ids.clear()
                self._unplaced_ids.add(refusal.trade_id)
            return
        if refusal.timestamp_ms is not None:
            if ahead_of_clock(0, refusal.timestamp_ms, self._checked_now_ms()) is None:
                self.aggregator.refuse(None, refusal.timestamp_ms)
        elif self._gap_from is None:
            self._gap_from = self.health.last_trade_ms or (self.start_ms or 0)

    # -- trades stamped past the exchange's clock -------------------------------------------------

    def _checked_now_ms(self) -> int:
        return now_ms() + self._check_offset_ms

    def _ahead_of_clock(self, trade: Placed) -> Refusal | None:
        return ahead_of_clock(trade.trade_id, trade.timestamp_ms, self._checked_now_ms())

    async def _read_clock(self) -> None:
        """Read the exchange's clock again for ``ahead_of_clock`` (at most every _CLOCK_READ_EVERY_S)."""
        if time.monotonic() - self._clock_read_at < _CLOCK_READ_EVERY_S:
            return
        self._clock_read_at = time.monotonic()
        self._check_offset_ms = await self.link.clock_offset_ms()

    async def _release_held(self) -> None:
        """Judge the held trades against a fresh reading of the exchange's clock, in arrival order."""
        try:
            await self._read_clock()
        except ccxt.OperationFailed as exc:  # a network error: hold on, read again next tick
            log.debug("%s: exchange clock unreadable (%r)", self.symbol, exc)
            return
        except ccxt.BaseError as exc:  # the exchange has no clock to ask: judge by the last reading
            log.debug("%s: exchange clock unavailable (%r)", self.symbol, exc)
        held, self._held = self._held, []
        for trade in held:
            refusal = self._ahead_of_clock(trade)
            if refusal is None:
                self._on_trade(trade)
            else:
                self._refused_unplaced(refusal)

    def _track_id(self, trade: Placed) -> None:
        tid = trade.trade_id
        frontier = self.frontier
        if frontier is not None and tid == frontier + 1:  # the next id: on almost every trade
            if not self._ahead and trade.timestamp_ms >= self.frontier_ms:
                # _advance_frontier with nothing ahead to pass over and no time reversal, written out
                self.frontier, self.frontier_ms = tid, trade.timestamp_ms
                self._hole_since = None
            else:
                self._advance_frontier(tid, trade.timestamp_ms)
            return
        if frontier is None and self.backfill.history is None:
            if self._gap_from is not None:  # a loss given up: known trades start again here
                self._set_frontier(tid, trade.timestamp_ms)
                return
            # No id known yet (the catch-up's REST had no trade): the websocket's first trade is the
            # start only if it missed none before it, which a stalled stream can break. One REST
            # read back to where REST left off decides (Backfill.fill_holes), as for a hole.
            known = self._rest_proof_ms - self._grace.ms if self._rest_proof_ms is not None else None
            self.backfill.history = History(known or self.backfill.first_since or self.start_ms or trade.timestamp_ms)
        if (frontier is None or tid > frontier + 1) and tid not in self._ahead:
            # Beyond a hole; or, while the history is fetched, anywhere: where the known trades
            # start is decided by that backfill, not by the first live trade.
            self._ahead[tid] = trade.timestamp_ms
            if self._hole_since is None:
                self._hole_since = time.monotonic()

    def _set_frontier(self, tid: int, timestamp_ms: int) -> None:
        """Every trade up to ``tid`` is known (a jump: ids seen ahead up to it are known too)."""
        ahead = self._ahead
        for known in [i for i in ahead if i <= tid]:
            del ahead[known]
        self._advance_frontier(tid, timestamp_ms)

    def _advance_frontier(self, tid: int, timestamp_ms: int) -> None:
        """The frontier moves to ``tid`` (the next id), then over the ids seen ahead that follow it.

        Per trade: no scan of ``_ahead``, whose ids are all beyond the old frontier + 1.
        """
        ahead = self._ahead
        if self.frontier is not None and tid == self.frontier + 1 and timestamp_ms < self.frontier_ms:
            self._time_reversal(tid, timestamp_ms, self.frontier_ms)
        while tid + 1 in ahead:
            tid += 1
            following = ahead.pop(tid)
            if following < timestamp_ms:
                self._time_reversal(tid, following, timestamp_ms)
            timestamp_ms = following
        self.frontier, self.frontier_ms = tid, timestamp_ms
        if not ahead:
            self._hole_since = None

    def _time_reversal(self, tid: int, timestamp_ms: int, before_ms: int) -> None:
        """Trade ``tid`` is older than the one before it: the trade proof assumes they never are."""
        self.health.time_reversals += 1
        if self._monotone:
            self._monotone = False
            log.warning(
                "%s: trade %d is stamped %d ms before the trade before it; bars close no longer on the next "
                "trade alone but on a trade grace past their end (and on pongs)",
                self.symbol, tid, before_ms - timestamp_ms,
            )

    def _give_up(self, start_ms: int, end_ms: int | None) -> None:
        """Trades from ``start_ms`` up to ``end_ms`` cannot be had: their bars close as gaps.

        ``end_ms`` is the time of the first trade the websocket delivered after the loss. Without
        one the gap stays open and the bars wait, until a trade comes or ``_close_open_gap`` reads
        the exchange's clock.
        """
        self.health.gaps += 1
        if self._gap_from is not None:  # an earlier loss still open: one gap from its start
            start_ms = min(start_ms, self._gap_from)
        if end_ms is None:
            self._gap_from = start_ms
            log.warning("%s: trades from %d on lost (backfill impossible), until a trade comes", self.symbol, start_ms)
        else:
            self._gap_from = None
            self.aggregator.mark_gap(start_ms, end_ms + 1)
            log.warning("%s: trades from %d to %d lost (backfill impossible)", self.symbol, start_ms, end_ms)

    async def _close_open_gap(self) -> None:
        """End an open gap at the exchange's clock, read once this feed's subscription has gone out.

        Not the clock estimate of the watermark: after a reconnect the new subscription may not be
        effective yet, and against a replay faster than real time the estimate lags; either would
        end the gap before trades that were never received. Called by the ticker until it works
        (a trade that comes first closes the gap itself, in ``_take``).
        """
        if not subscription_sent(self.link.exchange, self.symbol):
            self._subscribed_at = None
            return
        if self._subscribed_at is None or time.monotonic() - self._subscribed_at < TICK_S:
            self._subscribed_at = self._subscribed_at or time.monotonic()
            return  # seen sent on two ticks: ccxt's send task had time to queue and send
        try:
            server_ms = await self.link.exchange.fetch_time()
        except ccxt.BaseError as exc:
            log.warning("%s: exchange time unknown (%r); the gap stays open", self.symbol, exc)
            return
        if self._gap_from is not None and server_ms is not None:
            end = min(int(server_ms), min(self._ahead.values(), default=int(server_ms)))
            self.aggregator.mark_gap(self._gap_from, end + 1)
            log.warning("%s: the gap from %d ends at %d (exchange time)", self.symbol, self._gap_from, end)
            self._gap_from = None

    def _give_up_hole(self, end_ms: int | None) -> None:
        """The hole after the frontier cannot be filled (consecutive ids)."""
        self._give_up(self.frontier_ms if self.frontier is not None else self.health.last_trade_ms, end_ms)
        if self._ahead:
            next_id = min(self._ahead)
            self._set_frontier(next_id, self._ahead.pop(next_id))
        else:
            self.frontier = None
            self._hole_since = None

    def _may_close(self) -> bool:
        """Bars may close: live, no hole in the ids, no loss whose end is still unknown, no trade
        waiting for the exchange's clock."""
        return self._live and not self._ahead and self._gap_from is None and not self._held

    # -- closing --------------------------------------------------------------------------------

    def exchange_now_ms(self) -> int:
        return now_ms() + self._offset_ms

    def pending_end_local_ms(self) -> int | None:
        """When, on our clock, the oldest bar this live feed has yet to close ends (None: not live,
        or no bar): until then and after, its close waits on frames read as they come."""
        end = self.aggregator.next_end_ms
        return None if end is None or not self._live else end - self._offset_ms

    def tick(self) -> None:
        """Close what the proofs allow; called often by the feed's own ticker. (The counters are
        copied into health only when it is written: ``sync_health``.)"""
        self.try_close()

    def try_close(self) -> None:
        """Close every bar a proof allows now, and tell the connection which moment to prove next."""
        if not self._may_close():
            self._want(None)
            return
        self._close_by_trades()
        grace = self._grace.ms
        proven = self._capped_liveness_ms()
        if proven is not None:
            self._close_until(proven - grace, CloseProof.LIVENESS)
        if self._rest_proof_ms is not None:
            self._close_until(self._rest_proof_ms - grace, CloseProof.REST)
        end = self.aggregator.next_end_ms
        self._want(None if end is None else end + grace)

    def _close_by_trades(self) -> None:
        if self.consecutive and self._monotone:
            if self.frontier is not None:
                self._close_until(self.frontier_ms, _BY_TRADE)
        elif self.health.last_trade_ms:
            self._close_until(self.health.last_trade_ms - self._grace.ms, _BY_TRADE)

    def _close_until(self, end_ms: int, proof: CloseProof) -> None:
        aggregator = self.aggregator
        next_open = aggregator.next_open_ms  # next_end_ms, written out (on every trade)
        if next_open is not None and end_ms >= next_open + aggregator.interval_ms:
            self._closing = proof
            aggregator.close_until(end_ms)

    def _liveness_ms(self) -> int | None:
        """Exchange time up to which this feed's connection is proven alive: the send time of the
        newest ping answered (after the server confirmed the subscription) on the lower-bound clock."""
        probe = self._probe
        low = self.link.liveness.clock.low_ms
        if probe is None or low is None or probe.proven_local_ms <= self._confirmed_ms:
            return None
        return probe.proven_local_ms + probe.offset_ms(low)

    def _capped_liveness_ms(self) -> int | None:
        """What the pongs prove, held back by the trade flows this feed's trades travel in: no more
        than the newest trade of a busy flow (its connection's, its exchange's), and no more than
        the start of a stall not checked since (liveness.py)."""
        proven = self._liveness_ms()
        probe = self._probe
        if proven is None or probe is None:
            return None
        self._note_stalls()
        for cap in (probe.flow.cap_ms(), self.link.liveness.flow.cap_ms(), self._unverified_from):
            if cap is not None and cap < proven:
                proven = cap
        return proven

    def _want(self, need_ms: int | None) -> None:
        """Ask this feed's connection to prove ``need_ms`` (None: nothing wanted)."""
        probe = self._probe
        if probe is None:
            return
        key = id(self)
        if need_ms is None:
            probe.needs.pop(key, None)
        elif probe.needs.get(key) != need_ms:
            probe.needs[key] = need_ms
            self.link.liveness.wake()

    def _flows_suspect(self) -> bool:
        now = time.monotonic()
        probe = self._probe
        return ((probe is not None and probe.flow.suspect(now)) | self.link.liveness.flow.suspect(now)
                | self._own.look(now, self._last_message))

    def _note_stalls(self) -> None:
        """Stalls of this feed's connection, exchange or own stream not seen yet cap what pongs
        prove. (A stall of a connection or exchange under way is registered by the prober, which
        looks at every flow at least every 50 ms; the feed's own, here and on every tick.)"""
        probe = self._probe
        if probe is None:
            return
        own = self._own
        own.look(time.monotonic(), self._last_message)
        flows = self.link.liveness.flow
        for flow, seen in ((probe.flow, self._seen_probe_stalls), (flows, self._seen_link_stalls),
                           (own, self._seen_own_stalls)):
            if flow.episodes > seen:
                start = flow.first_since(seen)
                self.health.stalls += flow.episodes - seen
                if start is not None:
                    self._cap_pongs(start)
        self._seen_probe_stalls, self._seen_link_stalls = probe.flow.episodes, flows.episodes
        self._seen_own_stalls = own.episodes

    def _rest_check_due(self) -> bool:
        """A pong would close the next bar but a stall caps it: time for a REST read of the trades."""
        if self._unverified_from is None:
            return False
        end = self.aggregator.next_end_ms
        proven = self._liveness_ms()
        if end is None or proven is None or not self._may_close():
            return False
        due = end + self._grace.ms
        capped = self._capped_liveness_ms()
        if proven < due or (capped is not None and capped >= due):
            return False
        if self._rest_proof_ms is not None and self._rest_proof_ms >= due:
            return False
        return time.monotonic() - self._rest_checked_at >= _REST_CHECK_EVERY_S

    async def _check_by_rest(self) -> None:
        """Read the trades since the newest known one over REST: nothing missing up to the read's time.

        Made after the flow came back, it ends the stall for this feed (pongs prove again); made
        while the flow is still stopped (an exchange gone quiet, or one that stalls for good), it
        closes the bars up to its own time only.
        """
        at = self.link.liveness.clock.now_low()
        if at is None:
            return
        calm = not self._flows_suspect()
        self._rest_checked_at = time.monotonic()
        self.health.rest_checks += 1
        if self.consecutive and self.frontier is not None:
            await self.backfill.backfill_ids(hole_only=False)
        else:
            await self.backfill.backfill_since(self.health.last_trade_ms or at)
        self._rest_proof_ms = at if self._rest_proof_ms is None else max(self._rest_proof_ms, at)
        if calm and not self._flows_suspect():
            self._unverified_from = None
        self.try_close()
        await self._redial_a_stopped_stream(at)

    async def _redial_a_stopped_stream(self, at_ms: int) -> None:
        """This symbol is silent past its stall limit, and REST has a trade its connection owed and
        should have sent (stamped a grace before ``at_ms``, the read's time): the exchange stopped
        sending it on this connection. Dial again (once a stall: a stream that stays away on the
        new connection too leaves the bars to REST checks, which keep them exact)."""
        own = self._own
        if own.episodes == self._redialled_stall or not own.look(time.monotonic(), self._last_message):
            return
        if not own.unsent_by(at_ms - self._grace.ms):
            return
        self._redialled_stall = own.episodes
        error = WatchdogTimeout(f"{self.symbol}: its stream stopped inside a live connection (REST has trades "
                                f"from {own.unsent_ms} ms on that it did not send)")
        await drop_connection(self.link.exchange, self.symbol, error)
        raise error

    def _sync_counters(self) -> None:
        health, aggregator = self.health, self.aggregator
        health.trades, health.duplicates, health.late = aggregator.trades, aggregator.duplicates, aggregator.late
        health.amended, health.bars_amended = aggregator.amended, aggregator.revisions
        health.last_message_ms = now_ms() - int((time.monotonic() - self._last_message) * 1000)
        if health.last_trade_ms:
            health.lag_ms = max(0, self.exchange_now_ms() - health.last_trade_ms)

    def sync_health(self) -> None:
        """Copy the counters and figures into the health record (kept off the per-trade path)."""
        self._sync_counters()
        health = self.health
        for name, value in (self.close_stats.fields() | self.delivery.fields() | self._grace.fields()).items():
            setattr(health, name, value)
        probe = self._probe
        if probe is not None:
            health.pings, health.pongs = probe.pings, probe.pongs

    def open_bar(self) -> Bar | None:
        bars = self.aggregator.open_bars()
        return bars[-1] if bars else None

    # -- the connection loop --------------------------------------------------------------------

    @property
    def failed(self) -> bool:
        return self.health.state is FeedState.ERROR

    def fail(self, reason: str) -> None:
        """Stop this feed for good (from outside, e.g. its Redis key is unusable); the others go on."""
        if self.failed:
            return
        self._stop_for_good(reason)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def _stop_for_good(self, reason: str) -> None:
        self._live = False
        self.health.state = FeedState.ERROR
        self.health.error = reason
        log.error("%s %s: %s; this feed stops, the others go on", self.feed.exchange, self.symbol, reason)
        if self.on_error is not None:
            self.on_error(self)

    async def run(self) -> None:
        """Connect, stream and reconnect until cancelled, or until an error that reconnecting does
        not fix (the symbol is not listed, the exchange refuses, a bug): then state ``error``."""
        task = self._task = asyncio.current_task()
        try:
            while not self.failed:
                delay = 0.0
                stop: BaseException | None = None
                try:
                    await self._session()
                except* ccxt.OperationFailed as group:
                    error = group.exceptions[0]
                    if isinstance(error, WatchdogTimeout):
                        # Counted here, not where it is raised: one feed's watchdog drops a
                        # connection that its other feeds share, and theirs end with its error.
                        self.health.watchdog_timeouts += 1
                    if isinstance(error, WatchdogTimeout | NotTrading):
                        self._recheck_listing = True  # a silent symbol may have been delisted
                    self._went_down(error)
                    delay = self._backoff.next_delay()
                    log.warning("%s: %r; reconnect in %.2fs", self.symbol, error, delay)
                except* ccxt.BadSymbol as group:
                    # The exchange no longer knows the symbol: the next session reads its markets again.
                    self._recheck_listing = True
                    self._went_down(group.exceptions[0])
                    delay = self._backoff.next_delay()
                    log.warning("%s: %r; checking the listing in %.2fs", self.symbol, group.exceptions[0], delay)
                except* FeedStopped as group:
                    stop = group.exceptions[0]
                except* Exception as group:  # refused for good, or a bug: reconnecting will not help
                    stop = group.exceptions[0]
                    if not isinstance(stop, ccxt.BaseError):
                        log.error("%s: unexpected %r", self.symbol, stop, exc_info=stop)
                # A TaskGroup (3.11) whose child fails while the group is being cancelled raises the
                # failure and drops the CancelledError: without this check a stop request that meets
                # a dropped connection is lost, and the feed reconnects and runs on.
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError
                if stop is not None:
                    self._stop_for_good(str(stop) if isinstance(stop, FeedStopped) else describe_error(stop))
                    return
                await asyncio.sleep(delay)
        finally:
            self._live = False
            if not self.failed:
                self.health.state = FeedState.STOPPED

    def _went_down(self, error: BaseException) -> None:
        self._live = False
        self.health.state = FeedState.DOWN
        self.health.error = describe_error(error)
        self.health.reconnects += 1

    async def _session(self) -> None:
        self._live = False
        self.health.state = FeedState.CONNECTING
        ex = self.link.exchange
        await self.link.ensure_markets(recheck=self._recheck_listing)
        self.link.check_listed(self.symbol)
        self._recheck_listing = False
        self._offset_ms = self._check_offset_ms = await self.link.clock_offset_ms()
        self._clock_read_at = time.monotonic()
        check_hook(ex, self.symbol, self._hook)
        self.link.place(self.symbol)
        if self.link.liveness.probe_for(self.symbol) is None:  # this session opens a connection
            await self.link.dial_budget.permit(self.symbol)
        self._last_message = time.monotonic()
        self._first_live_ms = None
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch(), name=f"watch {self.symbol}")
            group.create_task(self._watchdog(), name=f"watchdog {self.symbol}")
            await self.backfill.catch_up()
            self._backoff.reset()
            # In the body, not a task: the body then lasts as long as the session, so a failing
            # child always interrupts one of its awaits, the one case in which TaskGroup (3.11)
            # gives back the cancellation it used; ``run`` counts on that to tell a stop request
            # from a dropped connection.
            await self._ticker()

    async def _watch(self) -> None:
        ex = self.link.exchange
        while True:
            await ex.watch_trades(self.symbol)
            check_hook(ex, self.symbol, self._hook)

    async def _watchdog(self) -> None:
        """Reconnect a connection that answers no ping and sends nothing, or whose trade flow
        stopped, for a watchdog.

        Judged by the connection, never by this symbol's trades: a quiet symbol on a live
        connection is left alone (its bars close on pongs).
        """
        waiting_since = time.monotonic()
        period_s = min(self._watchdog_s / 4, 1.0)
        while True:
            await sleep_to_tick(period_s)
            now = time.monotonic()
            probe = self.link.liveness.probe_for(self.symbol)
            if probe is None:
                if now - waiting_since <= self._watchdog_s:
                    continue
                reason = f"no open connection for {self._watchdog_s:g}s"
            else:
                waiting_since = now
                unheard = probe.unheard_s(now)
                stalled = probe.flow.silent_beyond_limit_s(now)
                if unheard > self._watchdog_s:
                    reason = f"no pong nor any frame for {unheard:.1f}s"
                elif stalled > self._watchdog_s:
                    # Pongs still come: the pump's state says whether it or the server stopped.
                    reason = (f"its connection's trade flow stopped ({stalled:.1f}s past its usual gaps; "
                              f"last frame {unheard:.1f}s ago; {pump_state(probe.client)})")
                else:
                    continue
            error = WatchdogTimeout(f"{self.symbol}: {reason}")
            await drop_connection(self.link.exchange, self.symbol, error)
            raise error

    async def _ticker(self) -> None:
        self._subscribed_at = None
        while True:
            if self._hole_since is not None and time.monotonic() - self._hole_since > _HOLE_PATIENCE_S:
                await self.backfill.fill_holes()
            if self._gap_from is not None:
                await self._close_open_gap()
            if self._held:
                await self._release_held()
            self.tick()
            if self._rest_check_due():
                await self._check_by_rest()
            now = time.monotonic()
            if now - self._last_message > self._watchdog_s and now - self._listing_checked_at > self._watchdog_s:
                await self._check_listing()
            await sleep_to_tick()

    async def _check_listing(self) -> None:
        """A symbol without a trade for a watchdog may have been delisted: read the markets again
        (at most once per watchdog per exchange, shared by its feeds); the connection stays."""
        self._listing_checked_at = time.monotonic()
        try:
            await self.link.ensure_markets(recheck=True)
        except ccxt.OperationFailed as exc:  # the exchange is busy or unreachable: look again later
            log.debug("%s: markets not read (%r)", self.symbol, exc)
            return
        self.link.check_listed(self.symbol)

    async def _confirm_subscription(self) -> None:
        """Wait until the server has this feed's subscription, so that a pong after it proves trades.

        Binance answers a subscription (``{"result":null,"id":N}``); ccxt keeps N with it. Without
        an answer to wait for, the request having left (ccxt's throttle queue empty, seen twice) is
        enough: a ping sent after it reaches the server after it. Either way the REST catch-up
        comes after, so REST and websocket cover the trades without a seam.
        """
        exchange = self.link.exchange
        deadline = time.monotonic() + self._watchdog_s
        sent_seen_at: float | None = None
        while time.monotonic() < deadline:
            probe = self.link.liveness.probe_for(self.symbol)
            if probe is not None:
                if sends_queued(probe.client):
                    # Still in ccxt's throttle behind the subscriptions of the symbols sharing
                    # this connection (Binance: one every 250 ms): the wait for an answer starts
                    # once they are out. Counted from the session's start, a short watchdog
                    # dropped a connection of 3 while its last subscription waited, and the
                    # reconnect met the same queue, again and again.
                    deadline = max(deadline, time.monotonic() + self._watchdog_s)
                request_id = _subscription_id(probe.client, self.symbol)
                if request_id is not None and request_id in probe.acked:
                    self._use_probe(probe, probe.acked[request_id])
                    return
                if request_id is None and subscription_sent(exchange, self.symbol):
                    if sent_seen_at is None:
                        sent_seen_at = time.monotonic()
                    elif time.monotonic() - sent_seen_at >= TICK_S:
                        self._use_probe(probe, now_ms())
                        return
                else:
                    sent_seen_at = None
            await asyncio.sleep(TICK_S / 5)
        error = WatchdogTimeout(f"{self.symbol}: subscription not confirmed within {self._watchdog_s:g}s")
        await drop_connection(exchange, self.symbol, error)
        raise error

    def _use_probe(self, probe: ConnectionProbe, confirmed_ms: int) -> None:
        if self._probe is not None and self._probe is not probe:
            self._probe.needs.pop(id(self), None)
        self._probe, self._confirmed_ms = probe, confirmed_ms
        flows, own = self.link.liveness.flow, self._own
        own.watch_from(self.exchange_now_ms())
        self._seen_probe_stalls, self._seen_link_stalls = probe.flow.episodes, flows.episodes
        self._seen_own_stalls = own.episodes
        # A stall under way now: the catch-up covers what it held back, pongs still prove nothing past it.
        self._unverified_from = None
        now = time.monotonic()
        for flow in (probe.flow, flows, own):
            if flow.suspect(now):
                self._cap_pongs(flow.newest_ms)

    def _cap_pongs(self, newest_before_stall_ms: int) -> None:
        """A stall after the trade stamped ``newest_before_stall_ms``: pongs prove nothing past it."""
        current = self._unverified_from
        self._unverified_from = newest_before_stall_ms if current is None else min(current, newest_before_stall_ms)
