"""Amended bars end to end (issue 12): the real ccxt client against the simulator, whose BTC/USDT
stream lags 800 ms behind the rest of the exchange for a few seconds (fault ``late_*``) while the
grace is 200 ms. BTC/USDT's bars then close on pongs (ETH/USDT's trades show the exchange past
their end) before their last trades arrive; those trades amend their bars, which are rewritten in
Redis as revisions and announced again, and the forecaster publishes a revised forecast that an
MQTT subscriber receives. At the end every bar equals ``volcast bars`` of the same trades: the
final bars are exact. On the single Redis and on the local cluster."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, cast

import pytest
from stream_harness import (
    TRADE_FILES,
    StreamEntries,
    same_bars,
    stream_settings,
    streamed_to_the_end,
    unique_prefix,
    write_windows,
)
from worker_harness import clear_retained, delete_prefix, listening, worker

from streamer.service import run
from streamer.simulator.faults import parse_faults
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from volcast.bar import Bar
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys

pytestmark = pytest.mark.slow

LATE = "late_after_s=4,late_for_s=6,late_ms=800"


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")


async def test_late_trades_amend_their_bars_which_end_exact_and_are_forecast_again(
        tmp_path: Path, redis_config: dict[str, Any]) -> None:
    files = write_windows(tmp_path, 20, TRADE_FILES[:2])  # BTC/USDT (busy, the lagging one), ETH/USDT
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    keys = RedisKeys(prefix)
    btc = Feed("binance", "BTC/USDT", 1000)
    server = ReplayServer(tapes, speed=1, faults=parse_faults(LATE), seed=3, start_on_subscribe=True)
    async with server:
        settings = stream_settings(
            # One connection for both symbols (ccxt spreads symbols over 50 by default; 100 symbols
            # share them two by two): its flow, ETH/USDT's trades, runs on while BTC/USDT lags, so
            # a pong proves BTC/USDT's bars; alone on its connection, the flow guard would hold
            # them back to its own newest trade.
            server, [t.symbol for t in tapes], prefix, exchange_options={"streamLimits": {"spot": 1}},
            redis={**redis_config, "key_prefix": prefix},
            mqtt={"topic_prefix": prefix}, model={"look_back": 8, "hidden": 4},
            refit={"model_dir": str(tmp_path / "models")}, forecaster={"claim_idle": "1s"})
        try:
            async with redis_client(settings.redis) as redis, worker(settings), listening(settings) as listener:
                streamer = asyncio.create_task(run(settings))
                try:
                    expected = await streamed_to_the_end(redis, keys, server, tapes, files)
                    await asyncio.sleep(1.5)  # the last revisions' events (bars beyond the tapes' end close on pongs)
                finally:
                    streamer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await streamer
                entries = {feed: cast(StreamEntries, await redis.xrange(keys.bars(feed))) for feed in expected}
                health = {feed: await redis.hgetall(keys.health(feed)) for feed in expected}
                for _ in range(200):  # the revisions' forecasts
                    if any(p.revision for p in listener.received):
                        break
                    await asyncio.sleep(0.05)
                received = list(listener.received)
        finally:
            await delete_prefix(settings)
            await clear_retained(settings)
    for feed, want in expected.items():
        # Final bars, one per open time, equal the offline ones (statuses too: amended, still complete).
        same_bars([Bar.from_fields(fields) for _, fields in entries[feed]], want)
        assert int(health[feed][b"late"]) == 0, feed
    revised = {int(i.split(b"-")[0]): int(f[b"rev"]) for i, f in entries[btc] if b"rev" in f}
    assert revised, "no BTC/USDT bar was amended: the fault did not make any trade late"
    assert int(health[btc][b"amended"]) >= len(revised) and int(health[btc][b"bars_amended"]) >= len(revised)
    assert all(i.endswith(b"-%d" % revised[int(i.split(b"-")[0])]) for i, _ in entries[btc]
               if int(i.split(b"-")[0]) in revised)
    # The subscriber got revised forecasts; one made from a bar's final revision saw its final volume.
    final = {int(i.split(b"-")[0]): Bar.from_fields(f) for i, f in entries[btc]}
    revisions = [p for p in received if p.feed.symbol == "BTC/USDT" and p.revision]
    assert revisions, "no revised forecast reached the subscriber"
    latest = [p for p in revisions if revised.get(p.last_bar_ms) == p.revision]
    assert latest and all(p.last_volume == float(final[p.last_bar_ms].volume) for p in latest)
