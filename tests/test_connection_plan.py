"""Busy symbols share websocket connections (streamer/connection_plan.py): the plan, ccxt's real
binance client following it, the ranking from bars in real Redis, and the streamer's connections
as the simulator sees them."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from stream_harness import PATIENCE_S, delete_prefix, stream_settings, unique_prefix, wait_for_bar, write_windows

from streamer.connection_plan import RANK_BARS, place_symbol, plan_connections, trade_activity
from streamer.exchange_link import ExchangeLink
from streamer.service import _plan_connections, run
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from streamer.source import create_exchange
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import ExchangeSettings, RedisSettings


def test_the_busiest_symbols_share_connections_in_runs() -> None:
    symbols = ["Q1", "B1", "Q2", "B2", "Q3", "B3", "N1"]
    activity = {"Q1": 2.0, "B1": 900.0, "Q2": 1.0, "B2": 700.0, "Q3": 2.0, "B3": 800.0}  # N1: no bars
    plan = plan_connections(symbols, activity, 3)
    assert plan == {"B1": 0, "B3": 0, "B2": 0, "Q1": 1, "Q3": 1, "Q2": 1, "N1": 2}


def test_ties_and_unknown_activity_keep_config_order() -> None:
    assert plan_connections(["A", "B", "C", "D", "E"], {}, 2) == {"A": 0, "B": 0, "C": 1, "D": 1, "E": 2}


def test_zero_leaves_the_choice_to_ccxt_and_many_symbols_fill_at_most_ccxts_connections() -> None:
    assert plan_connections(["A", "B"], {}, 0) == {}
    symbols = [f"S{i}" for i in range(1000)]
    plan = plan_connections(symbols, {}, 5)
    assert max(plan.values()) == 49  # 20 a connection, not 200 connections of 5
    assert sum(1 for connection in plan.values() if connection == 0) == 20


def test_ccxts_binance_client_carries_a_symbol_on_its_placed_connection() -> None:
    exchange = create_exchange(ExchangeSettings(id="binance", symbols=("BTC/USDT",)), env={})
    try:
        assert place_symbol(exchange, "BTC/USDT", 7)
        assert place_symbol(exchange, "ETH/USDT", 7)
        # ccxt's own choice for a symbol it was not told of: its round robin, from connection 0.
        assert exchange.stream("spot", "multipleTrades::XRP/USDT") == "0"
        assert exchange.stream("spot", "multipleTrades::BTC/USDT") == "7"
        assert exchange.stream("spot", "multipleTrades::ETH/USDT") == "7"
    finally:
        asyncio.run(exchange.close())


async def test_symbols_are_ranked_by_the_trades_of_their_last_bars_in_redis(redis_config: dict[str, Any]) -> None:
    prefix = unique_prefix()
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    feeds = [Feed("binance", symbol, 60_000) for symbol in ("Q/USDT", "B/USDT", "N/USDT", "W/USDT", "H/USDT")]
    quiet, busy, none, wrong, history = feeds
    try:
        for minute in range(1, RANK_BARS + 11):  # the oldest 10 are beyond the bars read
            entry_id = f"{minute * 60_000}-0"
            await redis.xadd(keys.bars(quiet), {"trades": "1000" if minute <= 10 else "2"}, id=entry_id)
            await redis.xadd(keys.bars(busy), {"trades": str(600 + minute % 2)}, id=entry_id)
        await redis.xadd(keys.bars(history), {"trades": ""}, id="60000-0")  # a candle that did not count
        await redis.set(keys.bars(wrong), "not a stream")
        activity = await trade_activity(redis, keys, feeds)
        assert activity == {quiet: 2.0, busy: 600.5}, activity
        assert none not in activity and wrong not in activity and history not in activity

        exchange = create_exchange(ExchangeSettings(id="binance", symbols=tuple(f.symbol for f in feeds)), env={})
        try:
            link = ExchangeLink(exchange, ExchangeSettings(id="binance", symbols=tuple(f.symbol for f in feeds)))
            await _plan_connections(redis, keys, dict.fromkeys(feeds, link), 2)
            assert link.connections == {"B/USDT": 0, "Q/USDT": 0, "N/USDT": 1, "W/USDT": 1, "H/USDT": 2}
            link.place("B/USDT")
            assert exchange.stream("spot", "multipleTrades::B/USDT") == "0"
        finally:
            await exchange.close()
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()


@pytest.mark.slow
@pytest.mark.parametrize(("per_connection", "expected"), [
    (2, [{"btcusdt@trade", "ethusdt@trade"}, {"xrpeth@trade"}]),
    (0, [{"btcusdt@trade"}, {"ethusdt@trade"}, {"xrpeth@trade"}]),  # ccxt's round robin
])
async def test_the_streamer_opens_the_planned_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_config: dict[str, Any], per_connection: int,
    expected: list[set[str]],
) -> None:
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")
    tapes = [load_tape(f) for f in write_windows(tmp_path, 20)]  # BTC/USDT, ETH/USDT, XRP/ETH
    prefix = unique_prefix()
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    try:
        async with ReplayServer(tapes, speed=5) as server:
            settings = stream_settings(server, [t.symbol for t in tapes], prefix, redis=redis_config,
                                       streamer={"symbols_per_connection": per_connection})
            streamer = asyncio.create_task(run(settings))
            await asyncio.wait_for(server.started.wait(), PATIENCE_S)
            first = tapes[0].trades[0].timestamp_ms + server.timeline.shifts_ms[0]
            await wait_for_bar(redis, keys, Feed("binance", "BTC/USDT", 1000), first - first % 1000 + 2000)
            # Every subscription made (a connection's go out two a second): then how they are carried.
            wanted = set().union(*expected)
            deadline = asyncio.get_running_loop().time() + PATIENCE_S
            while set().union(*server.connection_streams()) != wanted:
                assert asyncio.get_running_loop().time() < deadline, server.connection_streams()
                await asyncio.sleep(0.05)
            streams = sorted(server.connection_streams(), key=sorted)
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        assert streams == sorted(expected, key=sorted), streams
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
