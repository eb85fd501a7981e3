"""One grid of moments on the event loop's clock for a process's periodic wake-ups.

A wake-up costs a streamer ~100 us before any work (epoll, the loop's turn, the timer heap;
measured on the 2-core test machine). Each feed's ticker (50 ms) and watchdog (1 s) and the
liveness prober's look at its flows (50 ms) sleep to the next multiple of their period on the
loop's clock instead of for their period from now: periods that divide one another then fall due
in the same loop turn, so the process wakes once for all of them. The wait is never longer than
the period.

A busy connection's rest (``streamer.read_hold``, receive_pump.py) ends on the grid of the hold,
50 ms by default, at least a quarter of a hold away: to the 10 ms grid with no such floor it
ended sooner than a hold and added ~20% reads (docs/benchmarks.md 2026-12-06 13:27). Not on the
grid: the status writes, which on the second would come with the bar ends.
"""

from __future__ import annotations

import asyncio
import math

TICK_S = 0.05  # a feed's ticker, and the prober's look at the flows between pings


def until_next_tick(loop_time: float, period_s: float = TICK_S) -> float:
    """Seconds to the next multiple of ``period_s`` on the event loop's clock (0 < result <= period)."""
    return (math.floor(loop_time / period_s) + 1) * period_s - loop_time


async def sleep_to_tick(period_s: float = TICK_S) -> None:
    """Sleep to the next multiple of ``period_s`` on the running loop's clock."""
    await asyncio.sleep(until_next_tick(asyncio.get_running_loop().time(), period_s))
