"""The exchange simulator against ccxt's real ``ccxt.pro.binance`` client, with real recorded trades.

Two ccxt behaviours shape these tests (both matter to the streamer):
- ``watch_trades`` resolves only when a trade arrives while a call is waiting; trades parsed
  after the last wake-up of a burst sit in ccxt's cache (``ex.trades[symbol]``) until the next
  trade comes. So the final trades of a replay may never be returned by ``watch_trades``: a
  client recovers them from REST (or the cache).
- Frames that are not JSON, or truncated JSON, raise inside ccxt's receive callback, which stops
  reading that connection without any error: only a watchdog (no trade for a while -> close
  and watch again) gets the feed back.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import ccxt
import ccxt.pro
import orjson
import pytest

from streamer.simulator import (
    FaultSpec,
    ReplayServer,
    Tape,
    binance_client_options,
    deep_merge,
    load_tape,
    parse_faults,
    synthetic_tape,
)
from streamer.simulator.timeline import DAY_MS
from streamer.simulator.ws_limits import WebsocketLimits

DATA = Path(__file__).parent / "data"
BTC = DATA / "binance_BTCUSDT_trades_2021-01-08_000000-000046.csv.gz"
XRP = DATA / "binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz"
ETH = DATA / "unknown-exchange_ETHUSDT_trades_2023-02-02_0920.csv.gz"


@pytest.fixture(scope="module")
def btc() -> Tape:
    return load_tape(BTC)


@asynccontextmanager
async def binance(server: ReplayServer, **options: Any) -> AsyncIterator[Any]:
    ex = ccxt.pro.binance({"enableRateLimit": False})
    extra = binance_client_options(server)
    deep_merge(ex.urls, extra["urls"])
    deep_merge(ex.options, extra["options"])
    deep_merge(ex.options, options)
    try:
        await ex.load_markets()
        yield ex
    finally:
        await ex.close()


def expected(tape: Tape, shift_ms: int) -> dict[str, tuple[int, str, str, str]]:
    """id -> (timestamp, price, amount, side) as the replay must deliver them."""
    return {
        str(t.trade_id): (t.timestamp_ms + shift_ms, t.price, t.amount, "sell" if t.buyer_maker else "buy")
        for t in tape.trades
    }


def as_delivered(trade: dict[str, Any]) -> tuple[int, str, str, str]:
    info = trade["info"]
    price = info.get("p", info.get("price"))
    amount = info.get("q", info.get("qty"))
    return trade["timestamp"], price, amount, trade["side"]


async def cached_trades(ex: Any, symbol: str, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """ccxt's cache of parsed trades once it holds ``count`` with an id (see the module docstring)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        cache = list(ex.trades.get(symbol) or [])
        if sum(t["id"] is not None for t in cache) >= count:
            break
        await asyncio.sleep(0.02)
    return list(ex.trades.get(symbol) or [])


@dataclass
class Collected:
    live: list[dict[str, Any]] = field(default_factory=list)
    rest: list[dict[str, Any]] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)


async def retrying(call: Callable[[], Awaitable[Any]], events: Counter[str], attempts: int = 20) -> Any:
    for _ in range(attempts):
        try:
            return await call()
        except ccxt.NetworkError as exc:  # RateLimitExceeded / DDoSProtection / ExchangeNotAvailable
            events[type(exc).__name__] += 1
            await asyncio.sleep(0.01)
    raise AssertionError(f"still failing after {attempts} attempts: {events}")


async def watch_with_watchdog(ex: Any, server: ReplayServer, symbol: str, out: Collected, quiet_s: float) -> None:
    """Live trades until the replay is over: reconnect on NetworkError (ccxt does it on the next
    watch) and, when nothing came for ``quiet_s`` while the replay runs, by closing the client."""
    while True:
        try:
            out.live.extend(await asyncio.wait_for(ex.watch_trades(symbol), quiet_s))
        except ccxt.NetworkError as exc:
            out.events[type(exc).__name__] += 1
            if server.done.is_set():
                return  # a drop fault keeps dropping after the end: the rest comes from REST
        except TimeoutError:
            if server.done.is_set():
                return
            out.events["watchdog"] += 1
            await ex.close()


