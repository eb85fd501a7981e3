"""Poisoned events and keys never stop the worker nor hold back good events (issue: forecaster
crash loop). Every valid event gets exactly one forecast; every invalid one is dead-lettered."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from stream_harness import StreamEntries
from worker_harness import (
    MINUTE,
    clear_retained,
    close_bars,
    delete_prefix,
    feeds_of,
    listening,
    raw_settings_for,
    settings_for,
    symbol_bars,
    worker,
    write_bars,
)

from forecaster.events import EventParser
from forecaster.worker import run as run_worker
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.redis_problems import RedisDataProblem
from volcast.settings import Settings

HISTORY = 300


@pytest.fixture
async def settings(tmp_path: Path, redis_config: dict[str, Any]) -> AsyncIterator[Settings]:
    # On the shared single Redis and on the local Redis Cluster (tests/conftest.py).
    s = settings_for(tmp_path / "models", redis=redis_config)
    yield s
    await delete_prefix(s)
    await clear_retained(s)


async def until(check: Any, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


async def pending(redis: aioredis.Redis, keys: RedisKeys) -> int:
    info = await redis.xpending(keys.bar_events(MINUTE), "forecasters")
    return int(info["pending"])


async def dead(redis: aioredis.Redis, keys: RedisKeys) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in cast(StreamEntries, await redis.xrange(keys.dead_events(MINUTE)))]


def event(feed: Feed, open_ms: int | str) -> dict[str, str]:
    return {"exchange": feed.exchange, "symbol": feed.symbol, "interval": feed.interval,
            "open_time_ms": str(open_ms), "status": "complete"}


# -- parsing, pure ---------------------------------------------------------------------------------

GOOD = {b"exchange": b"binance", b"symbol": b"NEAR/USDT", b"interval": b"1m", b"open_time_ms": b"1675209600000"}


@pytest.mark.parametrize(("change", "problem"), [
    ({b"open_time_ms": b"-60000"}, "not a 1m bar open time"),
    ({b"open_time_ms": b"1675209600001"}, "not a 1m bar open time"),
    ({b"open_time_ms": b"1.6e12"}, "not a 1m bar open time"),
    ({b"open_time_ms": b"99999999999999999999"}, "not a 1m bar open time"),
    ({b"open_time_ms": b""}, "missing open_time_ms"),
    ({b"symbol": b""}, "missing symbol"),
    ({b"symbol": b"\xff\xfe"}, "not UTF-8"),
    ({b"interval": b"5m"}, "interval"),
    ({b"symbol": b"FOO/BAR"}, "not a feed of this config"),
])
def test_an_entry_that_is_not_an_event_says_why(change: dict[bytes, bytes], problem: str) -> None:
    parser = EventParser(MINUTE, frozenset({("binance", "NEAR/USDT")}))
    assert parser.parse(b"1-0", GOOD).feed == Feed("binance", "NEAR/USDT", MINUTE)
    # Also after the feed is known (the fast path must check the open time too).
    bad = parser.parse(b"2-0", {**GOOD, **change})
    assert bad.feed is None and bad.problem is not None and problem in bad.problem


@given(st.dictionaries(st.sampled_from([b"exchange", b"symbol", b"interval", b"open_time_ms", b"status", b"x"]),
                       st.binary(max_size=24)))
@hsettings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_no_entry_raises_and_every_event_is_a_valid_bar(fields: dict[bytes, bytes]) -> None:
    parsed = EventParser(MINUTE).parse(b"1-0", fields)
    if parsed.feed is None:
        assert parsed.problem
    else:
        assert parsed.open_time_ms >= 0 and parsed.open_time_ms % MINUTE == 0


# -- the worker, against real Redis and Mosquitto -----------------------------------------------------


async def test_garbage_beside_good_events_is_dead_lettered_and_the_good_ones_forecast(settings: Settings) -> None:
    """The issue's reproduction: an event with open_time_ms -60000 read with valid ones was taken
    for a Redis outage; the valid events stayed pending, and a restart retried it for ever."""
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    stream = keys.bar_events(MINUTE)
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        # Written before the worker starts: all read in one batch.
        await redis.xadd(stream, event(feeds[0], -60000))  # type: ignore[arg-type]
        await redis.xadd(stream, {"exchange": "binance", "open_time_ms": "0"})
        await redis.xadd(stream, event(Feed("binance", "FOO/BAR", MINUTE), series[feeds[0]][HISTORY].open_time_ms))  # type: ignore[arg-type]
        await close_bars(redis, keys, [(f, series[f][HISTORY]) for f in feeds])
        await redis.xadd(stream, event(feeds[0], series[feeds[0]][HISTORY].open_time_ms))  # type: ignore[arg-type]
        async with listening(settings) as listener:
            async with worker(settings):
                await listener.wait_for(len(feeds))
                await until(lambda: _zero(pending(redis, keys)))
                # The next bar goes on as usual.
                await close_bars(redis, keys, [(f, series[f][HISTORY + 1]) for f in feeds])
                await listener.wait_for(2 * len(feeds))
                await until(lambda: _zero(pending(redis, keys)))
                await asyncio.sleep(0.3)
            assert len(listener.received) == 2 * len(feeds)  # one forecast per bar, the duplicate not again
        letters = await dead(redis, keys)
        assert len(letters) == 3
        errors = b" | ".join(f[b"error"] for f in letters)
        assert b"not a 1m bar open time" in errors and b"missing symbol" in errors and b"not a feed" in errors
        status = await redis.hgetall(keys.forecaster())
        assert status[b"dead_letters"] == b"3" and status[b"invalid_events"] == b"3"
        assert status[b"duplicate_events"] == b"1"


async def _zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def test_a_restart_reads_its_pending_events_once_then_new_ones(settings: Settings) -> None:
    """Restarted under the same consumer name, the worker re-read its pending list from "0" on
    every loop: each event was handled up to 8 times, and new events were never reached."""
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    stream = keys.bar_events(MINUTE)
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        for step in range(20):
            await close_bars(redis, keys, [(f, series[f][HISTORY + step]) for f in feeds])
        # A worker "w1" that read them all and died before acknowledging any.
        await redis.xgroup_create(stream, "forecasters", id="0")
        await redis.xreadgroup("forecasters", "w1", {stream: ">"}, count=1000)
        assert await pending(redis, keys) == 20 * len(feeds)
        async with worker(settings):
            await until(lambda: _zero(pending(redis, keys)))
            await close_bars(redis, keys, [(f, series[f][HISTORY + 20]) for f in feeds])
            await until(lambda: _count(redis, keys, 21 * len(feeds)))
            await until(lambda: _zero(pending(redis, keys)))
            await asyncio.sleep(0.5)
        status = await redis.hgetall(keys.forecaster())
        assert int(status[b"predictions"]) == 21 * len(feeds)  # each once
        for feed in feeds:
            assert await redis.xlen(keys.predictions(feed)) == 21


async def _count(redis: aioredis.Redis, keys: RedisKeys, want: int) -> bool:
    return int((await redis.hget(keys.forecaster(), "predictions")) or 0) >= want


async def test_an_event_every_worker_died_on_is_dead_lettered_not_retried_for_ever(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    stream = keys.bar_events(MINUTE)
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        await close_bars(redis, keys, [(feeds[0], series[feeds[0]][HISTORY])])
        await redis.xgroup_create(stream, "forecasters", id="0")
        # Delivered to "w1" three times (three lives of a worker that crashed on it)...
        await redis.xreadgroup("forecasters", "w1", {stream: ">"})
        for _ in range(2):
            await redis.xreadgroup("forecasters", "w1", {stream: "0"})
        # ...and later events, which the fourth life must still forecast.
        await close_bars(redis, keys, [(f, series[f][HISTORY + 1]) for f in feeds])
        async with listening(settings) as listener, worker(settings):
            got = await listener.wait_for(len(feeds))
            assert {p.last_bar_ms for p in got} == {series[feeds[0]][HISTORY + 1].open_time_ms}
            await until(lambda: _zero(pending(redis, keys)))
        letters = await dead(redis, keys)
        assert len(letters) == 1 and b"delivered 4 times" in letters[0][b"error"]


async def test_a_wrong_type_bars_key_dead_letters_that_feed_only(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    bad = feeds[1]
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        async with listening(settings) as listener, worker(settings):
            await close_bars(redis, keys, [(f, series[f][HISTORY]) for f in feeds])
            await listener.wait_for(len(feeds))
            await redis.delete(keys.bars(bad))
            await redis.set(keys.bars(bad), "x")
            for step in (1, 2):
                good = [(f, series[f][HISTORY + step]) for f in feeds if f != bad]
                await close_bars(redis, keys, good)
                await redis.xadd(keys.bar_events(MINUTE), event(bad, series[bad][HISTORY + step].open_time_ms))  # type: ignore[arg-type]
                await listener.wait_for(len(feeds) + step * (len(feeds) - 1))
            await until(lambda: _zero(pending(redis, keys)))
        letters = await dead(redis, keys)
        assert len(letters) == 2
        assert all(keys.bars(bad).encode() in f[b"error"] and b"DEL" in f[b"error"] for f in letters)
        assert {p.feed for p in listener.received[len(feeds):]} == set(feeds) - {bad}


async def test_a_wrong_type_events_key_ends_the_service_with_one_message_naming_it(
        settings: Settings, tmp_path: Path) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    async with redis_client(settings.redis) as redis:
        await redis.set(keys.bar_events(MINUTE), "x")
        with pytest.raises(RedisDataProblem) as caught:
            async with asyncio.timeout(30):
                await run_worker(settings, consumer="w1")
        assert keys.bar_events(MINUTE) in str(caught.value) and "DEL" in str(caught.value)
        # The command: exit code 1, the message, no traceback.
        config = tmp_path / "config.yml"
        config.write_text(yaml.safe_dump(raw_settings_for(tmp_path / "models") | {
            "redis": settings.redis.model_dump(mode="json", include={"url", "cluster", "key_prefix"})}))
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "volcast.cli", "forecast", "--config", str(config)],
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 1, done.stderr
        assert keys.bar_events(MINUTE) in done.stderr and "Traceback" not in done.stderr


def _garbage(rng: random.Random, feed: Feed, open_ms: int) -> dict[str, str]:
    kind = rng.randrange(6)
    good = event(feed, open_ms)
    if kind == 0:
        good.pop(rng.choice(["exchange", "symbol", "open_time_ms"]))
    elif kind == 1:
        good["open_time_ms"] = rng.choice(["-60000", str(open_ms + 1), "1e12", "", "abc", str(10**17)])
    elif kind == 2:
        good["symbol"] = "FOO/BAR"
    elif kind == 3:
        good["interval"] = "5m"
    elif kind == 4:
        good["exchange"] = ""
    else:
        good = {"junk": "1"}
    return good


@pytest.mark.parametrize("seed", range(3))
async def test_random_event_streams_one_forecast_per_valid_bar_every_invalid_dead(
        settings: Settings, seed: int) -> None:
    """Valid events, duplicates, garbage and unknown feeds, shuffled within each read: every bar
    gets exactly one forecast, every invalid entry one dead letter, nothing stays pending."""
    rng = random.Random(seed)
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    stream = keys.bar_events(MINUTE)
    garbage = 0
    steps = 6
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        async with worker(settings):
            for step in range(steps):
                bars = [(f, series[f][HISTORY + step]) for f in feeds]
                pipe = redis.pipeline(transaction=False)
                for feed, bar in bars:
                    pipe.xadd(keys.bars(feed), bar.to_fields(), id=f"{bar.open_time_ms}-0")  # type: ignore[arg-type]
                entries = [event(f, b.open_time_ms) for f, b in bars]
                entries += [event(f, b.open_time_ms) for f, b in bars if rng.random() < 0.3]  # duplicates
                for _ in range(rng.randrange(4)):
                    feed, bar = rng.choice(bars)
                    entries.append(_garbage(rng, feed, bar.open_time_ms))
                    garbage += 1
                rng.shuffle(entries)
                for fields in entries:
                    pipe.xadd(stream, fields)  # type: ignore[arg-type]
                await pipe.execute()
                if rng.random() < 0.5:
                    await asyncio.sleep(0.2)  # sometimes one read per bar, sometimes several bars per read
            await until(lambda: _count(redis, keys, steps * len(feeds)))
            await until(lambda: _zero(pending(redis, keys)))
            await asyncio.sleep(0.3)
        for feed in feeds:
            ids = [entry_id for entry_id, _ in cast(StreamEntries, await redis.xrange(keys.predictions(feed)))]
            want = [f"{series[feed][HISTORY + step + 1].open_time_ms}-0".encode() for step in range(steps)]
            assert ids == want
        assert len(await dead(redis, keys)) == garbage
        status = await redis.hgetall(keys.forecaster())
        assert int(status[b"predictions"]) == steps * len(feeds)


async def test_only_a_gone_or_offline_workers_events_are_claimed(settings: Settings) -> None:
    """A healthy worker that is behind keeps its events (two workers claiming each other's
    backlog fell further behind in the soak); a worker that cannot publish, or is gone, loses
    them; an event whose every taker died is dead-lettered, one a live worker held is not."""
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    stream = keys.bar_events(MINUTE)
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        await redis.xgroup_create(stream, "forecasters", id="0", mkstream=True)
        # "busy" holds bar HISTORY of every feed (delivered 3 times: a worker restarted twice).
        await close_bars(redis, keys, [(f, series[f][HISTORY]) for f in feeds])
        await redis.xreadgroup("forecasters", "busy", {stream: ">"})
        for _ in range(2):
            await redis.xreadgroup("forecasters", "busy", {stream: "0"})
        await redis.set(keys.consumer_alive("busy"), "1", px=60_000)
        async with listening(settings) as listener, worker(settings):
            await asyncio.sleep(3)  # three claim_idle: nothing claimed from a healthy worker
            rows = await redis.xpending_range(stream, "forecasters", min="-", max="+", count=10)
            assert {r["consumer"] for r in rows} == {b"busy"} and len(rows) == len(feeds)
            await redis.set(keys.consumer_alive("busy"), "0", px=60_000)  # its broker is gone
            await listener.wait_for(len(feeds))  # claimed and forecast (4th delivery: not dead)
            await until(lambda: _zero(pending(redis, keys)))
            assert await dead(redis, keys) == []
            # "gone" (no alive key at all) held the next bar and was given it three times.
            # (The event and its read in one transaction: the worker, blocked on its read, is served
            # only after it. The bar before it: on a cluster a transaction is one slot.)
            bar = series[feeds[0]][HISTORY + 1]
            await redis.xadd(keys.bars(feeds[0]), bar.to_fields(), id=f"{bar.open_time_ms}-0")  # type: ignore[arg-type]
            multi = redis.pipeline(transaction=True)
            multi.xadd(stream, event(feeds[0], bar.open_time_ms))  # type: ignore[arg-type]
            multi.xreadgroup("forecasters", "gone", {stream: ">"})
            await multi.execute()
            for _ in range(2):
                await redis.xreadgroup("forecasters", "gone", {stream: "0"})
            await until(lambda: _zero(pending(redis, keys)))
        letters = await dead(redis, keys)
        assert len(letters) == 1 and b"delivered 4 times" in letters[0][b"error"]
