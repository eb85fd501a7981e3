"""What the streamer's integration tests share: replay windows of real trades, settings pointing
the real ccxt client at the simulator, and the offline bars the streamed ones must equal."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis

from streamer.offline import aggregate_trades
from streamer.service import run
from streamer.simulator.client_options import binance_client_options
from streamer.simulator.faults import parse_faults
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import Tape, load_tape
from streamer.trades_csv import read_trades
from volcast.bar import Bar
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings, Settings, settings_from_mapping

DATA = Path(__file__).parent / "data"
TRADE_FILES = (
    DATA / "binance_BTCUSDT_trades_2021-01-08_000000-000046.csv.gz",
    DATA / "unknown-exchange_ETHUSDT_trades_2023-02-02_0920.csv.gz",
    DATA / "binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz",
)
MINUTE_MS = 60_000
# How long a test waits for something that must happen (a bar closing, the replay ending). The
# waits are for conditions, so a healthy run never waits this long; it is generous because a
# shared 2-core machine under load runs these tests several times slower than a quiet one.
PATIENCE_S = 180.0
# An XRANGE/XREVRANGE reply: redis-py types stream replies loosely (str or bytes, maybe None); the
# test clients answer bytes (decode_responses off).
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


def write_windows(out_dir: Path, seconds: float, files: Sequence[Path] = TRADE_FILES) -> list[Path]:
    """The first ``seconds`` of each file, moved by whole minutes so that all start in one minute.

    Whole minutes keep every trade in its 1s and 1m bar, so the files replayed together still
    aggregate to the bars of the recordings (shifted); the windows are written as trades CSV so
    the simulator and the offline aggregator read the very same file.
    """
    anchor: int | None = None
    paths = []
    for path in files:
        tape = load_tape(path)
        first = tape.trades[0].timestamp_ms
        minute = first - first % MINUTE_MS
        anchor = minute if anchor is None else anchor
        shift = anchor - minute
        name = path.name.replace(".csv.gz", f"_window{int(seconds)}s.csv.gz")
        target = out_dir / name
        with gzip.open(target, "wt", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["timestamp_ms", "trade_id", "price", "amount", "side"])
            for t in tape.trades:
                if t.timestamp_ms - first < seconds * 1000:
                    side = "sell" if t.buyer_maker else "buy"
                    writer.writerow([t.timestamp_ms + shift, t.trade_id, t.price, t.amount, side])
        paths.append(target)
    return paths


def offline_bars(path: Path, interval_ms: int, shift_ms: int) -> list[Bar]:
    """``volcast bars`` on the file, as the simulator replays it (moved by ``shift_ms``)."""
    trades = (replace(t, timestamp_ms=t.timestamp_ms + shift_ms) for t in read_trades(path))
    bars, _ = aggregate_trades(trades, interval_ms)
    return bars


def stream_settings(
    server: ReplayServer,
    symbols: Sequence[str],
    prefix: str,
    *,
    redis_url: str = "redis://127.0.0.1:6379/0",
    exchange_options: dict[str, Any] | None = None,
    **sections: Any,
) -> Settings:
    client = binance_client_options(server)
    client["options"].pop("tradesLimit")  # the streamer hooks every trade; ccxt's buffer stays small
    client["options"].update(exchange_options or {})
    raw: dict[str, Any] = {
        # A fixed grace (bars.grace): the fault tests count any amended bar as a wrong proof, and
        # auto's lower grace would let a loaded machine's delivery spike amend one.
        # tests/test_close_grace.py tests auto.
        "exchanges": [{"id": "binance", "symbols": list(symbols), "grace": None, **client}],
        "bars": {"interval": "1s", "grace": "200ms", "open_bar_update": "200ms"},
        "streamer": {"watchdog": "5s", "backoff_initial": "100ms", "backoff_max": "1s", "backfill_page": 1000},
        "redis": {"url": redis_url, "key_prefix": prefix},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return settings_from_mapping(raw, env={})


def unique_prefix() -> str:
    return f"test-stream-{uuid.uuid4().hex[:10]}"


async def redis_bars(redis: aioredis.Redis, keys: RedisKeys, feed: Feed) -> list[Bar]:
    entries = cast(StreamEntries, await redis.xrange(keys.bars(feed)))
    return [Bar.from_fields(fields) for _id, fields in entries]


async def streamed_to_the_end(
    redis: aioredis.Redis, keys: RedisKeys, server: ReplayServer, tapes: Sequence[Tape], files: Sequence[Path]
) -> dict[Feed, list[Bar]]:
    """Wait for the replay to end and every feed's last offline bar to be in Redis.

    Returns the offline bars of each feed: what the streamed ones must equal.
    """
    await asyncio.wait_for(server.done.wait(), PATIENCE_S)
    expected: dict[Feed, list[Bar]] = {}
    for index, (tape, path) in enumerate(zip(tapes, files, strict=True)):
        feed = Feed("binance", tape.symbol, 1000)
        expected[feed] = offline_bars(path, 1000, server.timeline.shifts_ms[index])
        await wait_for_bar(redis, keys, feed, expected[feed][-1].open_time_ms)
    return expected


async def wait_for_bar(
    redis: aioredis.Redis, keys: RedisKeys, feed: Feed, open_time_ms: int, timeout_s: float = PATIENCE_S
) -> None:
    """Until the feed's stream holds a bar opening at or after ``open_time_ms``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        last = cast(StreamEntries, await redis.xrevrange(keys.bars(feed), count=1))
        if last and int(last[0][0].decode().split("-")[0]) >= open_time_ms:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{feed.symbol}: no bar at {open_time_ms} within {timeout_s}s")