async def backfill(ex: Any, symbol: str, first_id: int, out: Collected) -> None:
    """Fetch over REST every id from ``first_id`` on that the live feed did not deliver."""
    have = {int(t["id"]) for t in out.live if t["id"] is not None}
    cursor = first_id
    while True:
        while cursor in have:
            cursor += 1  # to the start of the next gap (or past the newest trade seen)
        fetch = functools.partial(ex.fetch_trades, symbol, limit=1000, params={"fromId": cursor})
        page = await retrying(fetch, out.events)
        fresh = [t for t in page if int(t["id"]) not in have]
        out.rest.extend(fresh)
        have.update(int(t["id"]) for t in fresh)
        if len(page) < 1000:
            return  # reached the newest published trade
        cursor = int(page[-1]["id"]) + 1


def assert_exactly_once(tape: Tape, server: ReplayServer, out: Collected) -> None:
    want = expected(tape, server.timeline.shifts_ms[0])
    live = [t for t in out.live if t["id"] is not None]
    union = {t["id"]: t for t in live + out.rest}
    assert sorted(union, key=int) == sorted(want, key=int)
    assert all(as_delivered(t) == want[t["id"]] for t in live + out.rest)
    rest_ids = [t["id"] for t in out.rest]
    assert len(rest_ids) == len(set(rest_ids))


async def test_real_file_every_trade_once_in_order(btc: Tape) -> None:
    async with ReplayServer([btc], speed=100, start_on_subscribe=True) as server, binance(server) as ex:
        live: list[dict[str, Any]] = []
        watcher = asyncio.create_task(watch_forever(ex, "BTC/USDT", live))
        await server.wait_flushed()
        cache = await cached_trades(ex, "BTC/USDT", len(btc.trades))
        watcher.cancel()
        shift = server.timeline.shifts_ms[0]
        assert shift % DAY_MS == 0
        want = expected(btc, shift)
        # ccxt parsed every trade once, in order, with the recorded strings, shifted by whole days
        assert [t["id"] for t in cache] == [str(t.trade_id) for t in btc.trades]
        assert [as_delivered(t) for t in cache] == list(want.values())
        # what watch_trades returned is the same sequence, less at most the stranded tail
        assert [t["id"] for t in live] == [t["id"] for t in cache[: len(live)]]
        assert len(live) > len(btc.trades) - 100
        assert server.clock_ms() >= cache[-1]["timestamp"]
        # REST serves the same trades, with the same ids (one aggregate per trade)
        latest = await ex.fetch_trades("BTC/USDT", limit=1000)
        assert [(t["id"], as_delivered(t)) for t in latest] == [(t["id"], as_delivered(t)) for t in cache[-1000:]]


async def test_the_clock_never_runs_slower_than_real_time_while_the_replay_waits(btc: Tape) -> None:
    """``start_on_subscribe`` holds the replay until every symbol has a subscriber. The clock must
    still advance at least at real time: the streamer's lower bound of the exchange's clock is a
    reading plus the time since (streamer/liveness.py), and a clock that stood still through a wait
    of seconds let pongs prove bars complete before their trades went out."""
    async with ReplayServer([btc], speed=10, start_on_subscribe=True) as server, binance(server) as ex:
        before = await ex.fetch_time()
        read_at = time.monotonic()  # the server read ``before`` earlier than this
        await asyncio.sleep(1.0)  # nobody subscribed: the replay waits
        assert not server.started.is_set()
        watcher = asyncio.create_task(watch_forever(ex, "BTC/USDT", []))
        await server.started.wait()
        asked_at = time.monotonic()  # the server reads ``after`` later than this
        after = await ex.fetch_time()
        watcher.cancel()
        assert after - before >= (asked_at - read_at) * 1000


async def watch_forever(ex: Any, symbol: str, out: list[dict[str, Any]]) -> None:
    while True:
        out.extend(await ex.watch_trades(symbol))


