"""History bootstrap against the simulator and a real Redis: a new feed's stream starts with the
exchange's candles (a real bar file, then the tape's), status ``history``, exactly; live bars
follow without overlap or gap; a restart loads nothing again; the loader keeps to the exchange's
request weight and waits out 429s; a feed whose candles fail streams live without history."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from stream_harness import (
    PATIENCE_S,
    StreamEntries,
    delete_prefix,
    offline_bars,
    redis_bars,
    stream_settings,
    unique_prefix,
    wait_for_bar,
)

from streamer.history import HistoryState, history_end_ms, load_history
from streamer.service import run
from streamer.simulator import ReplayServer, load_tape
from streamer.simulator.bar_files import load_bar_files
from streamer.simulator.faults import FaultSpec
from volcast.bar import HISTORY_MAY_LACK, Bar, BarStatus
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings, Settings

DATA = Path(__file__).parent / "data"
XRP_TRADES = DATA / "binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz"
NEAR_BARS = DATA / "binance-usdm_NEARUSDT_1m_2023-02-01_03.csv.gz"
MIN = 60_000
FEED = Feed("binance", "XRP/ETH", MIN)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")


@pytest.fixture
async def redis_on(redis_config: dict[str, Any]) -> AsyncIterator[tuple[aioredis.Redis, str, dict[str, Any]]]:
    """``redis`` on the shared single Redis and on the local Redis Cluster, with the redis section."""
    client = redis_client(RedisSettings(**redis_config))
    prefix = unique_prefix()
    try:
        yield client, prefix, redis_config
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


RedisOn = tuple[aioredis.Redis, str, dict[str, Any]]


def replay(**kwargs: Any) -> ReplayServer:
    history = load_bar_files([f"XRP/ETH={NEAR_BARS}"])
    return ReplayServer([load_tape(XRP_TRADES)], speed=kwargs.pop("speed", 600), history=history, **kwargs)


async def into_the_tape(server: ReplayServer, minutes: int) -> None:
    """Until the replay clock is ``minutes`` into the tape (so that candles of the tape exist)."""
    target = server.klines["XRP/ETH"].tape_start_ms + minutes * MIN
    deadline = time.monotonic() + PATIENCE_S
    while server.clock_ms() < target:
        assert time.monotonic() < deadline, "the replay clock does not move"
        await asyncio.sleep(0.05)


def settings_for(server: ReplayServer, prefix: str, **sections: Any) -> Settings:
    bars = {"interval": "1m", "grace": "2s", "retention": "3d", "open_bar_update": "200ms", **sections.pop("bars", {})}
    return stream_settings(server, ["XRP/ETH"], prefix, bars=bars, streamer={"max_backfill": "1h"},
                           history={"days": 2, **sections.pop("history", {})}, **sections)


def expected_history(server: ReplayServer, start_ms: int, end_ms: int) -> list[Bar]:
    """What the history must hold: the file's bars before the tape, `volcast bars` of the tape after."""
    book = server.klines["XRP/ETH"]
    with gzip.open(NEAR_BARS, "rt") as handle:
        rows = [line.strip().split(",") for line in handle][1:]
    out: list[Bar] = []
    for row in rows:
        t = int(row[0]) + book.history_shift_ms
        if start_ms <= t < end_ms:
            o, h, lo, c, v = (Decimal(x) for x in row[1:6])
            out.append(Bar(t, o, h, lo, c, v, None, None, None, None, None, None, None, BarStatus.HISTORY))
    tape = offline_bars(XRP_TRADES, MIN, server.timeline.shifts_ms[0])
    out += [replace(b, first_trade_id=None, last_trade_id=None, status=BarStatus.HISTORY)
            for b in tape if start_ms <= b.open_time_ms < end_ms]
    return out


async def health(client: aioredis.Redis, prefix: str) -> dict[str, str]:
    raw = cast(dict[bytes, bytes], await client.hgetall(RedisKeys(prefix).health(FEED)))
    return {k.decode(): v.decode() for k, v in raw.items()}


