"""The replay clock: the exchange's time at this instant, as ``/api/v3/time`` reports it.

It runs at ``speed`` times real time from a base point, and never runs ahead of what has been
published: while a trade stamped T is still waiting to go out, the clock reads below T. So a
client that sees the clock at X knows every trade stamped <= X has already been sent (or
published to REST while the feed was silent), and can close the bars that end before X.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class ReplayClock:
    def __init__(self, base_ms: float, rate: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._base_ms = base_ms
        self._base_mono = monotonic()
        self._rate = rate
        self._last_ms = -math.inf
        self.hold_below: int | None = None
        """Timestamp of the next trade still to publish: the clock stays below it."""

    def rebase(self, base_ms: float, rate: float) -> None:
        """From now on run at ``rate`` x real time from ``base_ms`` (a jump forward when looping)."""
        self._base_ms = base_ms
        self._base_mono = self._monotonic()
        self._rate = rate

    def ideal_ms(self) -> float:
        """Where the clock would be if publishing kept up; infinite at infinite speed."""
        if math.isinf(self._rate):
            return math.inf
        return self._base_ms + (self._monotonic() - self._base_mono) * self._rate * 1000.0

    def seconds_until(self, timestamp_ms: float) -> float:
        """Real seconds until the ideal clock reaches ``timestamp_ms`` (<= 0 if it has)."""
        if math.isinf(self._rate):
            return 0.0
        if self._rate == 0:
            return math.inf
        return (timestamp_ms - self.ideal_ms()) / (self._rate * 1000.0)

    def now_ms(self) -> int:
        """The exchange time now: ideal, held below the next unpublished trade, never decreasing."""
        value = self.ideal_ms()
        if self.hold_below is not None:
            value = min(value, self.hold_below - 1)
        if value < self._last_ms:
            value = self._last_ms
        self._last_ms = value
        return int(value)
