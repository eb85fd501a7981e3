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
from streamer.tick_grid import TICK_S, until_next_tick


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False))
def test_the_next_tick_is_the_next_multiple_of_the_tick(now: float) -> None:
    wait = until_next_tick(now)
    assert 0 < wait <= TICK_S + 1e-9
    ticks = (now + wait) / TICK_S
    assert math.isclose(ticks, round(ticks), rel_tol=0, abs_tol=1e-6)


async def test_feeds_started_apart_wake_the_loop_together() -> None:
    """Forty tickers started over 40 ms: the ones that wait for the same tick all wake within a
    loop turn of each other (a plain sleep of one tick would keep their 40 ms apart)."""
    loop = asyncio.get_running_loop()
    woke: dict[int, list[float]] = {}  # tick number -> when each ticker waiting for it woke

    async def ticker() -> None:
        for _ in range(6):
            wait = until_next_tick(loop.time())
            tick = round((loop.time() + wait) / TICK_S)
            await asyncio.sleep(wait)
            woke.setdefault(tick, []).append(loop.time())

    started = loop.time()
    tasks = []
    for _ in range(40):
        tasks.append(asyncio.create_task(ticker()))
        await asyncio.sleep(0.001)  # the feeds start over 40 ms, as they do when they come live
    spread = loop.time() - started
    await asyncio.gather(*tasks)
    assert sum(len(times) for times in woke.values()) == 240
    # 6 ticks each, and the starts span at most one tick more (two on a loaded machine).
    assert len(woke) <= 6 + math.ceil(spread / TICK_S), sorted(woke)
    # Within a tick: one turn, give or take the machine's scheduling (a loaded CI machine can stop
    # the process for a few ms inside a turn), far below the 40 ms the starts are apart.
    assert spread >= 0.035
    assert max(max(times) - min(times) for times in woke.values()) < 0.015, woke


async def test_the_probers_look_between_pings_falls_on_the_feeds_tick() -> None:
    """The liveness prober looks at its flows every tick (streamer/liveness.py ``_send_due``): on
    the feeds' grid, in their loop turn, not on a timer of its own (20 more wake-ups a second)."""
    exchange = SimpleNamespace(id="x", clients={}, has={})  # no connection: only the look is timed
    liveness = Liveness(exchange, keepalive_s=10.0, on_proof=lambda _probe: None)
    loop = asyncio.get_running_loop()
    for _ in range(5):
        look_at = loop.time() + liveness._send_due()
        assert abs(look_at - round(look_at / TICK_S) * TICK_S) < 0.001, look_at
        assert look_at - loop.time() <= TICK_S + 1e-9
        await asyncio.sleep(0.013)  # from another moment of the tick
