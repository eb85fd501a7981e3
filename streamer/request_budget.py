"""A share of an exchange's REST request-weight limit, for bulk work that must not starve the rest.

Binance limits REST requests per IP by weight (GET /api/v3/klines: 2) within fixed windows (6000
per minute, listed in ``exchangeInfo``'s ``rateLimits``), reports the weight used so far in
``X-MBX-USED-WEIGHT-(n)(unit)`` on every answer, and answers 429 (then 418, an IP ban of 2 minutes
up to 3 days) with ``Retry-After`` past the limit. The history loader spends at most ``share``
of each window (half by default), so the feeds' own backfills and any other client on the
machine keep the rest; it counts its own requests and believes the exchange's count when that
is higher (other clients on the same IP); and it stops every request until ``Retry-After`` has
passed once the exchange said 429 or 418.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HISTORY_SHARE = 0.5
_UNITS_S = {"S": 1, "M": 60, "H": 3_600, "D": 86_400}
_USED_HEADER = re.compile(r"x-mbx-used-weight-(\d+)([smhd])$", re.IGNORECASE)
DEFAULT_RETRY_AFTER_S = 60.0  # a 429 or 418 without Retry-After: wait a minute window out


def rate_limits(exchange_info: Mapping[str, Any]) -> list[tuple[int, int]]:
    """``(window seconds, weight limit)`` of every REQUEST_WEIGHT entry of Binance's exchangeInfo."""
    units = {"SECOND": 1, "MINUTE": 60, "HOUR": 3_600, "DAY": 86_400}
    out: list[tuple[int, int]] = []
    for entry in exchange_info.get("rateLimits") or []:
        if not isinstance(entry, dict) or entry.get("rateLimitType") != "REQUEST_WEIGHT":
            continue
        try:
            window = units[str(entry["interval"])] * int(entry.get("intervalNum", 1))
            limit = int(entry["limit"])
        except (KeyError, TypeError, ValueError):
            continue
        if window > 0 and limit > 0:
            out.append((window, limit))
    return out


@dataclass(slots=True)
class _Window:
    seconds: int
    budget: int  # our share of the limit
    index: int = -1
    used: int = 0  # by us, or by everyone as the exchange last said if that is more


class WeightBudget:
    """Waits before a request until the weight it costs fits our share of every window.

    Without limits (an exchange that does not list them) it only honours Retry-After: ccxt's own
    throttle (``enableRateLimit``) then paces the requests.
    """

    def __init__(self, limits: Sequence[tuple[int, int]] = (), share: float = HISTORY_SHARE,
                 clock: Callable[[], float] = time.time) -> None:
        self.share = share
        self.clock = clock
        self.waits = 0  # requests that had to wait for a window (or a Retry-After)
        self.waited_s = 0.0
        self.rate_limited = 0  # 429 and 418 answers seen
        self.spent = 0  # weight of our requests
        self._paused_until = 0.0
        self._windows: list[_Window] = []
        self.set_limits(limits)

    def set_limits(self, limits: Sequence[tuple[int, int]]) -> None:
        """``(window seconds, limit)`` pairs: the exchange's; we keep to ``share`` of each."""
        self.limits = tuple(limits)
        self._windows = [_Window(s, max(1, math.floor(limit * self.share))) for s, limit in self.limits]

    def pause(self, seconds: float) -> None:
        """No request before ``seconds`` from now."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)

    def _roll(self, now: float) -> None:
        for window in self._windows:
            index = int(now // window.seconds)
            if index != window.index:
                window.index, window.used = index, 0

    async def spend(self, weight: int) -> None:
        """Return once a request of ``weight`` fits; counts it as spent."""
        waited = False
        while True:
            now = self.clock()
            self._roll(now)
            delay = self._paused_until - now
            for window in self._windows:
                if window.used + weight > window.budget:
                    delay = max(delay, (window.index + 1) * window.seconds - now)
            if delay <= 0:
                break
            waited = True
            self.waited_s += delay
            await asyncio.sleep(delay + 0.01)
        if waited:
            self.waits += 1
        for window in self._windows:
            window.used += weight
        self.spent += weight

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """An answer's headers: the exchange's weight count, and its Retry-After on 429/418."""
        now = self.clock()
        self._roll(now)
        for name, value in headers.items():
            match = _USED_HEADER.match(name)
            if match is None:
                continue
            seconds = int(match.group(1)) * _UNITS_S[match.group(2).upper()]
            for window in self._windows:
                if window.seconds == seconds and value.strip().isdigit():
                    window.used = max(window.used, int(value))
        if status in (418, 429):
            self.rate_limited += 1
            retry = _retry_after(headers)
            self.pause(DEFAULT_RETRY_AFTER_S if retry is None else retry)

    def pause_left_s(self) -> float:
        return max(0.0, self._paused_until - self.clock())


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None
