"""Closing on proofs through every fault at once (issue 12, "Done when"): the real ccxt client
against the simulator with dropped connections, duplicated, reordered and broken frames, and a
stalled feed whose connections still answer pings (the case a pong cannot see), on a busy symbol
and two quieter ones. The bars must equal ``volcast bars`` of the same trades or say ``gap``, and
no trade may come for a bar already closed (``late``): a pong during the stall must not have
closed a bar short."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, cast

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
from volcast.bar import BarStatus
from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import RedisSettings

pytestmark = pytest.mark.slow

# Replay seconds (speed 5: 60 s of trades in 12 s). The feed goes silent for 2 s (10 s of trades)
# while pings are still answered; the watchdog (20 s) is longer than the silence, so it is the
# flow guard, not a reconnect, that must keep the bars from closing on pongs.
FAULTS = ("drop_every_s=5,duplicate_rate=0.02,reorder_window=4,malformed_rate=0.01,"
          "silent_after_s=4,silent_for_s=2")


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")


async def test_every_fault_at_once_gives_the_offline_bars_or_honest_gaps(
    tmp_path: Path, redis_config: dict[str, Any]
) -> None:
    files = write_windows(tmp_path, 60)  # BTC/USDT (busy), ETH/USDT, XRP/ETH
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    health: dict[str, dict[str, int]] = {}
    try:
        server = ReplayServer(tapes, speed=5, faults=parse_faults(FAULTS), seed=11, start_on_subscribe=True)
        async with server:
            settings = stream_settings(server, [t.symbol for t in tapes], prefix, streamer={"watchdog": "20s"},
                                       redis=redis_config)
            streamer = asyncio.create_task(run(settings))
            expected = await streamed_to_the_end(redis, keys, server, tapes, files)
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        for feed, bars in expected.items():
            streamed = await redis_bars(redis, keys, feed)
            want = {b.open_time_ms: b for b in bars}
            # Every bar the replay covers is there; one that is not a gap equals the offline one.
            same_bars([b for b in streamed if b.status is not BarStatus.GAP],
                      [b for b in bars if b.open_time_ms not in
                       {g.open_time_ms for g in streamed if g.status is BarStatus.GAP}], statuses=False)
            assert {b.open_time_ms for b in streamed} >= set(want), feed
            raw = cast(dict[bytes, bytes], await redis.hgetall(keys.health(feed)))
            health[feed.symbol] = {k.decode(): int(v) for k, v in raw.items() if v.lstrip(b"-").isdigit()}
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
    for symbol, h in health.items():
        # No bar closed before a trade of its interval came (such a trade would amend its bar).
        assert h["late"] == h["amended"] == 0, symbol
        assert h["gap_bars"] == 0, symbol  # every loss was refetched: nothing had to be flagged
    assert sum(h["reconnects"] for h in health.values()) >= 3  # the drops
    assert sum(h["duplicates"] for h in health.values()) > 0
    assert sum(h["malformed"] for h in health.values()) > 0
    assert sum(h["stalls"] for h in health.values()) >= 1  # the silence was seen on the busy flow
