"""How a feed's bars closed, and how late its trades arrive: the figures behind the closing rule.

A bar closes only on a proof that no trade of its interval can still come (docs/streamer.md,
"Closing"). Each proof has a name, and a feed counts its bars by proof and keeps the delay from
each bar's end to its close on the exchange's clock. Beside it, the delivery delay of its trades
(arrival on the exchange's clock minus the trade's time): ``bars.grace`` must stay above it, since
a liveness proof trusts every trade older than the proven moment minus the grace to be in.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from enum import StrEnum


class CloseProof(StrEnum):
    TRADE = "trade"
    """A later trade with no hole in the ids before it (consecutive ids, monotone times); without
    consecutive ids, a trade ``grace`` past the bar's end."""
    LIVENESS = "liveness"
    """The bar's connection answered a ping sent after the bar's end plus ``grace``."""
    REST = "rest"
    """A REST read of the trades, made after the bar's end plus ``grace``, left nothing missing (the
    check after a stalled trade flow, whose pongs prove the connection but not the stream)."""


# Recent samples kept for the percentiles: enough for a p99 that means something, small enough to
# sort on every health write (once per ``bars.open_bar_update``).
_BAR_SAMPLES = 256
_DELIVERY_SAMPLES = 1024
_EWMA_WEIGHT = 1 / 64
# Upper bounds (ms) of the close-delay histogram buckets served as Prometheus metrics
# (streamer/metrics.py), counted here as bars close: around the default 2 s grace, where quiet
# feeds' liveness closes land, and up to a minute for closes after a stall.
CLOSE_DELAY_BUCKETS_MS = (25, 50, 100, 250, 500, 1_000, 2_000, 2_500, 3_000, 5_000, 10_000, 30_000, 60_000)


