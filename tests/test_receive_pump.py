"""The receive pump (streamer/receive_pump.py) against ccxt's real binance client and the simulator.

One task reads a connection's frames in place of ccxt's task per frame; every frame still
reaches the guarded handler in order, and a lost connection still rejects the client's futures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Generator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import ccxt
import ccxt.pro
import orjson
import pytest
from aiohttp.client_proto import ResponseHandler

from streamer import receive_pump
from streamer.receive_pump import ReadHold, longest_rest_ms, rest_seconds
from streamer.simulator import FaultSpec, ReplayServer, binance_client_options, deep_merge, synthetic_tape
from streamer.source import guard_frames

TRADES = 20_000


class Frames:
    """What the guarded handler saw, in order; ``done`` is set once trade ``last_id``'s frame came."""

    def __init__(self, last_id: int) -> None:
        self.items: list[Any] = []
        self.last_id = last_id
        self.done = asyncio.Event()

    def add(self, _client: Any, item: Any) -> None:
        self.items.append(item)
        if trade_ids([item]) == [self.last_id]:
            self.done.set()

    def trade_ids(self) -> list[int]:
        return trade_ids(self.items)


@asynccontextmanager
async def guarded_binance(server: ReplayServer, frames: Frames, hold: ReadHold | None = None) -> AsyncIterator[Any]:
    ex = ccxt.pro.binance({"enableRateLimit": False})
    extra = binance_client_options(server)
    deep_merge(ex.urls, extra["urls"])
    deep_merge(ex.options, extra["options"])
    guard_frames(ex, frames.add, frames.add, hold=hold)
    try:
        await ex.load_markets()
        yield ex
    finally:
        await ex.close()


async def watch_forever(ex: Any, symbol: str) -> None:
    while True:
        await ex.watch_trades(symbol)


def trade_ids(frames: list[Any]) -> list[int]:
    ids = []
    for message in frames:
        data = getattr(message, "data", None)
        if isinstance(data, str) and '"e":"trade"' in data:
            ids.append(orjson.loads(data)["t"])
    return ids


async def delivered(ex: Any, server: ReplayServer, frames: Frames) -> list[int]:
    """Watch until the last trade's frame has reached the handler (or 30 s passed)."""
    watcher = asyncio.create_task(watch_forever(ex, "BTC/USDT"))
    await server.wait_flushed()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(frames.done.wait(), 30)
    watcher.cancel()
    return frames.trade_ids()


class TaskCount:
    """Counts the tasks the event loop creates while inside ``with``."""

    def __init__(self) -> None:
        self.created = 0

    def __enter__(self) -> TaskCount:
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
                    **kwargs: Any) -> asyncio.Task[Any]:
            self.created += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.get_running_loop().set_task_factory(None)


async def test_every_frame_of_a_flood_in_order() -> None:
    tape = synthetic_tape("BTC/USDT", TRADES)
    frames = Frames(tape.trades[-1].trade_id)
    async with (
        ReplayServer([tape], speed=float("inf"), start_on_subscribe=True) as server,
        guarded_binance(server, frames) as ex,
    ):
        assert await delivered(ex, server, frames) == [t.trade_id for t in tape.trades]
        assert not [f for f in frames.items if isinstance(f, Exception)]


async def test_paced_frames_cost_no_task_each() -> None:
    """At the pace of a live feed (a trade a millisecond, as the simulator plays at speed 1) each
    frame is alone on the socket: ccxt's loop then creates a task for every one (~1,500 here)."""
    tape = synthetic_tape("BTC/USDT", 1_500)
    frames = Frames(tape.trades[-1].trade_id)
    async with (
        ReplayServer([tape], speed=1.0, start_on_subscribe=True) as server,
        guarded_binance(server, frames) as ex,
    ):
        with TaskCount() as tasks:
            ids = await delivered(ex, server, frames)
        assert ids == [t.trade_id for t in tape.trades]
        assert tasks.created < 100, tasks.created


async def test_a_lost_connection_rejects_the_watch() -> None:
    tape = synthetic_tape("BTC/USDT", TRADES)
    frames = Frames(tape.trades[-1].trade_id)
    faults = FaultSpec(drop_every_trades=5_000)
    async with (
        ReplayServer([tape], speed=float("inf"), start_on_subscribe=True, faults=faults) as server,
        guarded_binance(server, frames) as ex,
    ):
        with pytest.raises(ccxt.NetworkError):
            async with asyncio.timeout(30):
                await watch_forever(ex, "BTC/USDT")
        ids = frames.trade_ids()
        assert ids == [t.trade_id for t in tape.trades[: len(ids)]]
        assert 0 < len(ids) <= 5_000