@pytest.mark.parametrize("stream_limit", [None, 1], ids=["connection-per-symbol", "one-connection"])
async def test_several_symbols_at_once(stream_limit: int | None) -> None:
    tapes = [load_tape(BTC), load_tape(ETH), load_tape(XRP)]
    options: dict[str, Any] = {"streamLimits": {"spot": stream_limit}} if stream_limit else {}
    async with ReplayServer(tapes, speed=200_000, start_on_subscribe=True) as server, binance(server, **options) as ex:
        live: dict[str, list[dict[str, Any]]] = {t.symbol: [] for t in tapes}
        watchers = [asyncio.create_task(watch_forever(ex, t.symbol, live[t.symbol])) for t in tapes]
        await server.wait_flushed()
        for ti, tape in enumerate(tapes):
            cache = await cached_trades(ex, tape.symbol, len(tape.trades))
            assert [t["id"] for t in cache] == [str(t.trade_id) for t in tape.trades], tape.symbol
            assert [as_delivered(t) for t in cache] == list(expected(tape, server.timeline.shifts_ms[ti]).values())
            assert live[tape.symbol], f"watch_trades starved {tape.symbol}"
        for w in watchers:
            w.cancel()
        assert server.connections_opened == (1 if stream_limit == 1 else 3)
        assert server.published == {"BTC/USDT": 2001, "ETH/USDT": 1000, "XRP/ETH": 12477}


async def test_flood_of_100k_loses_nothing() -> None:
    n = 100_000
    tape = synthetic_tape("BTC/USDT", n)
    async with (
        ReplayServer([tape], speed=float("inf"), start_on_subscribe=True) as server,
        binance(server) as ex,
    ):
        live: list[dict[str, Any]] = []
        watcher = asyncio.create_task(watch_forever(ex, "BTC/USDT", live))
        t0 = time.perf_counter()
        await server.wait_flushed()
        cache = await cached_trades(ex, "BTC/USDT", n, timeout_s=60)
        elapsed = time.perf_counter() - t0
        watcher.cancel()
        assert server.started_mono is not None and server.finished_mono is not None
        print(f"\nflood: ccxt took {n} trades in {elapsed:.2f} s ({n / elapsed:,.0f} trades/s)")
        assert [int(t["id"]) for t in cache] == [t.trade_id for t in tape.trades]
        assert [t["id"] for t in live] == [t["id"] for t in cache[: len(live)]]
        assert cache[-1]["timestamp"] - cache[0]["timestamp"] == n - 1  # one ms per trade: several 1m bars


FAULTS = {
    "drop_every_trades": ("drop_every_trades=300", 50),
    "drop_every_s": ("drop_every_s=0.3", 40),
    "silent": ("silent_after_s=0.2,silent_for_s=0.6", 40),
    "duplicate": ("duplicate_rate=0.05", 100),
    "reorder": ("reorder_window=5", 2000),
    "malformed": ("malformed_rate=0.01", 25),
    "rest_429": ("drop_every_trades=400,rest_error_rate=0.5,rest_error_status=429", 100),
    "rest_503": ("drop_every_trades=400,rest_error_rate=0.5,rest_error_status=503", 100),
}


@pytest.mark.parametrize("kind", list(FAULTS))
async def test_fault_then_reconnect_and_backfill_gives_every_trade_once(kind: str, btc: Tape) -> None:
    spec, speed = FAULTS[kind]
    faults = parse_faults(spec)
    async with (
        ReplayServer([btc], speed=speed, faults=faults, seed=7, start_on_subscribe=True) as server,
        binance(server) as ex,
    ):
        out = Collected()
        await watch_with_watchdog(ex, server, "BTC/USDT", out, quiet_s=0.5)
        await backfill(ex, "BTC/USDT", btc.trades[0].trade_id, out)
        assert_exactly_once(btc, server, out)
        live_ids = [t["id"] for t in out.live if t["id"] is not None]
        # and the fault did happen
        if kind.startswith("drop"):
            assert server.connections_opened > 1 and out.rest
        elif kind == "silent":
            assert out.rest, "the silent period's trades come from REST"
        elif kind == "duplicate":
            assert len(live_ids) > len(set(live_ids))
        elif kind == "reorder":
            assert live_ids != sorted(live_ids, key=int)
        elif kind == "malformed":
            # unknown events are ignored, frames without fields come out as trades without an id,
            # and broken JSON silently stops ccxt's reader until the watchdog reconnects
            assert out.events["watchdog"] >= 1 or any(t["id"] is None for t in out.live)
        elif kind == "rest_429":
            assert out.events["DDoSProtection"] + out.events["RateLimitExceeded"] >= 1
        elif kind == "rest_503":
            assert out.events["ExchangeNotAvailable"] >= 1


