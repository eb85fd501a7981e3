"""The simulator's klines, read with ccxt's real client: exact candles of the tape (equal to `volcast
bars` of the same trades), real bar files before it, Binance's paging, and request weight."""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import ccxt.pro
import pytest
from stream_harness import offline_bars

from streamer.kline_rows import bar_from_candle
from streamer.simulator import ReplayServer, binance_client_options, deep_merge, load_tape
from streamer.simulator.bar_files import BarFileError, load_bar_files
from streamer.simulator.faults import FaultSpec
from streamer.simulator.klines import KlineBook
from streamer.trades_csv import read_trades
from volcast.bar import EXACT, HISTORY_MAY_LACK, Bar, BarStatus

DATA = Path(__file__).parent / "data"
XRP_TRADES = DATA / "binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz"
NEAR_BARS = DATA / "binance-usdm_NEARUSDT_1m_2023-02-01_03.csv.gz"
MIN = 60_000


def client(server: ReplayServer) -> Any:
    ex = ccxt.pro.binance({"enableRateLimit": False})
    options = binance_client_options(server)
    deep_merge(ex.urls, options["urls"])
    deep_merge(ex.options, options["options"])
    return ex


@pytest.fixture
async def replay() -> AsyncIterator[tuple[ReplayServer, Any]]:
    history = load_bar_files([f"XRP/ETH={NEAR_BARS}"])
    async with ReplayServer([load_tape(XRP_TRADES)], speed=float("inf"), history=history) as server:
        await server.done.wait()
        ex = client(server)
        try:
            yield server, ex
        finally:
            await ex.close()


async def klines(ex: Any, **params: Any) -> Any:
    return await ex.publicGetKlines({"symbol": "XRPETH", "interval": "1m", **params})


def as_bar(row: list[Any]) -> Bar:
    return bar_from_candle(row, row, BarStatus.COMPLETE)


def candle_of(bar: Bar) -> Bar:
    """A bar as a candle carries it: no trade ids, no status."""
    return replace(bar, first_trade_id=None, last_trade_id=None, status=BarStatus.COMPLETE)


async def test_tape_candles_equal_volcast_bars_of_the_same_trades(replay: tuple[ReplayServer, Any]) -> None:
    server, ex = replay
    book = server.klines["XRP/ETH"]
    expected = offline_bars(XRP_TRADES, MIN, server.timeline.shifts_ms[0])
    got: list[list[Any]] = []
    since = book.tape_start_ms
    while True:  # paged as ccxt's users page: from the last candle on
        page = await klines(ex, startTime=since, limit=1000)
        got.extend(page)
        if len(page) < 1000:
            break
        since = page[-1][0] + MIN
    tape_part = [as_bar(r) for r in got if r[0] <= expected[-1].open_time_ms]
    assert [b.open_time_ms for b in tape_part] == [b.open_time_ms for b in expected]
    assert tape_part == [candle_of(b) for b in expected]
    # Taker buy quote volume: price x amount of the buy trades of each minute, exactly.
    shift = server.timeline.shifts_ms[0]
    buys: dict[int, Decimal] = {}
    for t in read_trades(XRP_TRADES):
        if t.side == "buy":
            minute = t.timestamp_ms + shift - (t.timestamp_ms + shift) % MIN
            buys[minute] = EXACT.add(buys.get(minute, Decimal(0)), EXACT.multiply(t.price, t.amount))
    assert all(Decimal(r[10]) == buys.get(r[0], 0) for r in got if r[0] <= expected[-1].open_time_ms)
    # The newest candle is the clock's; any after the last trade's are empty at the last close.
    after = [as_bar(r) for r in got if r[0] > expected[-1].open_time_ms]
    assert all(b.volume == 0 and b.close == expected[-1].close for b in after)
    assert got[-1][0] == server.clock_ms() - server.clock_ms() % MIN
    book_later = book.minute(expected[-1].open_time_ms + 60 * MIN, expected[-1].open_time_ms + 61 * MIN)
    assert book_later is not None and book_later[0].volume == 0 and book_later[0].close == expected[-1].close