@contextlib.asynccontextmanager
async def streaming(settings: Settings) -> AsyncIterator[None]:
    task = asyncio.create_task(run(settings))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_history_then_live_bars_and_no_second_load(
        redis_on: tuple[aioredis.Redis, str, dict[str, Any]]) -> None:
    client, prefix, redis_config = redis_on
    keys = RedisKeys(prefix)
    async with replay() as server:
        await into_the_tape(server, 45)
        settings = settings_for(server, prefix, redis=redis_config)
        async with streaming(settings):
            state = await _wait_health(client, prefix, lambda h: h.get("history_state") == "loaded")
            live_from = int(state["history_to_ms"])
            await wait_for_bar(client, keys, FEED, live_from + 5 * MIN)
        bars = await redis_bars(client, keys, FEED)
        history = [b for b in bars if b.status is BarStatus.HISTORY]
        live = [b for b in bars if b.status is not BarStatus.HISTORY]
        # One timeline: the history first, then the live bars from where it ends, no gap, no overlap.
        times = [b.open_time_ms for b in bars]
        assert all(b - a == MIN for a, b in itertools.pairwise(times))
        assert bars[: len(history)] == history and history[-1].open_time_ms + MIN == live[0].open_time_ms == live_from
        # Exactly the file's bars, then exactly `volcast bars` of the tape, up to where live bars begin.
        book = server.klines["XRP/ETH"]
        assert history[0].open_time_ms < book.tape_start_ms < live_from  # both sources are in it
        assert history == expected_history(server, history[0].open_time_ms, live_from)
        assert len(history) >= 2 * 1440
        file_part = [b for b in history if b.open_time_ms < book.tape_start_ms]
        assert all(getattr(b, name) is None for b in file_part if b.volume for name in HISTORY_MAY_LACK)
        # Live bars are built from trades, as they are without history.
        offline = {b.open_time_ms: b for b in offline_bars(XRP_TRADES, MIN, server.timeline.shifts_ms[0])}
        assert [replace(b, status=BarStatus.COMPLETE) for b in live] == [
            replace(offline[b.open_time_ms], status=BarStatus.COMPLETE) for b in live]
        state = await health(client, prefix)
        assert state["history_bars"] == str(len(history)) and state["history_from_ms"] == str(times[0])
        assert int(state["history_requests"]) == server.rest.kline_requests >= len(history) / 1000
        # A restart: the stream ends with bars from trades, so no history is loaded again.
        requests = server.rest.kline_requests
        newest = bars[-1].open_time_ms
        async with streaming(settings):
            await wait_for_bar(client, keys, FEED, newest + 3 * MIN)
            assert (await _wait_health(client, prefix, lambda h: h.get("state") == "live"))["history_state"] == "kept"
        assert server.rest.kline_requests == requests
        again = await redis_bars(client, keys, FEED)
        assert again[: len(bars)] == bars
        assert sum(b.status is BarStatus.HISTORY for b in again) == len(history)
        # One event per live bar, none for history bars (also on a cluster, where a restart
        # re-sends the events of bars newer than the feed's announced mark).
        events = [int(f[b"open_time_ms"]) for _, f in cast(StreamEntries, await client.xrange(keys.bar_events(MIN)))]
        assert events == [b.open_time_ms for b in again if b.status is not BarStatus.HISTORY]


async def _wait_health(client: aioredis.Redis, prefix: str, done: Any) -> dict[str, str]:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        state = await health(client, prefix)
        if done(state):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"health never got there: {await health(client, prefix)}")


async def test_loader_keeps_to_the_weight_limit_and_waits_out_429s(redis_on: RedisOn) -> None:
    client, prefix, redis_config = redis_on
    keys = RedisKeys(prefix)
    # 60 weight per 2 s (Binance: 6000 per minute): the loader takes at most half a window, and
    # two exchangeInfo reads (20 each) already pass that; a third of the klines answers are 429s.
    faults = FaultSpec(klines_error_rate=0.3, rest_error_status=429)
    async with replay(weight_limit=60, weight_window_s=2, faults=faults) as server:
        await into_the_tape(server, 45)
        settings = settings_for(server, prefix, redis=redis_config)
        (state,) = await load_history(settings, client, keys, 60_000)
        assert state.state is HistoryState.LOADED, state.error
        bars = await redis_bars(client, keys, FEED)
        assert bars == expected_history(server, bars[0].open_time_ms, bars[-1].open_time_ms + MIN)
        assert state.to_ms is not None  # loaded: where its history ends
        assert bars[-1].open_time_ms + MIN == state.to_ms <= history_end_ms(server.clock_ms(), settings)
        weights = server.rest.weights
        assert weights.refused == 0 and weights.bans == 0  # never past the limit
        assert server.rest.injected_errors > 0 and state.budget is not None
        assert state.budget.rate_limited == server.rest.injected_errors  # each 429 waited out, none repeated
        assert state.budget.waits > 0  # it waited for windows
        assert state.requests == server.rest.kline_requests - server.rest.injected_errors


