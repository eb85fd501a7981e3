"""One grid of moments on the event loop's clock for a process's periodic wake-ups.

A wake-up costs a streamer ~100 us before any work (epoll, the loop's turn, the timer heap;
measured on the 2-core test machine), and a process has several periodic ones: each feed's ticker
(50 ms), its watchdog (1 s), the liveness prober's look at the flows (50 ms), the status writes
(1 s). Each sleeps to the next multiple of its period on the loop's clock instead of for its period
from now: periods that divide one another then fall due in the same loop turn, so the process
wakes once for all of them. The wait is never longer than the period.

Not a busy connection's rest (``streamer.read_hold``, receive_pump.py): a rest to the 10 ms grid
ends sooner than a hold from its start, and the reads it adds (~20% more, strace) cost more than
the timer wake-ups they would carry (docs/benchmarks.md, 2026-12-06 13:27).
"""

from __future__ import annotations

import asyncio
import math

TICK_S = 0.05  # a feed's ticker, and the prober's look at the flows between pings


def until_next_tick(loop_time: float, period_s: float = TICK_S) -> float:
    """Seconds to the next multiple of ``period_s`` on the event loop's clock (0 < result <= period)."""
    return (math.floor(loop_time / period_s) + 1) * period_s - loop_time


def next_tick_at(loop_time: float, period_s: float = TICK_S) -> float:
    """The loop time of the next multiple of ``period_s`` (for ``asyncio.timeout_at``)."""
    return (math.floor(loop_time / period_s) + 1) * period_s


async def sleep_to_tick(period_s: float = TICK_S) -> None:
    """Sleep to the next multiple of ``period_s`` on the running loop's clock."""
    await asyncio.sleep(until_next_tick(asyncio.get_running_loop().time(), period_s))