async def test_bar_file_history_ends_where_the_tape_starts(replay: tuple[ReplayServer, Any]) -> None:
    server, ex = replay
    book = server.klines["XRP/ETH"]
    with gzip.open(NEAR_BARS, "rt") as handle:
        rows = [line.strip().split(",") for line in handle][1:]
    assert book.first_ms == book.tape_start_ms - len(rows) * MIN  # dense file: ends at the tape's start
    got = await klines(ex, endTime=book.tape_start_ms - 1, limit=1000)
    assert len(got) == 1000 and got[-1][0] == book.tape_start_ms - MIN
    for candle, row in zip(got, rows[-1000:], strict=True):
        assert candle[1:6] == row[1:6] and candle[7:11] == [None, None, None, None]  # exactly the file's text
        assert candle[0] - int(row[0]) == book.history_shift_ms
    assert all(getattr(as_bar(got[0]), name) is None for name in HISTORY_MAY_LACK)
    before = await klines(ex, endTime=book.first_ms - 1)
    assert before == []  # before the file's first bar the symbol was not listed
    first = await klines(ex, startTime=0, limit=2)  # a start before the listing: from the first candle
    assert [c[0] for c in first] == [book.first_ms, book.first_ms + MIN]


async def test_binance_paging_rules(replay: tuple[ReplayServer, Any]) -> None:
    server, ex = replay
    book = server.klines["XRP/ETH"]
    start = book.tape_start_ms
    assert len(await klines(ex, startTime=start)) == 500  # default limit
    inclusive = await klines(ex, startTime=start, endTime=start + 2 * MIN)
    assert [c[0] for c in inclusive] == [start, start + MIN, start + 2 * MIN]
    assert (await klines(ex, startTime=start + 1, limit=1))[0][0] == start + MIN  # open times >= startTime
    last = await klines(ex, endTime=start + 10 * MIN + 5, limit=3)
    assert [c[0] for c in last] == [start + 8 * MIN, start + 9 * MIN, start + 10 * MIN]
    recent = await klines(ex, limit=2)
    now = server.clock_ms()
    assert recent[-1][0] == now - now % MIN
    for params, code in [({"limit": 1001}, "-1130"), ({"limit": 0}, "-1130"), ({"interval": "7m"}, "-1120"),
                         ({"startTime": start + MIN, "endTime": start}, "-1023"), ({"symbol": "NOPE"}, "-1121")]:
        with pytest.raises(ccxt.ExchangeError, match=code):
            await klines(ex, **cast(dict[str, object], params))  # the dicts' values joined to object
    five = await klines(ex, interval="5m", startTime=start, limit=3)
    minutes = [as_bar(r) for r in await klines(ex, startTime=start, limit=15)]
    assert [as_bar(r).volume for r in five] == [sum((m.volume for m in minutes[i:i + 5]), Decimal(0))
                                                for i in (0, 5, 10)]
    via_ccxt = await ex.fetch_ohlcv("XRP/ETH", "1m", since=start, limit=3)
    assert [c[0] for c in via_ccxt] == [start, start + MIN, start + 2 * MIN]