async def test_interrupted_load_goes_on_where_it_stopped(redis_on: RedisOn) -> None:
    client, prefix, redis_config = redis_on
    keys = RedisKeys(prefix)
    async with replay() as server:
        await into_the_tape(server, 45)
        settings = settings_for(server, prefix, redis=redis_config)
        (first,) = await load_history(settings, client, keys, 60_000)
        whole = await redis_bars(client, keys, FEED)
        # As if the process had stopped two pages before the end (history is written oldest first):
        # the stream as that load left it (XDEL would keep the stream's top id).
        cut = whole[-2000:]
        await client.delete(keys.bars(FEED))
        for bar in whole[:-2000]:
            await client.xadd(keys.bars(FEED), bar.to_fields(), id=f"{bar.open_time_ms}-0")  # type: ignore[arg-type]
        requests = server.rest.kline_requests
        (second,) = await load_history(settings, client, keys, 60_000)
        assert second.state is HistoryState.LOADED and second.bars >= len(cut)
        again = await redis_bars(client, keys, FEED)
        assert again[: len(whole)] == whole  # the same bars, from where the first load had got to
        assert again == expected_history(server, whole[0].open_time_ms, again[-1].open_time_ms + MIN)
        # Only what was missing (and the minutes since) was loaded, not the whole span again.
        assert len(cut) <= second.bars < len(whole) and second.requests < first.requests + 1
        assert server.rest.kline_requests - requests == second.requests


async def test_coarser_bars_are_built_from_the_minutes(redis_on: RedisOn) -> None:
    client, prefix, redis_config = redis_on
    keys = RedisKeys(prefix)
    async with replay() as server:
        await into_the_tape(server, 75)
        settings = settings_for(server, prefix, bars={"interval": "5m", "grace": "2s"}, redis=redis_config)
        feed = Feed("binance", "XRP/ETH", 5 * MIN)
        (state,) = await load_history(settings, client, keys, 60_000)
        assert state.state is HistoryState.LOADED
        bars = [Bar.from_fields(f) for _, f in cast(StreamEntries, await client.xrange(keys.bars(feed)))]
        start = server.klines["XRP/ETH"].tape_start_ms
        tape = [replace(b, first_trade_id=None, last_trade_id=None, status=BarStatus.HISTORY)
                for b in offline_bars(XRP_TRADES, 5 * MIN, server.timeline.shifts_ms[0])]
        tape_part = [b for b in bars if b.open_time_ms >= start]
        assert tape_part and tape_part == tape[: len(tape_part)]
        assert all(b.open_time_ms % (5 * MIN) == 0 for b in bars) and len(bars) >= 2 * 288


async def test_a_feed_whose_candles_fail_streams_live_without_history(redis_on: RedisOn) -> None:
    client, prefix, redis_config = redis_on
    keys = RedisKeys(prefix)
    async with replay(faults=FaultSpec(klines_error_rate=1.0, rest_error_status=503)) as server:
        await into_the_tape(server, 45)
        async with streaming(settings_for(server, prefix, redis=redis_config)):
            state = await _wait_health(client, prefix, lambda h: h.get("state") == "live")
            assert state["history_state"] == "failed" and "ExchangeNotAvailable" in state["history_error"]
            first = next(iter(await redis_bars(client, keys, FEED)), None)
            await wait_for_bar(client, keys, FEED, server.clock_ms() - server.clock_ms() % MIN - 5 * MIN)
        bars = await redis_bars(client, keys, FEED)
        assert bars and all(b.status is not BarStatus.HISTORY for b in bars)
        assert first is None or first == bars[0]