@pytest.mark.parametrize(
    ("kind", "survives"),
    [("unknown_event", True), ("missing_fields", True), ("not_json", False), ("truncated_json", False)],
)
async def test_what_each_malformed_frame_does_to_ccxt(kind: str, survives: bool, btc: Tape) -> None:
    faults = FaultSpec(malformed_rate=0.05, malformed_kinds=(kind,))  # type: ignore[arg-type]
    async with (
        ReplayServer([btc], speed=200, faults=faults, seed=3, start_on_subscribe=True) as server,
        binance(server) as ex,
    ):
        live: list[dict[str, Any]] = []
        watcher = asyncio.create_task(watch_forever(ex, "BTC/USDT", live))
        await server.wait_flushed()
        cache = await cached_trades(ex, "BTC/USDT", len(btc.trades), timeout_s=1.0)
        assert not watcher.done()  # no exception reached the caller in any case
        watcher.cancel()
        real = [t for t in cache if t["id"] is not None]
        if survives:
            assert [t["id"] for t in real] == [str(t.trade_id) for t in btc.trades]
            assert any(t["id"] is None for t in cache) == (kind == "missing_fields")
        else:
            assert len(real) < len(btc.trades) // 2  # the reader stopped at the first broken frame


async def test_loop_continues_ids_and_moves_whole_days() -> None:
    eth = load_tape(ETH)
    async with (
        ReplayServer([eth], speed=5_000, loop=True, start_on_subscribe=True) as server,
        binance(server) as ex,
    ):
        live: list[dict[str, Any]] = []
        watcher = asyncio.create_task(watch_forever(ex, "ETH/USDT", live))
        cache = await cached_trades(ex, "ETH/USDT", 2500, timeout_s=20)
        watcher.cancel()
        first = eth.trades[0].trade_id
        assert [int(t["id"]) for t in cache[:2500]] == list(range(first, first + 2500))
        period = server.timeline.period_ms
        assert period % DAY_MS == 0
        for k in (0, 1, 499, 999):
            again = cache[1000 + k]
            assert again["timestamp"] == cache[k]["timestamp"] + period
            assert as_delivered(again)[1:] == as_delivered(cache[k])[1:]
        assert server.loops_completed >= 2
        assert not server.done.is_set()
        # REST finds trades of later passes by id and by time
        page = await ex.fetch_trades("ETH/USDT", limit=3, params={"fromId": first + 1000})
        assert [t["id"] for t in page] == [cache[1000 + k]["id"] for k in range(3)]
        page = await ex.fetch_trades("ETH/USDT", since=cache[1500]["timestamp"], limit=2)
        assert page[0]["timestamp"] == cache[1500]["timestamp"]


