"""Capped, jittered exponential backoff that resets after a success (after redis-py's backoff.py)."""

from __future__ import annotations

import asyncio
import logging
import random


class Backoff:
    """Delays for successive failures: ``initial * 2**n`` capped at ``maximum``, "equal jitter".

    Half the delay is fixed and half random, so a fleet reconnecting after an outage spreads out
    but never hammers the server with near-zero waits.
    """

    def __init__(self, initial_s: float, maximum_s: float, rng: random.Random | None = None) -> None:
        if initial_s <= 0 or maximum_s < initial_s:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The wait before the next attempt; counts one more failure."""
        cap = min(self.maximum_s, self.initial_s * float(2 ** min(self.failures, 32)))
        self.failures += 1
        return cap / 2 + self._rng.uniform(0, cap / 2)

    def reset(self) -> None:
        self.failures = 0


async def retry_later(backoff: Backoff, exc: BaseException, log: logging.Logger) -> None:
    """Log a Redis outage on ``log`` and wait out the backoff's next delay."""
    delay = backoff.next_delay()
    log.warning("Redis unavailable (%s); retrying in %.1fs", exc, delay)
    await asyncio.sleep(delay)
