"""Bad trade values over the live feed: a replay of real trades with edited rows through the
simulator, ccxt's real client, the streamer and real Redis. No bad value reaches a bar, the bars
that lack a refused trade say ``gap``, ``malformed`` counts each refusal, and the streamer goes on."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from stream_harness import (
    PATIENCE_S,
    TRADE_FILES,
    delete_prefix,
    redis_bars,
    same_bars,
    stream_settings,
    unique_prefix,
    wait_for_bar,
    write_windows,
)

from streamer.offline import aggregate_trades
from streamer.service import run
from streamer.simulator.faults import parse_faults
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from streamer.trade_validation import Refusal
from streamer.trades_csv import read_trade_rows
from volcast.bar import Bar, BarStatus, Trade
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings

pytestmark = pytest.mark.slow

# Rows of the BTC/USDT minute (2001 trades) to spoil: (row index among the trades, column, text).
# Spread over the history a fresh feed fetches by REST and the part it hears live.
EDITS = (
    (150, 3, "-23"),
    (300, 3, "NaN"),
    (420, 3, "Infinity"),
    (700, 2, "0"),
    (1000, 3, "NaN"),
    (1200, 3, "Infinity"),
    (1400, 3, "-23"),
    (1600, 2, "-1"),
    (1750, 3, "1e25"),
    (1900, 3, "Infinity"),
)


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")


def _spoil(path: Path) -> None:
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.reader(handle))
    for index, column, text in EDITS:
        rows[index + 1][column] = text
    with gzip.open(path, "wt", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def _expected(path: Path, shift_ms: int) -> list[Bar]:
    """The bars `volcast bars --skip-bad-rows` makes of the file, as the simulator replays it."""
    items: list[Trade | Refusal] = []
    for _line, checked in read_trade_rows(path):
        assert checked.timestamp_ms is not None
        items.append(replace(checked, timestamp_ms=checked.timestamp_ms + shift_ms))
    bars, _ = aggregate_trades(items, 1000)
    return bars


async def test_bad_values_never_reach_a_bar_and_the_streamer_goes_on(tmp_path: Path,
                                                                     redis_config: dict[str, Any]) -> None:
    (path,) = write_windows(tmp_path, 60, TRADE_FILES[:1])
    _spoil(path)
    tape = load_tape(path)
    assert len(tape.trades) == 2001 and not tape.skipped  # every bad number is replayed as written
    prefix = unique_prefix()
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    feed = Feed("binance", tape.symbol, 1000)
    try:
        # Dropped connections make the live part come partly by REST after each reconnect.
        faults = parse_faults("drop_every_trades=250")
        async with ReplayServer([tape], speed=10, faults=faults, seed=3) as server:
            deadline = asyncio.get_running_loop().time() + PATIENCE_S
            while server.published[tape.symbol] < 500:  # the first rows come by REST history
                assert asyncio.get_running_loop().time() < deadline, "the replay did not start"
                await asyncio.sleep(0.05)
            settings = stream_settings(server, [tape.symbol], prefix, streamer={"backfill_page": 100},
                                       redis=redis_config)
            streamer = asyncio.create_task(run(settings))
            await asyncio.wait_for(server.done.wait(), PATIENCE_S)
            expected = _expected(path, server.timeline.shifts_ms[0])
            await wait_for_bar(redis, keys, feed, expected[-1].open_time_ms)
            assert not streamer.done(), "the streamer stopped"
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        streamed = await redis_bars(redis, keys, feed)
        health = {k.decode(): v.decode()
                  for k, v in cast(dict[bytes, bytes], await redis.hgetall(keys.health(feed))).items()}
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()

    for bar in streamed:
        for value in (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.quote_volume, bar.vwap):
            assert value is not None, bar
            assert (value.is_finite() and value > 0) or (value == 0 and bar.trades == 0), bar
    same_bars(streamed, expected, statuses=False)  # exact over the valid trades
    gap_bars = {b.open_time_ms for b in expected if b.status is BarStatus.GAP}
    assert len(gap_bars) == len(EDITS)
    assert {b.open_time_ms for b in streamed if b.status is BarStatus.GAP} == gap_bars
    assert all(b.status is not BarStatus.GAP for b in streamed if b.open_time_ms not in gap_bars)
    # Each bad row counted once, by its field; frames ccxt could not parse at all on top.
    assert int(health["malformed_amount"]) + int(health["malformed_price"]) == len(EDITS), health
    frames = int(health["malformed_frame"])
    assert int(health["malformed"]) == len(EDITS) + frames
    assert int(health["trades"]) == sum(cast(int, b.trades) for b in expected) == 2001 - len(EDITS)
    assert health["gaps"] == "0" and health["state"] == "stopped"
    assert sum((b.volume for b in streamed if b.open_time_ms in {e.open_time_ms for e in expected}), Decimal(0)) == sum(
        (b.volume for b in expected), Decimal(0)
    )
