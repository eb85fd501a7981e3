"""The streamer against the simulator, ccxt's real client and real Redis: bars equal `volcast bars`."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, cast

import pytest
from stream_harness import (
    PATIENCE_S,
    StreamEntries,
    delete_prefix,
    redis_bars,
    same_bars,
    stream_settings,
    streamed_to_the_end,
    unique_prefix,
    write_windows,
)

from streamer.service import run
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from volcast.bar import BarStatus
from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import RedisSettings


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # The simulator ignores the key; ccxt refuses to call historicalTrades without one.
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")


async def test_three_symbols_equal_offline_bars(tmp_path: Path, redis_mode: str, redis_config: dict[str, Any]) -> None:
    files = write_windows(tmp_path, 60)
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    shards = 3 if redis_mode == "cluster" else 1  # on the cluster, events in shards of their own slots
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    try:
        async with ReplayServer(tapes, speed=10, start_on_subscribe=True) as server:
            settings = stream_settings(server, [t.symbol for t in tapes], prefix,
                                       redis={**redis_config, "event_shards": shards})
            streamer = asyncio.create_task(run(settings))
            expected = await streamed_to_the_end(redis, keys, server, tapes, files)
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        for feed, bars in expected.items():
            streamed = await redis_bars(redis, keys, feed)
            assert streamed[0].open_time_ms == bars[0].open_time_ms
            assert all(b.status is BarStatus.COMPLETE for b in bars)
            same_bars(streamed, bars)
            health = await redis.hgetall(keys.health(feed))
            assert health[b"state"] == b"stopped"
            assert int(health[b"trades"]) == sum(cast(int, b.trades) for b in bars)  # built from trades: never None
            assert health[b"gaps"] == b"0" and health[b"duplicates"] == b"0"
            for stream in keys.event_streams(1000, shards):
                events = cast(StreamEntries, await redis.xrange(stream))
                mine = [int(e[1][b"open_time_ms"]) for e in events if e[1][b"symbol"] == feed.symbol.encode()]
                if stream == keys.feed_events(feed, shards):
                    assert mine == [b.open_time_ms for b in streamed]  # one event per bar, in order
                else:
                    assert mine == []
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()


async def test_fresh_start_backfills_the_history_while_trades_stream(tmp_path: Path,
                                                                    redis_config: dict[str, Any]) -> None:
    """A new feed on a running exchange: REST history and websocket trades meet without a hole."""
    files = write_windows(tmp_path, 60)
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    try:
        async with ReplayServer(tapes, speed=10) as server:  # publishing before anyone listens
            btc = tapes[0].symbol
            deadline = asyncio.get_running_loop().time() + PATIENCE_S
            while server.published[btc] < len(tapes[0].trades) // 3:
                assert asyncio.get_running_loop().time() < deadline, "the replay did not start"
                await asyncio.sleep(0.05)
            # Pages of 100: the history is several pages, so live trades arrive while it is fetched.
            settings = stream_settings(server, [t.symbol for t in tapes], prefix, streamer={"backfill_page": 100},
                                       redis=redis_config)
            streamer = asyncio.create_task(run(settings))
            expected = await streamed_to_the_end(redis, keys, server, tapes, files)
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        for feed, bars in expected.items():
            streamed = await redis_bars(redis, keys, feed)
            assert streamed[0].open_time_ms == bars[0].open_time_ms, feed
            same_bars(streamed, bars, statuses=False)
            health = await redis.hgetall(keys.health(feed))
            assert int(health[b"trades"]) == sum(cast(int, b.trades) for b in bars), feed
            assert health[b"gaps"] == b"0" and health[b"duplicates"] == b"0", feed
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