async def delete_prefix(redis: aioredis.Redis, prefix: str) -> None:
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        await redis.delete(key)


def same_bars(streamed: list[Bar], expected: list[Bar], *, statuses: bool = True) -> None:
    """Streamed bars over the expected span equal the expected ones, field by field."""
    first, last = expected[0].open_time_ms, expected[-1].open_time_ms
    window = [b for b in streamed if first <= b.open_time_ms <= last]
    if not statuses:
        window = [replace(b, status=expected[0].status) for b in window]
        expected = [replace(b, status=expected[0].status) for b in expected]
    assert len(window) == len(expected), (
        f"{len(window)} bars streamed in the span of {len(expected)}; streamed open times (s after the first "
        f"expected): {[(b.open_time_ms - first) // 1000 for b in streamed]}"
    )
    for got, want in zip(window, expected, strict=True):
        assert got == want, (got, want)


async def stream_with_faults(
    tmp_path: Path, redis_config: dict[str, Any], faults: str, *, seconds: float = 60, speed: float = 10,
    seed: int = 7, sources: Sequence[Path] = TRADE_FILES, **streamer: str
) -> tuple[dict[Feed, list[Bar]], dict[Feed, list[Bar]], dict[Feed, dict[str, int]], ReplayServer]:
    """The first ``seconds`` of ``sources`` replayed with ``faults`` and streamed into the Redis of
    ``redis_config`` (single or cluster) until every feed's last offline bar is in: the offline
    bars, the streamed ones and each feed's health counters (integers), by feed."""
    files = write_windows(tmp_path, seconds, sources)
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    expected: dict[Feed, list[Bar]] = {}
    streamed: dict[Feed, list[Bar]] = {}
    health: dict[Feed, dict[str, int]] = {}
    try:
        server = ReplayServer(tapes, speed=speed, faults=parse_faults(faults), seed=seed, start_on_subscribe=True)
        async with server:
            # The symbols share one connection (streamer.symbols_per_connection 5): every fault
            # hits all of them at once.
            settings = stream_settings(server, [t.symbol for t in tapes], prefix,
                                       streamer={"symbols_per_connection": 5, **streamer}, redis=redis_config)
            task = asyncio.create_task(run(settings))
            expected = await streamed_to_the_end(redis, keys, server, tapes, files)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for feed in expected:
            streamed[feed] = await redis_bars(redis, keys, feed)
            raw = cast(dict[bytes, bytes], await redis.hgetall(keys.health(feed)))  # decode_responses off
            health[feed] = {k.decode(): int(v) for k, v in raw.items() if v.lstrip(b"-").isdigit()}
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
    return expected, streamed, health, server
