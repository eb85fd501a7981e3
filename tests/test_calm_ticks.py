"""A quiet feed's ticker wakes only when something may be due (streamer/feed.py ``_calm_until``),
and the liveness prober looks at quiet flows once a second (liveness.py ``_send_due``), both on
the process's grid (streamer/tick_grid.py); a quiet symbol's bars still close on pongs as fast,
exact (real ccxt client, the simulator, real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from stream_harness import delete_prefix, redis_bars, stream_settings, unique_prefix

from streamer.exchange_link import now_ms
from streamer.feed import FeedRunner
from streamer.liveness import Liveness
from streamer.service import run
from streamer.simulator import ReplayServer, synthetic_tape
from streamer.simulator.tape import Tape
from streamer.tick_grid import TICK_S
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings

BAR_MS = 2_000
GRACE_MS = 200


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")


async def test_a_quiet_feed_ticks_once_a_second_between_bar_ends_and_still_closes_on_pongs(
    monkeypatch: pytest.MonkeyPatch, redis_config: dict[str, Any]
) -> None:
    flood = synthetic_tape("BTC/USDT", 8)
    # A trade every 1.5 s: a cold flow (ids consecutive, as Binance's).
    tape = Tape("BTC/USDT", tuple(replace(t, timestamp_ms=flood.trades[0].timestamp_ms + i * 1_500)
                                  for i, t in enumerate(flood.trades)))
    ticks: list[tuple[int, int | None]] = []  # (our clock, the pending bar's end on our clock)
    tick = FeedRunner.tick

    def counted_tick(runner: FeedRunner) -> None:  # instruments the real tick, replaces nothing
        ticks.append((now_ms(), runner.pending_end_local_ms()))
        tick(runner)

    monkeypatch.setattr(FeedRunner, "tick", counted_tick)
    prefix = unique_prefix()
    keys = RedisKeys(prefix)
    feed = Feed("binance", "BTC/USDT", BAR_MS)
    redis = redis_client(RedisSettings(**redis_config))
    try:
        async with ReplayServer([tape], speed=1, start_on_subscribe=True) as server:
            settings = stream_settings(server, ["BTC/USDT"], prefix, redis=redis_config,
                                       bars={"interval": "2s", "grace": f"{GRACE_MS}ms", "open_bar_update": "1s"},
                                       streamer={"watchdog": "30s"})
            streamer = asyncio.create_task(run(settings))
            await asyncio.wait_for(server.done.wait(), 60)
            await asyncio.sleep(BAR_MS * 2 / 1000)  # the last trade's bar closes on a pong
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        bars = await redis_bars(redis, keys, feed)
        raw = await redis.hgetall(keys.health(feed))
        health = {k.decode(): int(v) for k, v in raw.items() if v.lstrip(b"-").isdigit()}
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
    assert sum(b.trades for b in bars) == len(tape.trades)  # every trade in a closed bar, once
    assert health["late"] == health["amended"] == 0
    assert health["closed_by_liveness"] >= 4
    # As fast as with a tick every 50 ms: a pong closes the bar, a tick's worth after end + grace at most.
    assert health["close_delay_max_ms"] <= GRACE_MS + 2 * TICK_S * 1000 + 150, health
    live = [(at, end) for at, end in ticks if end is not None]
    span_s = (live[-1][0] - live[0][0]) / 1000
    # Well before a bar's end: a tick a second, and the one after each close that finds the feed
    # calm again (~1.5 a second with 2 s bars; ~16 a second with a tick every 50 ms).
    mid_bar = [at for at, end in live if end - at > 400]
    assert len(mid_bar) <= 2 * span_s + 2, (len(mid_bar), span_s)
    assert len(live) < 0.5 * span_s / TICK_S, (len(live), span_s)  # every 50 ms before
    # ... and the ticker is awake from shortly before each end to its close.
    near_end = [at for at, end in live if -GRACE_MS <= end - at <= 300]
    assert len(near_end) >= 3 * 3, len(near_end)


async def test_the_prober_looks_on_the_tick_while_a_flow_is_busy_and_each_second_while_none_is() -> None:
    exchange = SimpleNamespace(id="x", clients={}, has={})  # no connection: only the looks are timed
    liveness = Liveness(exchange, keepalive_s=10.0, on_proof=lambda _probe: None)
    loop = asyncio.get_running_loop()

    def next_look_at() -> float:
        return loop.time() + liveness._send_due()

    def on_grid(at: float, period_s: float) -> bool:
        return abs(at - round(at / period_s) * period_s) < 0.001

    quiet = next_look_at()
    assert on_grid(quiet, 1.0) and quiet - loop.time() <= 1.0
    for i in range(100):  # a frame every 10 ms: a busy flow
        liveness.flow.note(i * 0.01)
    busy = next_look_at()
    assert on_grid(busy, TICK_S) and busy - loop.time() <= TICK_S + 1e-9
