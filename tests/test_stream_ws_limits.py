"""Binance's websocket limits: the simulator counts and enforces them (5 incoming messages a second
per connection, pings and pongs included; 1024 streams per connection; 300 connection attempts per
5 minutes), and the streamer stays within them, also when every connection drops at once and
again (real ccxt client, real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from stream_harness import PATIENCE_S, TRADE_FILES, delete_prefix, stream_settings, unique_prefix, write_windows

from streamer.dial_budget import DialBudget
from streamer.service import run
from streamer.simulator.faults import parse_faults
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from streamer.simulator.ws_limits import ConnectionCounter, WebsocketLimits
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limits_count_messages_per_second_streams_and_attempts() -> None:
    clock = _Clock()
    limits = WebsocketLimits(attempts=3, attempts_window_s=10, clock=clock)
    counter = ConnectionCounter(1)
    assert all(limits.message(counter) for _ in range(5))
    assert not limits.message(counter)  # the sixth within a second
    assert limits.message_violations == 1 and counter.peak == 6
    clock.now += 1.0
    assert limits.message(counter)  # a new second
    assert limits.streams(counter, 1020, 4) and not limits.streams(counter, 1020, 5)
    assert [limits.attempt() for _ in range(4)] == [True, True, True, False]
    clock.now += 10
    assert limits.attempt()
    snapshot = limits.snapshot()
    assert (snapshot["refused_attempts"], snapshot["stream_violations"], snapshot["message_violations"]) == (1, 1, 1)


async def test_the_dial_budget_waits_for_the_window() -> None:
    clock = _Clock()
    budget = DialBudget(10, 60.0, share=0.5, clock=clock)
    for _ in range(5):
        await budget.permit()
    assert budget.wait_s() == 60.0
    clock.now += 60.0
    assert budget.wait_s() == 0.0


def _limits(server: ReplayServer) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/debug/limits", timeout=10) as response:
        body = json.loads(response.read())
    ws: dict[str, int] = body["websocket"]
    return ws


async def test_the_simulator_disconnects_a_connection_past_five_messages_a_second() -> None:
    async with (
        ReplayServer([load_tape(TRADE_FILES[0])], speed=1) as server,
        aiohttp.ClientSession() as session,
        session.ws_connect(server.ws_url + "/0", autoping=False) as ws,
    ):
        for number in range(8):
            await ws.ping(number.to_bytes(8, "big"))
        kinds = []
        with contextlib.suppress(TimeoutError):
            while True:
                message = await asyncio.wait_for(ws.receive(), 10)
                kinds.append(message.type)
                if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                    break
        limits = await asyncio.to_thread(_limits, server)
    assert kinds.count(WSMsgType.PONG) == 5 and kinds[-1] in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert ws.close_code == 1008
    assert limits["message_violations"] == 1 and limits["peak_messages_per_s"] == 6


@pytest.mark.slow
async def test_reconnect_storms_stay_within_the_connection_attempt_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_config: dict[str, Any]
) -> None:
    """Twenty connections, all dropped every second: without a budget the streamer dialled 20 a
    second and passed 300 in 15 s; with it, it stops at its share (240) and waits."""
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")
    base = load_tape(write_windows(tmp_path, 60, TRADE_FILES[:1])[0])
    tapes = [dataclasses.replace(base, symbol=f"S{i:02d}X/USDT") for i in range(20)]
    prefix = unique_prefix()
    redis = redis_client(RedisSettings(**redis_config))
    # REST weight is not what this test is about (each reconnect backfills every feed): counted only.
    server = ReplayServer(tapes, speed=1, faults=parse_faults("drop_every_s=1"), weight_limit=None,
                          start_on_subscribe=True)
    try:
        async with server:
            # One symbol a connection: twenty connections to storm (shared, five a connection, a
            # connection dropped each second would not even have all its subscriptions sent).
            settings = stream_settings(server, [t.symbol for t in tapes], prefix,
                                       streamer={"backoff_initial": "50ms", "backoff_max": "200ms",
                                                 "symbols_per_connection": 1},
                                       redis=redis_config)
            streamer = asyncio.create_task(run(settings))
            deadline = asyncio.get_running_loop().time() + PATIENCE_S
            while server.connections_opened < 230:  # the storms go on until the budget holds them
                assert asyncio.get_running_loop().time() < deadline, server.connections_opened
                assert not streamer.done()
                await asyncio.sleep(0.2)
            await asyncio.sleep(5.0)  # well past the budget: had it not held, 100 more attempts by now
            limits = await asyncio.to_thread(_limits, server)
            health = await redis.hgetall(RedisKeys(prefix).health(Feed("binance", tapes[0].symbol, 1000)))
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
    assert limits["refused_attempts"] == 0
    assert limits["attempts_in_window"] <= 240
    assert limits["message_violations"] == 0
    assert int(health[b"reconnects"]) >= 5
