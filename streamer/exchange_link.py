"""What the feeds of one exchange share (``ExchangeLink``): the ccxt client, its markets, its
connections' liveness, and the budgets of its dials and REST weight."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamer.binance_frames import trade_frames_for
from streamer.close_proof import Grace
from streamer.connection_plan import place_symbol
from streamer.dial_budget import DialBudget
from streamer.feed_errors import FeedStopped, NotTrading
from streamer.liveness import ConnectionProbe, Liveness
from streamer.receive_pump import ReadHold, longest_rest_ms
from streamer.request_budget import WeightBudget
from streamer.source import client_symbols, guard_frames
from volcast.gc_pauses import freeze_lasting
from volcast.settings import ExchangeSettings

if TYPE_CHECKING:
    from streamer.feed import FeedRunner

# The feed's logger: these lines were the feed module's before the link had a file of its own.
log = logging.getLogger("streamer.feed")

# The exchange's REST weight limits ((window s, limit)); the feeds' backfills keep to half of
# them, as the history loader does (request_budget.py), and both read the weight the exchange
# says is used.
REST_LIMITS = {"binance": ((60, 6000),), "binanceus": ((60, 6000),)}
# A busy connection reads at once from this long (plus the hold) before a bar of the exchange's
# feeds ends: room for the difference between the clocks' readings and a late timer.
HOLD_MARGIN_MS = 50
_HOLD_RECHECK_MS = 5
_HOLD_ANSWER_MS = 100


def now_ms() -> int:
    return int(time.time() * 1000)



class ExchangeLink:
    """What the feeds of one exchange share: the ccxt client, its markets, one load at a time."""

    def __init__(
        self, exchange: Any, settings: ExchangeSettings, *, markets_max_age_s: float = 30.0, watchdog_s: float = 30.0,
        read_hold_ms: int = 0,
    ) -> None:
        self.exchange = exchange
        self.settings = settings
        self._markets_lock = asyncio.Lock()
        # A feed that suspects its symbol is gone (silent, or refused) asks for the markets again;
        # one exchangeInfo per this many seconds serves every feed of the exchange.
        self._markets_max_age_s = markets_max_age_s
        self._markets_read = float("-inf")
        self.runners: dict[str, FeedRunner] = {}
        # A keep-alive ping a third of the watchdog apart: a dead connection is found within
        # about 1.3 watchdogs, and a live one never waits for a ping to be judged.
        self.liveness = Liveness(exchange, keepalive_s=watchdog_s / 3, on_proof=self._proof)
        self.dial_budget = DialBudget.for_exchange(exchange.id)  # connection attempts per window
        # The REST weight of trade backfills: a reconnect storm of 100 feeds asks for 2500 at once.
        self.rest_budget = WeightBudget(REST_LIMITS.get(exchange.id, ()))
        on_response = exchange.on_rest_response

        def on_rest_response(code: int, reason: str, url: str, method: str, headers: Any, body: Any,
                             *rest: Any) -> Any:
            self.rest_budget.observe(int(code or 0), dict(headers or {}))
            return on_response(code, reason, url, method, headers, body, *rest)

        exchange.on_rest_response = on_rest_response
        # Binance's trade frames are read without ccxt's per-trade parse (the most of a trade's CPU).
        self.trade_frames = trade_frames_for(exchange)
        # A busy connection's socket rests between reads, away from its bars' ends (receive_pump.py):
        # a rest lasts up to 5/4 of the hold (it ends on the hold's grid).
        self._hold_horizon_ms = longest_rest_ms(read_hold_ms) + HOLD_MARGIN_MS
        self._hold_until_ms = self._hold_recheck_ms = -math.inf
        self._clock_ms: Callable[[], float] = now_ms
        self.read_hold = ReadHold(read_hold_ms / 1000, self._may_hold) if read_hold_ms > 0 else None
        guard_frames(
            exchange, self._bad_frame, self.liveness.on_frame, self.liveness.on_send,
            None if self.trade_frames is None else self.trade_frames.take, self.read_hold,
        )
        self._grace: Grace | None = None
        # Each symbol's connection (connection_plan.py), set at start; empty: ccxt's own choice.
        self.connections: dict[str, int] = {}

    def place(self, symbol: str) -> None:
        """Put ``symbol`` on its planned connection before it subscribes (no plan: ccxt decides)."""
        connection = self.connections.get(symbol)
        if connection is not None:
            place_symbol(self.exchange, symbol, connection)

    def grace(self, bars_grace_ms: int) -> Grace:
        """The exchange's grace for closing proofs (one for all its feeds: the delivery delay it
        measures is the exchange's path, and one late trade ends ``auto`` for all of them)."""
        if self._grace is None:
            self._grace = Grace(bars_grace_ms, self.settings.grace, rtt_ms=self.liveness.clock.best_rtt_ms)
        return self._grace

    def _proof(self, probe: ConnectionProbe) -> None:
        """A pong came: the feeds of that connection may close their bars now, not at their next tick."""
        for symbol in client_symbols(probe.client):
            runner = self.runners.get(symbol)
            if runner is not None:
                runner.try_close()

    def _may_hold(self, _client: Any) -> bool:
        """No live feed of the exchange has a bar that ends within the hold (and a margin) or that
        ended and waits to close. Of the exchange, not only of the connection: a pong proves no
        more than the newest trade of the exchange's busy flows (liveness.py ``cap_ms``), so a
        quiet feed's close waits for the busy connections' frames too. A yes holds until the soonest
        such end, for at most 100 ms (a feed that goes live, or starts, may bring an earlier one); a
        no is looked at again 5 ms later, not on every read."""
        now = self._clock_ms()
        if now < self._hold_until_ms:
            return True
        if now < self._hold_recheck_ms:
            return False
        soonest = math.inf
        for runner in self.runners.values():
            end = runner.pending_end_local_ms()
            if end is not None and end < soonest:
                soonest = end
        self._hold_until_ms = min(soonest - self._hold_horizon_ms, now + _HOLD_ANSWER_MS)
        self._hold_recheck_ms = now + _HOLD_RECHECK_MS
        return now < self._hold_until_ms

    def _bad_frame(self, client: Any, error: Exception) -> None:
        symbols = [s for s in client_symbols(client) if s in self.runners]
        if symbols:
            # A frame that cannot be read names no symbol: counted once, on its connection's first
            # feed, so that the feeds' sum is the frames skipped (a connection carries several).
            self.runners[symbols[0]].health.count_malformed("frame")
        log.warning("%s: bad frame for %s skipped: %r", self.exchange.id, symbols or client.url, error)

    async def ensure_markets(self, *, recheck: bool = False) -> None:
        """The exchange's markets, loaded once; with ``recheck`` loaded again unless they are fresh."""
        async with self._markets_lock:
            stale = time.monotonic() - self._markets_read >= self._markets_max_age_s
            if not self.exchange.markets or (recheck and stale):
                first = not self.exchange.markets
                await self.exchange.load_markets(reload=bool(self.exchange.markets))
                self._markets_read = time.monotonic()
                if first:
                    freeze_lasting()  # a real exchange's markets: ~100k objects, here for good

    def check_listed(self, symbol: str) -> None:
        """FeedStopped if the exchange does not list ``symbol``; NotTrading if it lists it as inactive."""
        market = (self.exchange.markets or {}).get(symbol)
        if market is None:
            raise FeedStopped(
                f"{self.exchange.id} does not list {symbol}: remove it from exchanges[].symbols or fix its "
                "spelling (ccxt's unified form, e.g. BTC/USDT)"
            )
        if market.get("active") is False:
            status = (market.get("info") or {}).get("status", "inactive")
            raise NotTrading(f"{self.exchange.id} lists {symbol} as not trading (status {status}); waiting")

    async def clock_offset_ms(self) -> int:
        """Exchange clock minus local clock, from the round trip's midpoint (0: no clock to ask)."""
        if not self.exchange.has.get("fetchTime"):
            return 0
        before = now_ms()
        server = await self.exchange.fetch_time()
        after = now_ms()
        if server is None:
            return 0
        self.liveness.clock.note_reading(int(server), before, after)
        return int(server) - (before + after) // 2
