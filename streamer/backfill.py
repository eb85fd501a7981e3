"""The REST side of one feed (``Backfill``): the catch-up after each (re)connect, the filling of
holes in the trade ids, the history a new feed starts with, and the REST reads after a stall.

It places what it reads through its runner (streamer/feed.py), whose trade state (``frontier``,
the ids ahead of it, an open loss, the aggregator, health) it reads and moves: the two are one
feed, split by what talks to REST.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ccxt.pro

from streamer.aggregator import Outcome
from streamer.health import FeedState
from streamer.source import trade_from_ccxt
from streamer.trade_validation import Refusal, RefusedTrade, placed

if TYPE_CHECKING:
    from streamer.feed import FeedRunner, Placed

# The feed's logger: these lines were the feed module's before the backfill had a file of its own.
log = logging.getLogger("streamer.feed")

# REST failures in a row (each after a capped backoff: minutes with the default 30 s cap) before a
# hole is given up as a gap: an exchange that keeps refusing cannot fill it.
_BACKFILL_ATTEMPTS = 12
# Request weight of a page of trades (Binance spot historicalTrades: 25), spent from the
# exchange's REST budget (exchange_link.py).
TRADES_WEIGHT = {"binance": 25, "binanceus": 25}


@dataclass(slots=True)
class History:
    """A history backfill under way (consecutive ids): the REST trades from ``low`` to ``high`` are
    taken (none yet while they are None), those from ``since`` up to ``low`` are still to fetch.
    Kept across reconnects: an interrupted backfill goes on where it stopped, instead of the first
    live trade's id becoming the frontier and the history behind it never being fetched."""

    since: int
    low: Placed | None = None
    high: Placed | None = None


