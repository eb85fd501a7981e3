"""A feed's own websocket trades as a flow: has the exchange stopped sending this one symbol?

Busy symbols share connections (connection_plan.py). When one symbol's stream stops inside a
connection (a gateway that drops one subscription, one market's engine stalling) the connection's
flow goes on with its neighbours' trades and every ping is answered: ``liveness.FlowGuard`` sees
nothing wrong, and the pongs, capped only by the neighbours' newest trade, would close the symbol's
bars short, marked complete (tests/test_stream_muted.py showed a bar with 3 of its 26 trades).

So a feed also judges its own trades, with the rule of ``FlowGuard``: warm when its mean gap is at
most ``warm_gap_s``, stalled after a silence of ``ratio`` mean gaps (and ``floor_s``). A stall
caps the feed's pongs at its newest trade before the silence until a REST read or a trade of its
own with no hole before it shows nothing missing (feed.py), as for its connection's stalls.

The mean gap is measured over the last ``window_s`` seconds of trades (not the last 64 frames as
for a connection): one symbol's trades come in bursts, and 64 trades of a burst would make a
middling symbol look busy. It is sampled by the feed's ticker, so the hot path only counts trades.
While the symbol is silent no sample is taken: a stream that stopped for good stays judged by
the rate it had, and its bars keep waiting for REST instead of closing on pongs once it looks
quiet. (A busy symbol that truly goes quiet costs a REST read per bar until its next trade.)
"""

from __future__ import annotations

import math
from collections import deque

from streamer.liveness import FlowGuard

# The window must span this long before the flow is judged: the first trades after a subscription
# can come as a burst (what queued while it was under way), not at the symbol's usual rate.
_MIN_SPAN_S = 5.0


class FeedFlow(FlowGuard):
    """One feed's websocket trades: ``trades`` and ``newest_ms`` are kept by the feed on every
    trade, ``look`` samples them (on the feed's ticks, and before a pong is trusted)."""

    __slots__ = ("_samples", "_seen", "owed_from_ms", "sample_s", "trades", "unsent_ms", "window_s")

    def __init__(
        self, *, window_s: float = 30.0, sample_s: float = 1.0, ratio: float = 20.0, floor_s: float = 1.0,
        warm_trades: int = 64, warm_gap_s: float = 0.1,
    ) -> None:
        super().__init__(ratio=ratio, floor_s=floor_s, warm_frames=warm_trades, warm_gap_s=warm_gap_s)
        self.window_s = window_s
        self.sample_s = sample_s
        self.trades = 0  # websocket trades so far
        self._samples: deque[tuple[float, int]] = deque()  # (monotonic time of a trade, trades by then)
        self._seen = 0  # trades at the previous look
        self.owed_from_ms = 0  # exchange time from which the current connection owes every trade
        self.unsent_ms: int | None = None  # oldest trade REST gave since then that the stream had not sent

    def delivered(self, timestamp_ms: int) -> None:
        """A websocket trade of the feed (the feed writes this out on its hot path)."""
        self.trades += 1
        if timestamp_ms > self.newest_ms:
            self.newest_ms = timestamp_ms

    @property
    def warm(self) -> bool:
        return not math.isinf(self.mean_gap_s())

    def mean_gap_s(self) -> float:
        """The mean gap between the trades of the window (infinite: too few to judge)."""
        samples, last = self._samples, self._last
        if not samples or last is None:
            return math.inf
        since, trades = samples[0]
        span, count = last - since, self.trades - trades
        if span < _MIN_SPAN_S or count < self.warm_frames:
            return math.inf
        gap = span / count
        return gap if gap <= self.warm_gap_s else math.inf

    def limit_s(self) -> float:
        gap = self.mean_gap_s()
        return math.inf if math.isinf(gap) else max(self.floor_s, self.ratio * gap)

    def look(self, now: float, last_trade: float) -> bool:
        """Sample the flow (``last_trade``: monotonic time of the feed's newest websocket trade);
        True while it is silent beyond its limit (the episode is registered once)."""
        trades = self.trades
        if trades != self._seen:
            self._seen = trades
            self._episode_open = False  # trades came: a new silence is a new episode
            self._last = last_trade
            samples = self._samples
            if not samples or last_trade - samples[-1][0] >= self.sample_s:
                samples.append((last_trade, trades))
                # Keep the newest sample older than the window as its start.
                while len(samples) > 1 and samples[1][0] <= last_trade - self.window_s:
                    samples.popleft()
        return self.suspect(now)

    # -- what REST has that the stream did not send ---------------------------------------------

    def watch_from(self, exchange_ms: int) -> None:
        """A connection confirmed the subscription at ``exchange_ms``: it owes every trade from then on."""
        self.owed_from_ms = exchange_ms
        self.unsent_ms = None

    def note_rest_trade(self, timestamp_ms: int) -> None:
        """REST gave a trade the stream had not sent (yet)."""
        if timestamp_ms < self.owed_from_ms or timestamp_ms <= self.newest_ms:
            return
        unsent = self.unsent_ms
        if unsent is None or unsent <= self.newest_ms or timestamp_ms < unsent:
            self.unsent_ms = timestamp_ms

    def unsent_by(self, exchange_ms: int) -> bool:
        """REST has a trade, newer than the stream's newest, that the connection owed and should
        have sent by ``exchange_ms``: the stream has stopped (or lags past its stall limit)."""
        unsent = self.unsent_ms
        return unsent is not None and self.newest_ms < unsent <= exchange_ms