async def test_rest_semantics_and_clock_against_ccxt(btc: Tape) -> None:
    # speed 10: 46 s of recording take 4.6 s, so most trades are still unpublished meanwhile
    async with ReplayServer([btc], speed=10, as_recorded=True, start_delay_s=0.0) as server, binance(server) as ex:
        await asyncio.sleep(0.5)
        published = server.published["BTC/USDT"]
        assert 0 < published < len(btc.trades)
        clock = await ex.fetch_time()
        recent = await ex.fetch_trades("BTC/USDT", limit=1000)
        assert 0 < len(recent) <= server.published["BTC/USDT"] < len(btc.trades)
        newest = recent[-1]
        unpublished = btc.trades[server.published["BTC/USDT"]]
        assert newest["timestamp"] <= server.clock_ms() < unpublished.timestamp_ms
        assert clock >= btc.trades[published - 1].timestamp_ms  # as recorded: no shift
        # since / limit: the first trades at or after since, oldest first
        since = btc.trades[10].timestamp_ms
        page = await ex.fetch_trades("BTC/USDT", since=since, limit=5)
        firsts = [t for t in btc.trades if t.timestamp_ms >= since][:5]
        assert [int(t["id"]) for t in page] == [t.trade_id for t in firsts]
        # fromId, inclusive, on every method ccxt offers for spot
        page = await ex.fetch_trades("BTC/USDT", limit=3, params={"fromId": btc.trades[4].trade_id})
        assert [int(t["id"]) for t in page] == [t.trade_id for t in btc.trades[4:7]]
        ex.apiKey = "unchecked"  # ccxt refuses historicalTrades without one
        hist = await ex.fetch_trades(
            "BTC/USDT",
            limit=3,
            params={"fetchTradesMethod": "publicGetHistoricalTrades", "fromId": btc.trades[4].trade_id},
        )
        assert [(t["id"], as_delivered(t)) for t in hist] == [(t["id"], as_delivered(t)) for t in page]
        plain = await ex.fetch_trades("BTC/USDT", limit=2, params={"fetchTradesMethod": "publicGetTrades"})
        plain_ids = [int(t["id"]) for t in plain]  # the newest two (more may be published by now)
        assert len(plain_ids) == 2 and plain_ids[1] == plain_ids[0] + 1 and plain_ids[0] > int(newest["id"]) - 2
        # Binance's rules: fromId with a time window, and limit above 1000, are refused
        with pytest.raises(ccxt.BadRequest):
            await ex.fetch_trades("BTC/USDT", since=since, limit=5, params={"fromId": btc.trades[0].trade_id})
        with pytest.raises(ccxt.BadRequest):
            await ex.fetch_trades("BTC/USDT", limit=1001)
        with pytest.raises(ccxt.BadRequest):
            await ex.fetch_trades("BTC/USDT", since=since, params={"until": since + 3_600_001})


async def test_raw_websocket_protocol(btc: Tape) -> None:
    """What ccxt does not exercise: several streams on one socket, LIST_SUBSCRIPTIONS,
    UNSUBSCRIBE, bad requests, pings, and the /ws path."""
    eth = load_tape(ETH)
    async with (
        # Several requests within a second, more than Binance allows: counted, not enforced here.
        ReplayServer([btc, eth], speed=float("inf"), start_on_subscribe=True,
                     ws_limits=WebsocketLimits(enforce=False)) as server,
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://127.0.0.1:{server.port}/ws") as ws,
    ):
        await ws.send_str("not json")
        assert orjson.loads((await ws.receive()).data)["error"]["code"] == 3
        await ws.send_json({"method": "NOPE", "id": 9})
        assert orjson.loads((await ws.receive()).data) == {
            "error": {"code": 2, "msg": "Invalid request: unknown method or bad params"},
            "id": 9,
        }
        await ws.ping(b"hi")
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@trade"], "id": 1})
        seen: Counter[str] = Counter()
        replies = []
        while sum(seen.values()) < 3001:
            msg = orjson.loads((await asyncio.wait_for(ws.receive(), 10)).data)
            if "e" in msg:
                seen[msg["s"]] += 1
            else:
                replies.append(msg)
        assert replies == [{"result": None, "id": 1}]
        assert seen == {"BTCUSDT": 2001, "ETHUSDT": 1000}
        await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 2})
        assert orjson.loads((await ws.receive()).data) == {"result": ["btcusdt@trade", "ethusdt@trade"], "id": 2}
        await ws.send_json({"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 3})
        assert orjson.loads((await ws.receive()).data) == {"result": None, "id": 3}