class Backfill:
    """One feed's REST reads, owned by its ``FeedRunner``; what it reads goes into the runner's bars."""

    def __init__(self, runner: FeedRunner, *, tick_s: float) -> None:
        self._runner = runner
        self._tick_s = tick_s  # the runner's tick: how soon to ask again when the websocket is ahead
        self.first_since: int | None = None
        self.history: History | None = None
        self._rest_failures = 0
        self._last_page_size = 0  # records in the last REST page, before the check

    async def catch_up(self) -> None:
        """After (re)connecting: once the server has the subscription, fetch what the websocket
        missed, then go live.

        What to fetch is decided before the wait: trades the websocket delivers meanwhile must
        find the history under way (kept apart by id), not become the start of what is known.
        """
        runner = self._runner
        runner.health.state = FeedState.BACKFILLING
        exchange_now = runner.exchange_now_ms()
        by_ids = False
        since: int | None = None
        if self.history is not None:
            since = self.history.since  # interrupted by a disconnect
        elif runner.health.last_trade_ms == 0 and runner.frontier is None and runner.start_ms is None:
            # A feed without a bar in Redis starts with max_backfill of history, so a feed whose
            # first process died before closing a bar loses nothing, and a new one starts with
            # bars to forecast from. Its first bar is complete from the bar's start; the point is
            # kept across reconnects that come before the first trade.
            if self.first_since is None:
                self.first_since = runner.aggregator.bar_open(exchange_now - runner.settings.streamer.max_backfill)
            since = self.first_since
        elif runner.health.last_trade_ms == 0 and runner.start_ms is not None:
            # Resuming from Redis: from the end of the last closed bar, at most max_backfill back.
            oldest = exchange_now - runner.settings.streamer.max_backfill
            if runner.start_ms < oldest:
                runner.aggregator.mark_gap(runner.start_ms, oldest)
                runner.health.gaps += 1
                runner.frontier = None
                since = oldest
            elif runner.frontier is not None:
                by_ids = True
            else:
                since = runner.start_ms
        elif runner.consecutive and runner.frontier is not None:
            by_ids = True
        else:
            since = runner.health.last_trade_ms
        if since is not None and runner.consecutive and self.history is None:
            self.history = History(since)  # see _backfill_recent_by_id
        await runner._confirm_subscription()
        rest_from = runner.link.liveness.clock.now_low()
        if by_ids:
            await self.backfill_ids(hole_only=False)
        elif since is not None:
            await self.backfill_since(since)
        if rest_from is not None:
            # Every REST read above came after this moment and read on until REST had nothing more.
            proof = runner._rest_proof_ms
            runner._rest_proof_ms = rest_from if proof is None else max(proof, rest_from)
        if runner._live_since_ms is None:
            runner._live_since_ms = runner.exchange_now_ms()
        runner.health.state = FeedState.LIVE
        runner.health.error = ""
        runner._live = True

    async def fill_holes(self) -> None:
        runner = self._runner
        runner._live = False
        runner.health.state = FeedState.BACKFILLING
        try:
            if self.history is not None:
                await self._backfill_recent_by_id(self.history.since)
            else:
                await self.backfill_ids(hole_only=True)
        finally:
            if not runner.failed:
                runner.health.state = FeedState.LIVE
                runner._live = True

    async def _fetch(self, since: int | None, params: dict[str, Any]) -> list[Placed] | None:
        """One REST page, checked and sorted by id; None if the exchange refuses (after retries
        for network errors)."""
        runner = self._runner
        ex = runner.link.exchange
        # Failures count across reconnects: a connection that keeps dropping must not keep a
        # refused backfill alive forever.
        while self._rest_failures < _BACKFILL_ATTEMPTS:
            await runner.link.rest_budget.spend(TRADES_WEIGHT.get(ex.id, 1))
            try:
                raw = await ex.fetch_trades(runner.symbol, since, runner.settings.streamer.backfill_page, params)
            except ccxt.OperationFailed as exc:  # network errors, 429, 5xx: worth retrying
                self._rest_failures += 1
                delay = runner._backoff.next_delay()
                log.warning(
                    "%s: backfill attempt %d failed (%r), retry in %.2fs",
                    runner.symbol, self._rest_failures, exc, delay,
                )
                await asyncio.sleep(delay)
                continue
            except ccxt.ExchangeError as exc:
                log.warning("%s: backfill refused: %r", runner.symbol, exc)
                return None
            self._rest_failures = 0
            runner._backoff.reset()
            self._last_page_size = len(raw)
            return await self._checked_page(raw)
        self._rest_failures = 0  # given up: the next hole gets its own attempts
        return None

    async def _checked_page(self, raw: list[dict[str, Any]]) -> list[Placed]:
        """A REST page through the trade check: usable and placeable refused trades, by id.

        A refused record without a usable time (or one stamped past the exchange's clock) is
        placed between its neighbours by id: the bars from the one before to the one after are
        marked gap, and its id counts as seen. Without consecutive ids the page's whole span is.
        """
        runner = self._runner
        trades: list[Placed] = []
        unplaced: list[Refusal] = []
        for item in raw:
            checked = trade_from_ccxt(item)
            record = placed(checked) if isinstance(checked, Refusal) else checked
            if record is not None:
                trades.append(record)
            else:
                assert isinstance(checked, Refusal)
                unplaced.append(checked)
        if any(runner._ahead_of_clock(t) is not None for t in trades):
            try:
                await runner._read_clock()
            except ccxt.BaseError as exc:
                log.debug("%s: exchange clock unreadable (%r)", runner.symbol, exc)
            in_time = []
            for trade in trades:
                late = runner._ahead_of_clock(trade)
                if late is None:
                    in_time.append(trade)
                else:
                    unplaced.append(late)
            trades = in_time
        trades.sort(key=lambda t: (t.trade_id, t.timestamp_ms))
        for refusal in unplaced:
            if refusal.trade_id is None or not runner.consecutive or not trades:
                runner._count_refused(refusal)
                if trades:
                    runner.aggregator.mark_gap(min(t.timestamp_ms for t in trades), trades[-1].timestamp_ms + 1)
                continue
            ids = [t.trade_id for t in trades]
            at = bisect.bisect_left(ids, refusal.trade_id)
            before = trades[at - 1] if at > 0 else None
            after = trades[at] if at < len(trades) else None
            low = (before or after or trades[0]).timestamp_ms
            high = (after or before or trades[0]).timestamp_ms
            runner.aggregator.mark_gap(low, high + 1)
            trades.insert(at, RefusedTrade(refusal.trade_id, low, refusal))
        return trades

    async def backfill_ids(self, *, hole_only: bool) -> None:
        """Fetch by id from the frontier until no hole is left (and, after a reconnect, REST is exhausted)."""
        runner = self._runner
        page = runner.settings.streamer.backfill_page
        empty_rounds = 0
        while runner.frontier is not None:
            if hole_only and not runner._ahead:
                return
            wanted = runner.frontier + 1
            trades = await self._fetch(None, {"fromId": wanted})
            if trades is None or empty_rounds >= _BACKFILL_ATTEMPTS:
                runner._give_up_hole(min(runner._ahead.values(), default=None))
                empty_rounds = 0
                continue
            trades = [t for t in trades if t.trade_id >= wanted]
            if trades and trades[0].trade_id > wanted:
                runner._give_up_hole(trades[0].timestamp_ms)  # older than the exchange keeps
            for trade in trades:
                runner._take(trade, backfilled=True)
            if len(trades) >= page:
                continue
            if not runner._ahead:
                return  # REST is exhausted and the websocket shows no hole
            # The websocket is ahead of REST's answer: ask again shortly.
            empty_rounds = 0 if trades else empty_rounds + 1
            await asyncio.sleep(self._tick_s)

    async def backfill_since(self, since: int) -> None:
        """Fetch by time from ``since``, paging forward until REST has nothing newer."""
        runner = self._runner
        page = runner.settings.streamer.backfill_page
        if runner.consecutive:
            await self._backfill_recent_by_id(since)
            return
        start = since
        while True:
            trades = await self._fetch(since, {})
            if trades is None:
                # The websocket has had every trade since its first one: the loss ends there.
                first_live = runner._first_live_ms
                if first_live is None or first_live > since:
                    runner._give_up(since, first_live)
                return
            for trade in trades:
                runner._take(trade, backfilled=True)
            if len(trades) < page:
                if runner._gap_from is not None:  # a loss left open before: REST has had everything since
                    runner.aggregator.mark_gap(runner._gap_from, start)
                    runner._gap_from = None
                return
            newest = max(t.timestamp_ms for t in trades)
            since = newest if newest > since else since + 1

    async def _backfill_recent_by_id(self, since: int) -> None:
        """Consecutive ids: page back from the newest trades to ``since``, then forward by id.

        Each page goes into the bars as it comes (the aggregator takes any order while its bars
        are open), so memory holds one page, not an hour of trades. Trades the websocket delivers
        meanwhile wait in ``_ahead``, and a REST trade among them is not taken twice.
        """
        runner = self._runner
        if self.history is None:
            self.history = History(since)
        history = self.history
        fresh = await self._page_back(history)
        # Done (an exception leaves the history pending for the next session).
        self.history = None
        if history.high is not None:
            if runner._gap_from is not None:  # a loss left open before: REST has had everything since
                runner.aggregator.mark_gap(runner._gap_from, history.since)
                runner._gap_from = None
            runner._backfill_high = max(runner._backfill_high, history.high.trade_id)
            runner._set_frontier(history.high.trade_id, history.high.timestamp_ms)
        elif runner.frontier is None and runner._ahead:  # REST refused, or had nothing: from the websocket on
            first = min(runner._ahead)
            runner._set_frontier(first, runner._ahead.pop(first))
        if runner.frontier is not None:
            # A newest page read in this session, after the server confirmed the subscription,
            # leaves nothing between it and the websocket but the holes the websocket shows.
            await self.backfill_ids(hole_only=fresh)

    async def _page_back(self, history: History) -> bool:
        """Take the history back to ``since``; True if its newest page was read in this call."""
        runner = self._runner
        since, page = history.since, runner.settings.streamer.backfill_page
        fresh = False
        if history.high is None or history.low is None:
            newest = await self._fetch(None, {})
            if newest is None:
                runner._give_up(since, min(runner._ahead.values(), default=None))
                return False
            if not newest:
                return True
            self._take_history(newest, since)
            history.low, history.high = newest[0], newest[-1]
            fresh = True
            if self._last_page_size < page:
                return fresh  # fewer than a page: REST has nothing older
        low = history.low
        while low.timestamp_ms >= since and low.trade_id > 0:
            below, below_ms = self._websocket_run_below(low.trade_id, low.timestamp_ms, since)
            fetched = await self._fetch(None, {"fromId": max(0, below - page)})
            if fetched is None:
                runner.aggregator.mark_gap(since, below_ms)
                runner.health.gaps += 1
                return fresh
            older = [t for t in fetched if t.trade_id < below]
            if not older:
                return fresh
            self._take_history(older, since)
            low = history.low = older[0]
        return fresh

    def _websocket_run_below(self, low_id: int, low_ms: int, since: int) -> tuple[int, int]:
        """The lowest id (and its time) of the run of consecutive ids just below ``low_id`` that the
        websocket has delivered during this history, stamped from ``since`` on; ``low_id`` itself
        if there is none.

        Those trades are in the bars already (kept in ``_ahead`` while the history is read), and
        ``_take_history`` would skip every one of them: REST need not page through them. Against
        a backlog (a consumer behind at start, the benchmark's flood) the websocket delivers from
        below what REST read first and the two meet: every page after that was read for nothing
        (the flood: ~90 of 102 pages, 25 weight each).
        """
        ahead = self._runner._ahead
        tid, tid_ms = low_id, low_ms
        while True:
            below_ms = ahead.get(tid - 1)
            if below_ms is None or below_ms < since:
                return tid, tid_ms
            tid, tid_ms = tid - 1, below_ms

    def in_history(self, tid: int) -> bool:
        """``tid`` lies in the REST pages of the history taken so far (ids ``low..high``, no gap)."""
        history = self.history
        return history is not None and history.low is not None and history.high is not None and (
            history.low.trade_id <= tid <= history.high.trade_id
        )

    def _take_history(self, trades: list[Placed], since: int) -> None:
        """One REST page of the history: every trade from ``since`` on, unless the websocket had it."""
        runner = self._runner
        floor = max(since, runner.start_ms or since)
        for trade in trades:
            tid = trade.trade_id
            frontier = runner.frontier
            if trade.timestamp_ms < floor or tid in runner._ahead or (frontier is not None and tid <= frontier):
                continue
            if runner._add(trade, True) is Outcome.ADDED:
                runner.health.last_trade_ms = max(runner.health.last_trade_ms, trade.timestamp_ms)