class SocketReads:
    """Counts the socket reads that reach aiohttp's protocol (each a ``data_received``) and the
    pump's rests; instruments the real code, replaces nothing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        self.pauses = 0
        received = ResponseHandler.data_received
        rest = receive_pump._rest

        def counted_received(protocol: ResponseHandler, data: bytes) -> None:
            self.reads += 1
            received(protocol, data)

        async def counted_rest(client: Any, seconds: float) -> None:
            self.pauses += 1
            await rest(client, seconds)

        monkeypatch.setattr(ResponseHandler, "data_received", counted_received)
        monkeypatch.setattr(receive_pump, "_rest", counted_rest)


@pytest.mark.parametrize("allowed", [True, False], ids=["may_rest", "a_bar_about_to_close"])
async def test_a_busy_connection_rests_between_reads_only_where_allowed(
    monkeypatch: pytest.MonkeyPatch, allowed: bool
) -> None:
    """A frame a millisecond, a 10 ms hold: about one read per 10 frames, not one per frame. Where
    ``may`` says no (a bar ends soon, or waits for its close) every frame is read at once."""
    tape = synthetic_tape("BTC/USDT", 1_500)
    frames = Frames(tape.trades[-1].trade_id)
    asked: list[Any] = []

    def may(client: Any) -> bool:
        asked.append(client)
        return allowed

    counted = SocketReads(monkeypatch)
    async with (
        ReplayServer([tape], speed=1.0, start_on_subscribe=True) as server,
        guarded_binance(server, frames, ReadHold(0.010, may)) as ex,
    ):
        ids = await delivered(ex, server, frames)
    assert ids == [t.trade_id for t in tape.trades]
    assert asked
    if allowed:
        assert counted.pauses > 0
        assert counted.reads < len(tape.trades) / 3, counted.reads
    else:
        assert counted.pauses == 0


async def test_a_quiet_connection_is_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames further apart than the hold: reading them later would save no read, so they do not
    wait. (The simulator sends its first ~10 trades at once, a burst the pump may rest after.)"""
    tape = synthetic_tape("BTC/USDT", 40)
    frames = Frames(tape.trades[-1].trade_id)
    counted = SocketReads(monkeypatch)
    async with (
        ReplayServer([tape], speed=0.05, start_on_subscribe=True) as server,  # a trade every 20 ms
        guarded_binance(server, frames, ReadHold(0.010, lambda _client: True)) as ex,
    ):
        ids = await delivered(ex, server, frames)
    assert ids == [t.trade_id for t in tape.trades]
    assert counted.pauses <= 2, counted.pauses  # one per frame (40) if quiet frames were held


def test_a_rest_ends_on_the_holds_grid_at_least_a_quarter_of_a_hold_away() -> None:
    """Every rest ends on a multiple of the hold on the loop's clock, so a process's busy
    connections and its 50 ms tickers wake in one loop turn; never sooner than a quarter of a hold
    (a rest that short would save few reads), never longer than 5/4 of one."""
    hold = 0.05
    assert rest_seconds(100.0, hold) == pytest.approx(0.05)
    assert rest_seconds(100.01, hold) == pytest.approx(0.04)
    assert rest_seconds(100.0374, hold) == pytest.approx(0.0126)
    assert rest_seconds(100.0376, hold) == pytest.approx(0.0624)  # 12.4 ms to the grid: the next one
    for step in range(1_000):
        now = 1_234.5 + step * 0.000_37
        rest = rest_seconds(now, hold)
        assert hold / 4 <= rest <= hold * 5 / 4
        ticks = (now + rest) / hold
        assert ticks == pytest.approx(round(ticks), abs=1e-6)
    assert longest_rest_ms(50) == 63 and longest_rest_ms(10) == 13 and longest_rest_ms(4) == 5


async def test_a_failing_pump_ends_its_connection_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """An error of the pump's own (here the hold's question) closes the connection, logged, and
    the watch goes on over a new one (as a feed's reconnect does). Before, the pump's task died
    silently and left the connection open and unread: the watch waited for ever (a feed, for its
    watchdog to find the flow stopped)."""
    tape = synthetic_tape("BTC/USDT", 1_500)
    frames = Frames(tape.trades[-1].trade_id)
    asked = 0
    failed: list[Any] = []

    def may(client: Any) -> bool:
        nonlocal asked
        asked += 1
        if asked == 20:
            failed.append(client)
            raise KeyError("a bug in the hold's question")
        return True

    async def watch_again(ex: Any) -> None:
        while True:
            with contextlib.suppress(ccxt.NetworkError):
                await watch_forever(ex, "BTC/USDT")

    async with (
        ReplayServer([tape], speed=1.0, start_on_subscribe=True) as server,
        guarded_binance(server, frames, ReadHold(0.010, may)) as ex,
    ):
        watcher = asyncio.create_task(watch_again(ex))
        try:
            async with asyncio.timeout(30):
                await frames.done.wait()  # the last trade came, over the new connection
        finally:
            watcher.cancel()
        assert failed and failed[0].closed()
        ids = frames.trade_ids()
        assert ids == sorted(set(ids))
    assert "the receive pump failed" in caplog.text


def test_a_pumps_state_for_the_watchdogs_log() -> None:
    """What the watchdog logs when a connection's trade flow stopped while pongs came: the pump's
    task, its socket and aiohttp's buffered frames (a pure unit test: the states are moments a
    real connection passes through too fast to catch)."""

    async def states() -> list[str]:
        reader = SimpleNamespace(_protocol=SimpleNamespace(_reading_paused=True), _buffer=[1, 2])
        client = SimpleNamespace(connection=SimpleNamespace(_reader=reader))
        seen = [receive_pump.pump_state(client)]
        client._volcast_pump = asyncio.create_task(asyncio.sleep(10))
        seen.append(receive_pump.pump_state(client))
        client._volcast_pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await client._volcast_pump
        reader._protocol._reading_paused = False
        reader._buffer = []
        seen.append(receive_pump.pump_state(client))

        async def fail() -> None:
            raise KeyError("bug")

        client._volcast_pump = asyncio.create_task(fail())
        with contextlib.suppress(KeyError):
            await client._volcast_pump
        seen.append(receive_pump.pump_state(SimpleNamespace(_volcast_pump=client._volcast_pump)))
        return seen

    assert asyncio.run(states()) == [
        "no pump, socket paused, 2 frame(s) buffered",
        "pump running, socket paused, 2 frame(s) buffered",
        "pump cancelled, socket read, 0 frame(s) buffered",
        "pump ended (KeyError('bug')), socket unknown, 0 frame(s) buffered",
    ]
