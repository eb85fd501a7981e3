"""Every feed of a streamer ticks at the same moments, and the liveness prober looks at its flows
on them (streamer/tick_grid.py ``until_next_tick``): their timers fall due in one event-loop turn,
one wake-up a tick for the process, not one per feed."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from streamer.liveness import Liveness
from streamer.tick_grid import TICK_S as _TICK_S
from streamer.tick_grid import until_next_tick


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False))
def test_the_next_tick_is_the_next_multiple_of_the_tick(now: float) -> None:
    wait = until_next_tick(now)
    assert 0 < wait <= _TICK_S + 1e-9
    ticks = (now + wait) / _TICK_S
    assert math.isclose(ticks, round(ticks), rel_tol=0, abs_tol=1e-6)


async def test_feeds_started_apart_wake_the_loop_together() -> None:
    """Forty tickers started at different moments: their timers are due in the same loop turns."""
    loop = asyncio.get_running_loop()
    turns: list[float] = []

    async def ticker() -> None:
        for _ in range(6):
            await asyncio.sleep(until_next_tick(loop.time()))
            turns.append(round(loop.time() * 1000))  # the millisecond it woke in

    tasks = []
    for _ in range(40):
        tasks.append(asyncio.create_task(ticker()))
        await asyncio.sleep(0.001)  # the feeds start over 40 ms, as they do when they come live
    await asyncio.gather(*tasks)
    assert len(turns) == 240
    # 6 moments, one per tick (a turn may straddle a millisecond), not 40 x 6 as with a plain sleep
    assert len(set(turns)) <= 12, sorted(set(turns))


async def test_the_probers_look_between_pings_falls_on_the_feeds_tick() -> None:
    """The liveness prober looks at its flows every tick (streamer/liveness.py ``_send_due``): on
    the feeds' grid, in their loop turn, not on a timer of its own (20 more wake-ups a second)."""
    exchange = SimpleNamespace(id="x", clients={}, has={})  # no connection: only the look is timed
    liveness = Liveness(exchange, keepalive_s=10.0, on_proof=lambda _probe: None)
    loop = asyncio.get_running_loop()
    for _ in range(5):
        look_at = loop.time() + liveness._send_due()
        assert abs(look_at - round(look_at / _TICK_S) * _TICK_S) < 0.001, look_at
        assert look_at - loop.time() <= _TICK_S + 1e-9
        await asyncio.sleep(0.013)  # from another moment of the tick
