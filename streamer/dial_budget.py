"""Websocket connection attempts within the exchange's limit, also when every connection drops at once.

Binance allows 300 connection attempts per 5 minutes per IP (and refuses, then bans, beyond).
With ccxt's default of up to 50 connections per exchange, a few reconnect storms in a row (a
network blip, a gateway restart) reach that. Each feed takes a permit before a session that
opens a connection; permits are counted over a sliding window and kept to ``share`` of the
limit. A permit taken by a feed whose connection turns out to exist already (two symbols share
one) is counted all the same: the count can only overstate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

# Per exchange id: (attempts, window in seconds). Binance spot: 300 connections per 5 minutes.
LIMITS: dict[str, tuple[int, float]] = {"binance": (300, 300.0), "binanceus": (300, 300.0)}
DEFAULT_LIMIT = (300, 300.0)
SHARE = 0.8  # the rest is headroom: other clients of the machine, clocks that differ


class DialBudget:
    def __init__(self, attempts: int, window_s: float, *, share: float = SHARE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = max(1, int(attempts * share))
        self.window_s = window_s
        self._clock = clock
        self._granted: deque[float] = deque()
        self.granted = 0
        self.waits = 0  # permits that had to wait for the window

    @classmethod
    def for_exchange(cls, exchange_id: str) -> DialBudget:
        attempts, window_s = LIMITS.get(exchange_id, DEFAULT_LIMIT)
        return cls(attempts, window_s)

    def _prune(self, now: float) -> None:
        while self._granted and now - self._granted[0] >= self.window_s:
            self._granted.popleft()

    def wait_s(self) -> float:
        """How long the next permit would wait (0: at once)."""
        now = self._clock()
        self._prune(now)
        if len(self._granted) < self.budget:
            return 0.0
        return self._granted[0] + self.window_s - now

    async def permit(self, who: str = "") -> None:
        """Return once a connection attempt fits the window; counts it."""
        delay = self.wait_s()
        if delay > 0:
            self.waits += 1
            log.warning("%s: %d connection attempts in the last %gs (our share of the exchange's limit); "
                        "the next in %.1fs", who, len(self._granted), self.window_s, delay)
            while delay > 0:
                await asyncio.sleep(delay)
                delay = self.wait_s()
        self._granted.append(self._clock())
        self.granted += 1