def percentile(samples: list[int], fraction: float) -> int:
    """Nearest-rank percentile of ``samples`` (sorted here); 0 for none."""
    if not samples:
        return 0
    ordered = sorted(samples)
    rank = max(1, -(-int(fraction * 1000) * len(ordered) // 1000))  # ceil(fraction * n), in integers
    return ordered[min(rank, len(ordered)) - 1]


class CloseStats:
    """Bars closed per proof, and the delay from bar end to close (exchange clock, ms).

    Delays are kept for bars that ended while the feed was live; a backlog closed at start-up
    (history, the first backfill) would otherwise read as a latency.
    """

    __slots__ = ("_delays", "buckets", "counts", "delay_sum_ms", "last_delay_ms", "max_delay_ms")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(CloseProof, 0)
        self._delays: deque[int] = deque(maxlen=_BAR_SAMPLES)
        self.last_delay_ms = 0
        self.max_delay_ms = 0
        # Per proof: delays counted per bucket of CLOSE_DELAY_BUCKETS_MS (the last: above them all).
        self.buckets = {proof: [0] * (len(CLOSE_DELAY_BUCKETS_MS) + 1) for proof in CloseProof}
        self.delay_sum_ms = dict.fromkeys(CloseProof, 0)

    def record(self, proof: CloseProof, delay_ms: int | None) -> None:
        self.counts[proof] += 1
        if delay_ms is not None:
            self.buckets[proof][bisect_left(CLOSE_DELAY_BUCKETS_MS, delay_ms)] += 1
            self.delay_sum_ms[proof] += delay_ms
            self._delays.append(delay_ms)
            self.last_delay_ms = delay_ms
            self.max_delay_ms = max(self.max_delay_ms, delay_ms)

    def fields(self) -> dict[str, int]:
        delays = list(self._delays)
        return {
            **{f"closed_by_{proof.value}": count for proof, count in self.counts.items()},
            "close_delay_last_ms": self.last_delay_ms,
            "close_delay_p50_ms": percentile(delays, 0.5),
            "close_delay_p99_ms": percentile(delays, 0.99),
            "close_delay_max_ms": self.max_delay_ms,
        }


class DeliveryStats:
    """Delay from a trade's time to its arrival, on the exchange's clock (websocket trades only)."""

    __slots__ = ("_samples", "ewma_ms", "max_ms")

    def __init__(self) -> None:
        self._samples: deque[int] = deque(maxlen=_DELIVERY_SAMPLES)
        self.ewma_ms = 0.0
        self.max_ms = 0

    def record(self, delay_ms: int) -> None:
        self._samples.append(delay_ms)
        self.ewma_ms += (delay_ms - self.ewma_ms) * _EWMA_WEIGHT
        if delay_ms > self.max_ms:
            self.max_ms = delay_ms

    def fields(self) -> dict[str, int]:
        samples = list(self._samples)
        return {
            "delivery_p50_ms": percentile(samples, 0.5),
            "delivery_p99_ms": percentile(samples, 0.99),
            "delivery_max_ms": self.max_ms,
            "delivery_ewma_ms": round(self.ewma_ms),
        }


# ``exchanges[].grace: auto``: the grace is _AUTO_FACTOR times (the largest delivery delay seen on
# the exchange in the last _AUTO_WINDOW_S, plus the clock reading's round trip), within
# [_AUTO_FLOOR_MS, bars.grace]; _RAISED_FACTOR times for _AUTO_WINDOW_S after a late trade. Before
# _AUTO_MIN_SAMPLES websocket trades over _AUTO_MIN_SPAN_S it is bars.grace: a handful of trades
# says nothing about the tail. Why 3/2 (docs/streamer.md "Grace"): a pong proves the trades the
# exchange wrote before the ping's moment, so the grace must cover the exchange's write delay,
# which the measured delay (write + network + our event loop's lag, read on a clock known to
# within its round trip) bounds from above; the margin is only for a tail the last 10 minutes did
# not show. A trade beyond it now amends its bar (aggregator.py) instead of leaving it wrong, so
# the margin buys latency against rare revisions; the first late trade takes the old margin back.
AUTO = "auto"
_AUTO_FACTOR = (3, 2)  # numerator, denominator: integer arithmetic on every close attempt
_RAISED_FACTOR = (2, 1)
_AUTO_FLOOR_MS = 100
_AUTO_WINDOW_S = 600
_AUTO_MIN_SAMPLES = 200
_AUTO_MIN_SPAN_S = 60.0


class Grace:
    """The grace of one exchange's closing proofs: how late after its time a trade may still arrive.

    A pong (or a REST read) proves every trade stamped up to the proven moment minus this grace
    (liveness.py), so it must exceed the exchange's delivery delay. Fixed (``bars.grace``, or
    ``exchanges[].grace`` as a duration), or ``auto``: 3/2 of the largest delivery delay its
    websocket trades showed in the last 10 minutes plus the clock reading's round trip, never below
    100 ms nor above ``bars.grace``. The measured delay includes our own event loop's lag and the
    network, so it overstates what the exchange's writing takes: a loaded machine raises the grace,
    it never lowers it. A trade that arrives for a bar already closed (``late`` or ``amended``)
    raises ``auto``: for the next 10 minutes the factor is 2 (``grace_raised`` 1; each late trade
    restarts the 10 minutes), and its delivery delay, a sample like any, is in the largest.
    """

    __slots__ = ("_buckets", "_clock", "_first_s", "_largest", "_raised_until", "_rtt", "_samples", "auto",
                 "ceiling_ms", "fixed_ms", "late")

    def __init__(self, ceiling_ms: int, setting: int | str | None = None, *,
                 rtt_ms: Callable[[], int] = lambda: 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling_ms = ceiling_ms  # bars.grace
        self.auto = setting == AUTO
        self.fixed_ms = ceiling_ms if setting is None or isinstance(setting, str) else int(setting)
        self.late = 0  # late trades seen by this grace (all feeds of the exchange)
        self._raised_until = float("-inf")
        self._rtt = rtt_ms  # the exchange clock's best round trip: the error of the delays measured
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, largest delay in it], oldest first
        self._largest = 0  # the largest delay in the buckets
        self._samples = 0
        self._first_s: float | None = None

    @property
    def raised(self) -> bool:
        return self.auto and self._clock() < self._raised_until

    @property
    def ms(self) -> int:
        """The grace now (called on every close attempt: no scan)."""
        if not self.auto:
            return self.fixed_ms
        now = self._clock()
        first = self._first_s
        if first is None or self._samples < _AUTO_MIN_SAMPLES or now - first < _AUTO_MIN_SPAN_S:
            return self.ceiling_ms
        buckets = self._buckets
        if buckets and int(now) - buckets[0][0] >= _AUTO_WINDOW_S:
            self._prune(int(now))
        if not buckets:
            return self.ceiling_ms  # nothing measured for a window: no grounds for less
        times, over = _RAISED_FACTOR if now < self._raised_until else _AUTO_FACTOR
        wanted = -(-times * (self._largest + max(0, self._rtt())) // over)  # rounded up
        return max(_AUTO_FLOOR_MS, min(self.ceiling_ms, wanted))

    def note_delivery(self, delay_ms: int) -> None:
        """A websocket trade's delivery delay (exchange clock). On every trade: a few operations."""
        if not self.auto:
            return
        now = self._clock()
        second = int(now)
        buckets = self._buckets
        delay_ms = max(0, delay_ms)
        if buckets and buckets[-1][0] == second:
            if delay_ms > buckets[-1][1]:
                buckets[-1][1] = delay_ms
        else:
            buckets.append([second, delay_ms])
            self._prune(second)
        if delay_ms > self._largest:
            self._largest = delay_ms
        self._samples += 1
        if self._first_s is None:
            self._first_s = now

    def note_late(self) -> None:
        """A trade came for a bar already closed: ``auto`` is raised for a window. (A websocket
        trade's delay is noted as every trade's is, so the largest delay covers it too.)"""
        self.late += 1
        if self.auto:
            self._raised_until = self._clock() + _AUTO_WINDOW_S

    def fields(self) -> dict[str, int]:
        return {"grace_ms": self.ms, "grace_auto": int(self.auto), "grace_raised": int(self.raised)}

    def _prune(self, second: int) -> None:
        buckets = self._buckets
        pruned = False
        while buckets and second - buckets[0][0] >= _AUTO_WINDOW_S:
            buckets.popleft()
            pruned = True
        if pruned:
            self._largest = max((bucket[1] for bucket in buckets), default=0)
