"""Realised errors of predictions and rolling live scores per feed.

When a predicted bar closes, its prediction is compared with what happened and recorded in the
feed's ``realised`` stream (entry id = the bar's open time, beside the prediction's own id in the
predictions stream). The rolling scores over the last ``forecaster.score_window`` realised bars
are kept in memory and written to ``keys.scores``; a worker that has not seen a feed's previous
realised bar (another worker of the group had it) reloads the window from the stream first.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from volcast.keys import Feed


@dataclass(frozen=True, slots=True)
class Realised:
    """A prediction next to the bar it predicted. ``naive`` is the previous bar's volume."""

    open_time_ms: int
    predicted: float
    actual: float
    naive: float
    model_version: str
    # The 80% band that was published with the prediction (NaN: it had none).
    low: float = math.nan
    high: float = math.nan

    @property
    def banded(self) -> bool:
        """Whether the prediction had a band whose coverage can be counted."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def covered(self) -> bool:
        """Whether the bar fell inside the published band (ends included)."""
        return self.low <= self.actual <= self.high

    @property
    def finite(self) -> bool:
        """Whether every number is finite (only such records are scored and written)."""
        return math.isfinite(self.predicted) and math.isfinite(self.actual) and math.isfinite(self.naive)

    @property
    def error_log(self) -> float:
        return math.log1p(max(self.predicted, 0.0)) - math.log1p(max(self.actual, 0.0))

    def to_fields(self) -> dict[str, str]:
        fields = {
            "open_time_ms": str(self.open_time_ms),
            "predicted": repr(self.predicted),
            "actual": repr(self.actual),
            "naive": repr(self.naive),
            "error_log": repr(self.error_log),
            "model_version": self.model_version,
        }
        if self.banded:
            fields["low"] = repr(self.low)
            fields["high"] = repr(self.high)
            fields["covered"] = "1" if self.covered else "0"
        return fields

    @classmethod
    def from_fields(cls, raw: Mapping[bytes, bytes]) -> Realised:
        try:
            return cls(
                open_time_ms=int(raw[b"open_time_ms"]),
                predicted=float(raw[b"predicted"]),
                actual=float(raw[b"actual"]),
                naive=float(raw[b"naive"]),
                model_version=raw.get(b"model_version", b"").decode(),
                low=float(raw.get(b"low", b"nan")),
                high=float(raw.get(b"high", b"nan")),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"not a realised record: {exc!r}") from None


_Row = tuple[int, float, float, float, int]
"""What the window keeps of a record: open time, log error squared, |error|, |naive error|, and
the band: 2 the bar fell inside the published 80% band, 1 outside it, 0 no band.
A tuple of numbers, not the Realised itself: CPython stops tracking such tuples in its cycle
collector, and a day of 1-minute records for 1000 feeds is 1.4 million objects that every full
collection would otherwise walk (a pause of seconds in the worker)."""


class _Window:
    """Records plus running sums, so a score update costs O(1) rather than O(window)."""

    def __init__(self, window: int, records: list[Realised] | None = None) -> None:
        self.records: deque[_Row] = deque(maxlen=window)
        self.sq = self.abs_err = self.abs_naive = 0.0
        self.banded = self.covered = 0  # integers: exact running counts
        self._pushed = 0
        for record in records or []:
            self.push(record)

    def push(self, record: Realised) -> None:
        if not record.finite:
            return  # a NaN in a running sum never leaves it
        band = (2 if record.covered else 1) if record.banded else 0
        row = (record.open_time_ms, record.error_log**2, abs(record.predicted - record.actual),
               abs(record.naive - record.actual), band)
        if len(self.records) == self.records.maxlen:
            self._account(self.records[0], -1.0)
        self.records.append(row)
        self._account(row, 1.0)
        self._pushed += 1
        if self._pushed >= len(self.records) and len(self.records) == self.records.maxlen:
            self._resum()

    def _resum(self) -> None:
        """The sums again from the records, once per window of pushes (amortised O(1)): adding and
        subtracting a huge error (a 1e12 bar) leaves rounding residue of its size in a running sum."""
        self._pushed = 0
        self.sq = math.fsum(row[1] for row in self.records)
        self.abs_err = math.fsum(row[2] for row in self.records)
        self.abs_naive = math.fsum(row[3] for row in self.records)

    def pop(self) -> None:
        self._account(self.records.pop(), -1.0)

    def _account(self, row: _Row, sign: float) -> None:
        self.sq += sign * row[1]
        self.abs_err += sign * row[2]
        self.abs_naive += sign * row[3]
        if row[4]:
            step = 1 if sign > 0 else -1
            self.banded += step
            self.covered += step if row[4] == 2 else 0

    def scores(self) -> dict[str, str]:
        n = len(self.records)
        if n == 0:
            return {"n": "0"}
        mae = max(self.abs_err, 0.0) / n
        naive_mae = max(self.abs_naive, 0.0) / n
        return {
            "n": str(n),
            "rmse_log": repr(math.sqrt(max(self.sq, 0.0) / n)),
            "mae": repr(mae),
            "naive_mae": repr(naive_mae),
            # MASE against naive on the same bars: below 1 beats "next bar = last bar".
            # Empty when naive made no error at all (MASE undefined): never "nan" in Redis.
            "mase": repr(mae / naive_mae) if naive_mae > 0 else "",
            "from_ms": str(self.records[0][0]),
            "to_ms": str(self.records[-1][0]),
            # Live coverage of the published 80% band over the window's bars that had one.
            "banded": str(self.banded),
            "covered": str(self.covered),
            "coverage_80": repr(self.covered / self.banded) if self.banded else "",
        }


class LiveScores:
    """The last ``window`` realised records of each feed."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._windows: dict[Feed, _Window] = {}

    def follows(self, feed: Feed, open_time_ms: int) -> bool:
        """True when this process holds the feed's window up to the bar just before ``open_time_ms``."""
        window = self._windows.get(feed)
        if window is None or not window.records:
            return False
        return window.records[-1][0] == open_time_ms - feed.interval_ms

    def load(self, feed: Feed, records: list[Realised]) -> None:
        """Replace the feed's window with records read back from Redis (oldest first)."""
        self._windows[feed] = _Window(self.window, records[-self.window :])

    def add(self, feed: Feed, record: Realised) -> dict[str, str]:
        """Add one realised record; returns the feed's scores as hash fields."""
        window = self._windows.setdefault(feed, _Window(self.window))
        # A replayed event replaces what it overlaps, so the window stays in time order.
        while window.records and window.records[-1][0] >= record.open_time_ms:
            window.pop()
        window.push(record)
        return window.scores()
