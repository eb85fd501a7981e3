"""Bars close on proofs, end to end (real ccxt client, the simulator, real Redis): a busy symbol's
bars close on its next trade, a quiet symbol's on a pong, nobody reconnects a live connection
whose symbol is quiet, and the bars still equal ``volcast bars`` of the same trades. Status shows
how each feed's bars closed."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import WSMsgType
from stream_harness import (
    TRADE_FILES,
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
from volcast.status_render import render_table
from volcast.status_report import collect_status

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")


async def test_quiet_symbols_close_on_pongs_and_are_never_reconnected(
    tmp_path: Path, redis_config: dict[str, Any]
) -> None:
    files = write_windows(tmp_path, 60)  # BTC/USDT (busy), ETH/USDT, XRP/ETH (a trade every few seconds)
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    try:
        async with ReplayServer(tapes, speed=5, start_on_subscribe=True) as server:
            # XRP/ETH is silent for 17 s of the replay (3.4 s here), longer than the watchdog: the
            # old watchdog ("no trade for 2s") reconnected it and backfilled over REST each time.
            settings = stream_settings(server, [t.symbol for t in tapes], prefix, streamer={"watchdog": "2s"},
                                       redis=redis_config)
            streamer = asyncio.create_task(run(settings))
            expected = await streamed_to_the_end(redis, keys, server, tapes, files)
            report = await collect_status(redis, settings)
            limits = server.ws_limits.snapshot()
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        health = {}
        for feed, bars in expected.items():
            streamed = await redis_bars(redis, keys, feed)
            same_bars(streamed, bars, statuses=False)
            assert all(b.status is not BarStatus.GAP for b in streamed)
            raw = cast(dict[bytes, bytes], await redis.hgetall(keys.health(feed)))
            health[feed.symbol] = {k.decode(): int(v) for k, v in raw.items() if v.lstrip(b"-").isdigit()}
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
    btc, xrp = health["BTC/USDT"], health["XRP/ETH"]
    for symbol, h in health.items():
        # No bar closed before a trade of its interval came (such a trade would amend its bar).
        assert h["late"] == h["amended"] == 0, symbol
    assert xrp["reconnects"] == 0 and xrp["watchdog_timeouts"] == 0
    assert xrp["closed_by_liveness"] > 0 and xrp["pongs"] > 0
    # A busy symbol's bars close on the next trade; a pong is for the bars without one.
    assert btc["closed_by_trade"] >= 40
    assert btc["closed_by_trade"] > btc["closed_by_liveness"] + btc["closed_by_rest"]
    # Measured, but meaningful only at real speed: against this replay (5x) the clock estimate lags.
    assert btc["delivery_max_ms"] >= btc["delivery_p99_ms"] >= btc["delivery_p50_ms"]
    # Pings and subscriptions stay within Binance's 5 messages a second per connection: the
    # symbols share a connection, whose subscriptions go out 2 a second, and a ping waits while
    # 2 went out in the last second (liveness.py): 4 at most, the server's pongs not counted.
    assert limits["message_violations"] == 0 and limits["peak_messages_per_s"] <= 4
    # volcast status shows it.
    closing = {f["symbol"]: f["closing"] for f in report["feeds"]}
    assert closing["XRP/ETH"]["closed_by_liveness"] is not None
    assert "CLOSED TRADE/PONG/REST" in render_table(report)


async def test_the_simulator_answers_pings_with_their_payload() -> None:
    async with (
        ReplayServer([load_tape(TRADE_FILES[0])], speed=1) as server,
        aiohttp.ClientSession() as session,
        session.ws_connect(server.ws_url + "/0", autoping=False) as ws,
    ):
        await ws.ping(b"\x00\x00\x00\x00\x00\x00\x00\x07")
        message = await asyncio.wait_for(ws.receive(), 10)
    assert message.type is WSMsgType.PONG and message.data == b"\x00\x00\x00\x00\x00\x00\x00\x07"
