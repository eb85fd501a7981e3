"""Symbols and exchanges that cannot be streamed stop only their own feeds (real Redis, the
simulator, ccxt's real client): a symbol the exchange does not list, one delisted while
streaming, an exchange that cannot be reached. Each says why in one line and in its health hash;
every other feed goes on. With no feed left the service exits with one message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
import yaml
from servers import free_port
from stream_harness import PATIENCE_S, delete_prefix, stream_settings, unique_prefix, wait_for_bar, write_windows

from streamer.service import StreamerStopped, run
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import Tape, load_tape
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings, Settings, settings_from_mapping

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")
    monkeypatch.setenv("VOLCAST_BINANCEUS_API_KEY", "simulator")


@pytest.fixture
def tapes(tmp_path: Path) -> list[Tape]:
    return [load_tape(f) for f in write_windows(tmp_path, 60)[:2]]  # BTC/USDT, ETH/USDT


async def _health(redis: aioredis.Redis, keys: RedisKeys, feed: Feed) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], await redis.hgetall(keys.health(feed))).items()}


async def _bar_after(redis: aioredis.Redis, keys: RedisKeys, feed: Feed, bars: int) -> None:
    """Until the feed has ``bars`` more closed bars than now."""
    target = await redis.xlen(keys.bars(feed)) + bars
    deadline = asyncio.get_running_loop().time() + PATIENCE_S
    while await redis.xlen(keys.bars(feed)) < target:
        assert asyncio.get_running_loop().time() < deadline, f"{feed.symbol} closed no more bars"
        await asyncio.sleep(0.05)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_unknown_symbol_stops_its_feed_alone(tapes: list[Tape], caplog: pytest.LogCaptureFixture,
                                                      redis_config: dict[str, Any]) -> None:
    prefix = unique_prefix()
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    btc, foo = Feed("binance", "BTC/USDT", 1000), Feed("binance", "FOO/BAR", 1000)
    try:
        async with ReplayServer(tapes[:1], speed=10) as server:
            settings = stream_settings(server, ["BTC/USDT", "FOO/BAR"], prefix, redis=redis_config)
            streamer = asyncio.create_task(run(settings))
            await asyncio.wait_for(server.started.wait(), PATIENCE_S)
            first = tapes[0].trades[0].timestamp_ms + server.timeline.shifts_ms[0]
            await wait_for_bar(redis, keys, btc, first - first % 1000 + 3000)
            health = await _health(redis, keys, foo)
            assert not streamer.done()
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        assert health["state"] == "error" and "binance does not list FOO/BAR" in health["error"], health
        errors = _errors(caplog)
        assert len(errors) == 1 and "FOO/BAR" in errors[0] and "exchanges[].symbols" in errors[0], errors
        assert "Traceback" not in caplog.text
        assert (await _health(redis, keys, foo))["state"] == "error"  # not "stopped" at shutdown
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()


async def test_a_symbol_delisted_while_streaming_stops_its_feed_alone(tapes: list[Tape],
                                                                     redis_config: dict[str, Any]) -> None:
    prefix = unique_prefix()
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    btc, eth = (Feed("binance", t.symbol, 1000) for t in tapes)
    try:
        async with ReplayServer(tapes, speed=5, start_on_subscribe=True) as server:
            settings = stream_settings(server, [t.symbol for t in tapes], prefix, streamer={"watchdog": "1s"},
                                       redis=redis_config)
            streamer = asyncio.create_task(run(settings))
            await _bar_after(redis, keys, btc, 3)
            server.delist("BTC/USDT")
            deadline = asyncio.get_running_loop().time() + PATIENCE_S
            while (await _health(redis, keys, btc)).get("state") != "error":
                assert asyncio.get_running_loop().time() < deadline, await _health(redis, keys, btc)
                await asyncio.sleep(0.05)
            await _bar_after(redis, keys, eth, 3)  # ETH goes on
            assert not streamer.done()
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        health = await _health(redis, keys, btc)
        assert "binance does not list BTC/USDT" in health["error"], health
        assert (await _health(redis, keys, eth))["state"] == "stopped"
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()


def _two_exchanges(server: ReplayServer, prefix: str, dead_port: int, redis_config: dict[str, Any]) -> Settings:
    reachable = stream_settings(server, ["BTC/USDT"], prefix, redis=redis_config).model_dump(mode="json")
    dead: dict[str, Any] = {
        "id": "binanceus",
        "symbols": ["BTC/USD"],
        "options": {"fetchMarkets": {"types": ["spot"]}},
        "urls": {"api": {"public": f"http://127.0.0.1:{dead_port}/api/v3",
                         "ws": {"spot": f"ws://127.0.0.1:{dead_port}/stream/ws"}}},
    }
    reachable["exchanges"].append(dead)
    return settings_from_mapping(reachable, env={})


async def test_an_unreachable_exchange_does_not_hold_back_the_others(tapes: list[Tape],
                                                                    redis_config: dict[str, Any]) -> None:
    prefix = unique_prefix()
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    btc, us = Feed("binance", "BTC/USDT", 1000), Feed("binanceus", "BTC/USD", 1000)
    try:
        async with ReplayServer(tapes[:1], speed=10) as server:
            streamer = asyncio.create_task(run(_two_exchanges(server, prefix, free_port(), redis_config)))
            await asyncio.wait_for(server.started.wait(), PATIENCE_S)
            first = tapes[0].trades[0].timestamp_ms + server.timeline.shifts_ms[0]
            await wait_for_bar(redis, keys, btc, first - first % 1000 + 3000)
            health = await _health(redis, keys, us)
            assert not streamer.done()
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        # An outage may pass: the feed keeps trying, and says why it is not live.
        assert health["state"] in ("down", "connecting") and int(health["reconnects"]) >= 1, health
        assert "binanceus" in health["error"] and "exchangeInfo" in health["error"], health
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()


async def test_with_no_feed_left_the_service_stops(tapes: list[Tape], redis_config: dict[str, Any]) -> None:
    prefix = unique_prefix()
    try:
        async with ReplayServer(tapes[:1], speed=10) as server:
            settings = stream_settings(server, ["FOO/BAR", "BAZ/USDT"], prefix, redis=redis_config)
            with pytest.raises(StreamerStopped, match="every feed stopped") as stopped:
                await asyncio.wait_for(run(settings), PATIENCE_S)
        assert "binance does not list FOO/BAR" in str(stopped.value)
        assert "binance does not list BAZ/USDT" in str(stopped.value)
    finally:
        redis = redis_client(RedisSettings(**redis_config))
        await delete_prefix(redis, prefix)
        await redis.aclose()


async def test_volcast_stream_with_only_an_unknown_symbol_exits_1_in_one_line(
    tapes: list[Tape], tmp_path: Path, redis_config: dict[str, Any]
) -> None:
    prefix = unique_prefix()
    try:
        async with ReplayServer(tapes[:1], speed=10) as server:
            settings = stream_settings(server, ["FOO/BAR"], prefix, redis=redis_config)
            config = tmp_path / "config.yml"
            config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_defaults=True)))
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "volcast.cli", "stream", "--config", str(config),
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            _out, err = await asyncio.wait_for(process.communicate(), PATIENCE_S)
        text = err.decode()
        assert process.returncode == 1, text
        assert "Traceback" not in text and "ExceptionGroup" not in text, text
        last = text.strip().splitlines()[-1]
        assert last.startswith("volcast stream: every feed stopped") and "does not list FOO/BAR" in last, text
    finally:
        redis = redis_client(RedisSettings(**redis_config))
        await delete_prefix(redis, prefix)
        await redis.aclose()