def test_the_forming_candle_holds_the_trades_up_to_the_clock() -> None:
    tape = load_tape(XRP_TRADES)
    book = KlineBook(tape, 0, 10 * 86_400_000, loop=False, history=None)
    trades = list(read_trades(XRP_TRADES))
    minute = next(t.timestamp_ms for i, t in enumerate(trades[1:], 1)
                  if t.timestamp_ms // MIN == trades[i - 1].timestamp_ms // MIN)  # a minute with 2+ trades
    open_ms = minute - minute % MIN
    inside = [t for t in trades if open_ms <= t.timestamp_ms < open_ms + MIN]
    now = inside[0].timestamp_ms  # the clock at the first trade of the minute
    got = book.minute(open_ms, now)
    assert got is not None
    assert got[0].trades == sum(1 for t in inside if t.timestamp_ms <= now) < len(inside)
    assert book.minute(open_ms + MIN, now) is None  # no candle after the clock
    full = book.minute(open_ms, open_ms + MIN)
    assert full is not None and full[0].trades == len(inside)


async def test_request_weight_is_counted_reported_and_enforced() -> None:
    # A day's window: a test that crossed a window's end would see its count reset.
    async with ReplayServer([load_tape(XRP_TRADES)], speed=float("inf"), weight_limit=50,
                            weight_window_s=86_400) as server:
        await server.done.wait()
        ex = client(server)
        try:
            await ex.load_markets()  # exchangeInfo: 20
            assert ex.last_response_headers["X-MBX-USED-WEIGHT-1440M"] == "20"
            for _ in range(15):
                await klines(ex, limit=1)  # 2 each: 30 more
            assert ex.last_response_headers["X-MBX-USED-WEIGHT-1440M"] == "50"
            with pytest.raises(ccxt.DDoSProtection):
                await klines(ex, limit=1)
            assert ex.last_response_headers["Retry-After"].isdigit()
            for _ in range(5):
                with pytest.raises(ccxt.DDoSProtection):
                    await klines(ex, limit=1)
            assert server.rest.weights.refused == 5 and server.rest.weights.bans == 1  # kept asking: banned
        finally:
            await ex.close()
        assert server.rest.weights.peak == 50


async def test_injected_klines_errors() -> None:
    faults = FaultSpec(klines_error_rate=1.0, rest_error_status=503)
    async with ReplayServer([load_tape(XRP_TRADES)], speed=float("inf"), faults=faults) as server:
        await server.done.wait()
        ex = client(server)
        try:
            with pytest.raises(ccxt.ExchangeNotAvailable):
                await klines(ex)
            assert len(await ex.fetch_trades("XRP/ETH", limit=3)) == 3  # trades still served
        finally:
            await ex.close()


def test_bad_bar_files_are_refused_with_their_line(tmp_path: Path) -> None:
    bad = tmp_path / "binance_XRPETH_1m.csv"
    bad.write_text("timestamp_ms,open,high,low,close,volume\n60000,1,1,1,1,5\n120000,1,1,1,1,-5\n")
    with pytest.raises(BarFileError, match=r"XRPETH_1m.csv:3: volume '-5' cannot be real"):
        load_bar_files([str(bad)])
    bad.write_text("timestamp_ms,open,high,low,close,volume\n60001,1,1,1,1,5\n")
    with pytest.raises(BarFileError, match="not the open time of a 1-minute bar"):
        load_bar_files([str(bad)])
    with pytest.raises(ValueError, match="no --trades file replays"):
        ReplayServer([load_tape(XRP_TRADES)], history=load_bar_files([f"BTC/USDT={NEAR_BARS}"]))


def test_sparse_bar_files_fill_quiet_minutes_and_volcast_columns_are_served(tmp_path: Path) -> None:
    path = tmp_path / "binance_XRPETH_1m.csv"
    path.write_text(
        "timestamp_ms,open,high,low,close,volume,quote_volume,trades,buy_volume,sell_volume,vwap\n"
        "1570751820000,1,2,1,2,3,4.5,2,1,2,1.5\n"
        "1570751940000,2,2,2,2,1,2,1,0,1,2\n"  # 1570751880000 missing: nothing traded
    )
    history = load_bar_files([str(path)])["XRP/ETH"]
    book = KlineBook(load_tape(XRP_TRADES), 0, 10 * 86_400_000, loop=False, history=history)
    assert book.history_shift_ms == 0  # the file ends where the tape (2019-10-11 00:00) starts
    first = book.minute(1570751820000, 1570752000000)
    quiet = book.minute(1570751880000, 1570752000000)
    assert first is not None and quiet is not None
    assert (first[0].quote_volume, first[0].trades, first[0].buy_volume) == (Decimal("4.5"), 2, Decimal(1))
    assert quiet[0].volume == 0 and quiet[0].close == 2 and quiet[0].trades == 0



def test_replay_command_serves_history_files(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "volcast.cli", "replay", "--trades", str(XRP_TRADES), "--port", "0"]
    with subprocess.Popen([*command, "--history", f"XRPETH={NEAR_BARS}"], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(3)]
        finally:
            proc.terminate()
    assert lines[2].startswith("history   XRP/ETH: 4320 minutes of bars before its trades")
    bad = tmp_path / "binance_XRPETH_1m.csv"
    bad.write_text("timestamp_ms,open,high,low,close,volume\n60000,1,1,1,1,abc\n")
    result = subprocess.run([*command, "--history", str(bad)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"volcast replay: {bad}:2: volume 'abc' is not a number"
