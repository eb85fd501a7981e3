"""Histogram buckets counted by the services and served as Prometheus histograms.

prometheus_client's ``Histogram`` takes a lock per observation and knows no weights; a boundary
of a thousand forecasts made at one moment is one ``add(value, 1000)`` here. Counts live in a
plain list per series, written by the event loop and read by the scrape thread: each element is
a Python int replaced whole under the GIL, and the buckets are made cumulative only when served,
so a scrape never sees a bucket above a later one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence


class Buckets:
    """Observations counted per bucket (upper bounds ``bounds``; the last slot: above them all)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0  # sum of the observed values

    def add(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.total += value * n


def cumulative(bounds: Sequence[float], counts: Sequence[int], divisor: float = 1.0) -> list[tuple[str, float]]:
    """Per-bucket ``counts`` as a Prometheus histogram's cumulative ``le`` buckets (bounds divided
    by ``divisor``: the streamer counts in ms, Prometheus wants seconds)."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        out.append((repr(float(bound / divisor)), running))
    out.append(("+Inf", running + sum(counts[len(bounds):])))
    return out

