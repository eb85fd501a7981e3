"""Binance's request weight, per IP: counted, reported and enforced as the exchange does.

Every REST endpoint has a weight (Binance spot's documented values below); the weights of all
requests within a fixed window (a calendar minute on Binance) add up, every answer says the sum
so far in ``X-MBX-USED-WEIGHT-1M`` (``-<n>S`` for a window of n seconds), and a request that would
pass the limit is refused with 429, code -1003 and ``Retry-After`` (seconds until the window
ends). A client that keeps asking after 429s is banned: 418 with ``Retry-After`` until the ban
ends, 2 minutes for the first ban, doubling per ban up to 3 days (Binance: "from 2 minutes to 3
days"). All loopback clients are one IP here, as all of a machine's clients are on Binance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# https://developers.binance.com/docs/binance-spot-api-docs/rest-api (weights of GET /api/v3/...)
ENDPOINT_WEIGHTS: dict[str, int] = {
    "ping": 1,
    "time": 1,
    "exchangeInfo": 20,
    "trades": 25,
    "historicalTrades": 25,
    "aggTrades": 4,
    "klines": 2,
}
BINANCE_LIMIT = 6000  # REQUEST_WEIGHT per minute, as exchangeInfo's rateLimits say
REFUSALS_BEFORE_BAN = 5  # 429s in one window after which the next request is a ban (not documented)
FIRST_BAN_S = 120
MAX_BAN_S = 3 * 86_400


@dataclass(frozen=True, slots=True)
class Refused:
    status: int  # 429 or 418
    retry_after_s: int
    code: int
    msg: str


class RequestWeights:
    """The weight used in the current window; ``limit`` None only counts (never refuses)."""

    def __init__(
        self, limit: int | None = BINANCE_LIMIT, window_s: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        if window_s <= 0 or window_s != int(window_s) or (limit is not None and limit <= 0):
            raise ValueError("the weight window must be whole seconds and the limit positive")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._window = -1
        self.used = 0
        self.total = 0  # weight of every request served since the start
        self.refused = 0  # 429s sent
        self.bans = 0  # 418 bans started
        self.peak = 0  # the most weight used in one window
        self._refused_in_window = 0
        self._banned_until = 0.0

    @property
    def header(self) -> str:
        """``X-MBX-USED-WEIGHT-(intervalNum)(intervalLetter)``."""
        if self.window_s % 60 == 0:
            return f"X-MBX-USED-WEIGHT-{int(self.window_s // 60)}M"
        return f"X-MBX-USED-WEIGHT-{int(self.window_s)}S"

    def rate_limit(self) -> dict[str, object]:
        """The REQUEST_WEIGHT entry of exchangeInfo's ``rateLimits``."""
        minutes = self.window_s % 60 == 0
        return {
            "rateLimitType": "REQUEST_WEIGHT",
            "interval": "MINUTE" if minutes else "SECOND",
            "intervalNum": int(self.window_s // 60) if minutes else int(self.window_s),
            "limit": self.limit if self.limit is not None else BINANCE_LIMIT,
        }

    def _roll(self, now: float) -> None:
        window = int(now // self.window_s)
        if window != self._window:
            self._window = window
            self.used = 0
            self._refused_in_window = 0

    def charge(self, weight: int) -> Refused | None:
        """Count a request of ``weight``; the refusal to send instead, if it may not be served."""
        now = self._clock()
        self._roll(now)
        if now < self._banned_until:
            return Refused(418, math.ceil(self._banned_until - now), -1003,
                           "Way too much request weight used; IP banned until the ban ends.")
        if self.limit is not None and self.used + weight > self.limit:
            self._refused_in_window += 1
            if self._refused_in_window > REFUSALS_BEFORE_BAN:
                ban = min(MAX_BAN_S, FIRST_BAN_S * 2**self.bans)
                self.bans += 1
                self._banned_until = now + ban
                return Refused(418, ban, -1003, "Way too much request weight used; IP banned.")
            self.refused += 1
            retry = max(1, math.ceil((self._window + 1) * self.window_s - now))
            return Refused(429, retry, -1003, f"Too much request weight used; current limit is {self.limit} "
                           f"request weight per {self.window_s:g} s. Please use WebSocket Streams for live updates.")
        self.used += weight
        self.total += weight
        self.peak = max(self.peak, self.used)
        return None
