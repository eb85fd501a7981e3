"""One reading task per websocket connection, in place of ccxt's receive loop.

ccxt (4.5.90, ``ws/client.py`` ``receive_loop``) reads each frame through a new task whose done
callback handles it and schedules the loop again: three event-loop turns and a task a frame, unless
aiohttp already holds more than one frame, which it then drains. So the loop turns as often as
frames arrive, whatever their number per turn: measured with the simulator's 1,000 trades a second
per symbol, a streamer of 2 symbols ran as many loop turns (~5,900 a second) as one of 4, and two
such streamers used 1.7x the CPU of one for the same trades (benchmarks/streamers.py).

The pump awaits aiohttp's ``receive()``, which returns at once while frames are buffered, so the
loop turns once per socket read, not three times per frame. Everything else is ccxt's: each frame
goes to the client's ``handle_message`` (our guarded one, source.py) in the order it came; a read
error rejects the client's futures as ccxt's ``NetworkError``; a closed connection calls
``on_close(1006)`` as ccxt's loop does when it finds the connection closed; cancelling the task
(shutdown) ends it silently.

**The read hold.** A socket read costs a process ~43 us (epoll, recv, aiohttp's parse, a task
step) before any frame is handled, and a busy exchange sends a frame every millisecond or so: a
streamer's own cost was then its wake-ups, one per frame, paid again by every process of a
sharded deployment (docs/benchmarks.md). When the connection is busy (its last three frames came
within a hold) and ``hold.may(client)`` allows it, the pump stops reading the socket until the
next multiple of the hold on the loop's clock, at least a quarter of a hold away (aiohttp's
protocol ``pause_reading``, so the kernel keeps the bytes) and then takes what came in one read.
On that grid every busy connection of the process, and the feeds' tickers and the liveness
prober on theirs (tick_grid.py, 50 ms, which the default hold equals), wake in the same loop
turn: a process wakes about 20 times a second however many connections it reads, where a rest
of a hold from each read woke it once per connection and rest, the cost a second process of a
sharded deployment pays again (docs/benchmarks.md 2026-12-06 20:40). ``may`` (exchange_link.py)
allows it only while no live feed of the exchange has a bar ending within the hold and a margin,
or waiting to close: closing trades and pongs are read as soon as they come. Order is kept (one
TCP stream), nothing is dropped; a trade may be handled up to 5/4 of a hold later in the middle
of a bar, where only the forming bar's write (once a second) sees it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from ccxt.base.errors import NetworkError

from streamer.tick_grid import until_next_tick

log = logging.getLogger(__name__)

_SHORTEST_REST = 0.25  # of a hold: a rest that ends on the grid sooner waits for the next tick


class ReadHold:
    """How long a busy connection's socket may rest between reads, and when it may."""

    __slots__ = ("may", "rested", "seconds")

    def __init__(self, seconds: float, may: Callable[[Any], bool]) -> None:
        self.seconds = seconds
        self.may = may  # may(client): no bar of the exchange's feeds is near its close
        # The frame being handled came in a read after a rest: its delay is partly ours (a pump
        # sets it before each frame it hands on; frames are handled one at a time).
        self.rested = False


def install_pump(client: Any, hold: ReadHold | None = None) -> None:
    """Replace ``client.receive_loop`` (called once by ccxt's ``open``) with the pump."""

    def start() -> None:
        client._volcast_pump = client.asyncio_loop.create_task(pump(client, hold))

    client.receive_loop = start
    client._volcast_hold = hold


async def pump(client: Any, hold: ReadHold | None = None) -> None:
    """Hand every frame of the connection to ``client.handle_message`` until it closes.

    An error of the pump's own (the hold's question, a rest; frames' errors are the guarded
    handler's) ends the connection as a read error does, logged: a task that died silently left
    its connection open and unread, and its feeds waited for a watchdog (30 s) to find the flow
    stopped."""
    try:
        await _pump(client, hold)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("%s: the receive pump failed; its feeds reconnect", getattr(client, "url", "a connection"))
        client.on_error(NetworkError(f"receive pump failed: {exc!r}"))


async def _pump(client: Any, hold: ReadHold | None) -> None:
    # Monotonic times of the last three frames: three within a hold make the connection busy (two
    # can come together on a quiet one: a subscription's answer and a trade).
    first = second = latest = float("-inf")
    rested = False  # the frames now buffered came in a read after a rest
    while True:
        if client.closed():
            client.on_close(1006)
            return
        if hold is not None and _drained(client):
            rested = latest - first < hold.seconds and hold.may(client)
            if rested:
                await _rest(client, rest_seconds(client.asyncio_loop.time(), hold.seconds))
        try:
            message = await client.receive()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            client.reject(NetworkError(str(exc)))
            return
        first, second, latest = second, latest, time.monotonic()
        if hold is not None:
            hold.rested = rested  # here, not before the await: other connections' pumps share it
        client.handle_message(message)


def rest_seconds(loop_time: float, hold_s: float) -> float:
    """To the next multiple of the hold on the loop's clock, or the one after where that is less
    than a quarter of a hold away: a rest that short would save few reads (to the grid alone,
    tried with 10 ms, reads rose ~20%). Between a quarter and 5/4 of a hold; after a read woken on
    the grid, about one hold."""
    wait = until_next_tick(loop_time, hold_s)
    return wait if wait >= hold_s * _SHORTEST_REST else wait + hold_s


def longest_rest_ms(hold_ms: int) -> int:
    """The longest rest ``rest_seconds`` gives a hold (a hold past the shortest), rounded up to
    the millisecond."""
    return math.ceil(hold_ms * (1 + _SHORTEST_REST))


def pump_state(client: Any) -> str:
    """What a connection's pump is doing, for the log line of a watchdog that found its trade flow
    stopped while pongs still came: whether its task runs, whether its socket is paused (a rest),
    and the frames aiohttp holds. A stall of that kind was seen twice in ~60 benchmark runs
    (docs/benchmarks.md 2026-12-07), with nothing in the log to tell the pump from the server."""
    task = getattr(client, "_volcast_pump", None)
    if task is None:
        state = "no pump"
    elif not task.done():
        state = "pump running"
    elif task.cancelled():
        state = "pump cancelled"
    else:
        state = f"pump ended ({task.exception()!r})"
    reader = getattr(getattr(client, "connection", None), "_reader", None)
    protocol = getattr(reader, "_protocol", None)
    paused = getattr(protocol, "_reading_paused", None)
    socket = "socket paused" if paused else "socket read" if paused is not None else "socket unknown"
    buffered = len(getattr(reader, "_buffer", None) or ())
    return f"{state}, {socket}, {buffered} frame(s) buffered"


def _drained(client: Any) -> bool:
    """aiohttp holds no frame already read: the next ``receive()`` would read the socket."""
    reader = getattr(client.connection, "_reader", None)
    return reader is not None and not getattr(reader, "_buffer", True)


async def _rest(client: Any, seconds: float) -> None:
    """Leave the socket unread for ``seconds`` (the kernel buffers what comes), then read again."""
    protocol = getattr(client.connection._reader, "_protocol", None)
    if protocol is None or getattr(protocol, "transport", None) is None:
        return
    protocol.pause_reading()
    try:
        await asyncio.sleep(seconds)
    finally:
        # aiohttp's own flow control cannot have paused it meanwhile: its buffer was empty and
        # nothing was read into it.
        protocol.resume_reading()
