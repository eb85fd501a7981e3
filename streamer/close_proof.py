"""How a feed's bars closed, and how late its trades arrive: the figures behind the closing rule.

A bar closes only on a proof that no trade of its interval can still come (docs/streamer.md,
"Closing"). Each proof has a name, and a feed counts its bars by proof and keeps the delay from
each bar's end to its close on the exchange's clock. Beside it, the delivery delay of its trades
(arrival on the exchange's clock minus the trade's time): ``bars.grace`` must stay above it, since
a liveness proof trusts every trade older than the proven moment minus the grace to be in.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
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
