"""One symbol's stream stops inside a connection it shares with others (the simulator's ``mute_*``
fault): the connection's trade flow goes on with the neighbours' trades and every ping is answered,
so neither the connection's flow guard nor the watchdog sees anything wrong. The busy symbol's own
silence must keep its bars from closing on pongs (streamer/feed_flow.py): they close by REST checks
instead, equal to the offline bars, and a stream that never comes back is dialled again.

The replay runs at real speed: the silence floor (1 s) is on our clock, so at 5x a second of trade
time would have closed five bars before the silence could be told from a gap between trades.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from stream_harness import (
    delete_prefix,
    redis_bars,
    same_bars,
    stream_settings,
    streamed_to_the_end,
    unique_prefix,
    write_windows,
)

from streamer.service import run
from streamer.simulator.faults import parse_faults
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import RedisSettings

pytestmark = pytest.mark.slow

# 16 s of trades: BTC/USDT (34 trades a second, its longest gap 0.6 s) shares one connection with
# ETH/USDT (6 a second) and XRP/ETH (a few in all). Its stream stops 7 s in (past the 5 s its
# own flow needs to be judged), for 4 s or for good.
SECONDS = 16


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")


async def _stream_muted(tmp_path: Path, redis_config: dict[str, Any], faults: str) -> dict[str, dict[str, int]]:
    """Replay with ``faults``; assert every bar equals the offline one; return each symbol's health."""
    files = write_windows(tmp_path, SECONDS)
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    health: dict[str, dict[str, int]] = {}
    try:
        server = ReplayServer(tapes, speed=1, faults=parse_faults(faults), seed=3, start_on_subscribe=True)
        async with server:
            # The watchdog is longer than the replay: a stream dialled again is the muted feed's doing.
            settings = stream_settings(server, [t.symbol for t in tapes], prefix, redis=redis_config,
                                       streamer={"watchdog": "60s", "symbols_per_connection": 5})
            streamer = asyncio.create_task(run(settings))
            expected = await streamed_to_the_end(redis, keys, server, tapes, files)
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        for feed, bars in expected.items():
            same_bars(await redis_bars(redis, keys, feed), bars, statuses=False)
            raw = await redis.hgetall(keys.health(feed))
            health[feed.symbol] = {k.decode(): int(v) for k, v in raw.items() if v.lstrip(b"-").isdigit()}
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
    for symbol, h in health.items():
        assert h["late"] == h["amended"] == 0, symbol  # no bar closed short
        assert h["gap_bars"] == 0, symbol
    return health


async def test_a_stream_stopped_inside_a_shared_connection_holds_its_bars_until_rest_shows_them(
    tmp_path: Path, redis_config: dict[str, Any]
) -> None:
    health = await _stream_muted(tmp_path, redis_config, "mute_after_s=7,mute_for_s=4")
    busy = health["BTC/USDT"]
    assert busy["stalls"] >= 1 and busy["rest_checks"] >= 1, busy


async def test_a_stream_that_never_comes_back_is_dialled_again_and_its_bars_close_by_rest(
    tmp_path: Path, redis_config: dict[str, Any]
) -> None:
    health = await _stream_muted(tmp_path, redis_config, "mute_after_s=7,mute_for_s=600")
    busy = health["BTC/USDT"]
    assert busy["reconnects"] >= 1, busy  # REST had trades its stream did not send: dialled again
    # From then on every bar waits for a REST read (its trades advance the frontier: most bars then
    # close by trade proof).
    assert busy["rest_checks"] >= 3, busy
