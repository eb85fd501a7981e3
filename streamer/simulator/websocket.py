"""One websocket client of the simulator: its subscriptions, its fault state and its sender.

The publisher hands each connection the frames of the trades it subscribed to; the connection
queues them and a sender task writes them back to back, awaiting only aiohttp's flow control
(not one drain per frame), which is what lets the flood reach hundreds of thousands of frames
per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence

import orjson
from aiohttp import WSMsgType, web

from streamer.simulator.faults import FaultSpec
from streamer.simulator.frames import malformed_frame
from streamer.simulator.ws_limits import TOO_MANY_REQUESTS, ConnectionCounter, WebsocketLimits

WRITE_CHUNK = 512
HIGH_WATER = 1 << 20
DRAIN_POLL_S = 0.002


def ws_header(length: int) -> bytes:
    """Header of a final, unmasked text frame (RFC 6455 5.2) carrying ``length`` bytes."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


class Subscriber:
    def __init__(
        self, number: int, ws: web.WebSocketResponse, request: web.Request, faults: FaultSpec, seed: int
    ) -> None:
        self.number = number
        self.streams: set[str] = set()
        self.trades_sent = 0
        self.dropped = False
        self._ws = ws
        self._request = request
        self._faults = faults
        self._rng = random.Random(seed * 1_000_003 + number)
        self._queue: list[tuple[bytes, bool]] = []
        self._wake = asyncio.Event()
        self.flushed = asyncio.Event()
        """Set while everything queued has been handed to the socket."""
        self.flushed.set()
        self._opened = time.monotonic()
        self._malformed_turn = 0
        self.counter = ConnectionCounter(number)
        self.stalled: Callable[[], bool] = lambda: False
        """Set by the server: whether the ``stall_after_s`` fault has stopped this connection."""

    @property
    def opened(self) -> float:
        return self._opened

    def wants(self, market_id: str) -> bool:
        return f"{market_id.lower()}@trade" in self.streams

    def offer(self, market_id: bytes, frames: Sequence[bytes]) -> None:
        """Queue the frames of newly published trades, with this connection's faults applied."""
        f = self._faults
        if not (f.duplicate_rate or f.reorder_window or f.malformed_rate):
            self._queue.extend([(frame, True) for frame in frames])
        else:
            order = list(range(len(frames)))
            if f.reorder_window > 1:
                for start in range(0, len(order), f.reorder_window):
                    chunk = order[start : start + f.reorder_window]
                    self._rng.shuffle(chunk)
                    order[start : start + f.reorder_window] = chunk
            for i in order:
                if f.malformed_rate and self._rng.random() < f.malformed_rate:
                    kind = f.malformed_kinds[self._malformed_turn % len(f.malformed_kinds)]
                    self._malformed_turn += 1
                    self._queue.append((malformed_frame(kind, market_id, frames[i]), False))
                self._queue.append((frames[i], True))
                if f.duplicate_rate and self._rng.random() < f.duplicate_rate:
                    self._queue.append((frames[i], False))
        self.flushed.clear()
        self._wake.set()

    def send_control(self, payload: bytes) -> None:
        self._queue.append((payload, False))
        self._wake.set()

    def _drop(self) -> None:
        """Close TCP under the websocket, with no close frame: the client sees an abnormal 1006."""
        self.dropped = True
        self.flushed.set()
        transport = self._request.transport
        if transport is not None:
            transport.close()

    async def pump(self) -> None:
        """Write queued frames until the connection ends (or a drop fault ends it).

        Frames are framed here and written to the transport many at once: aiohttp's
        ``send_frame`` makes one ``send`` system call per frame, which caps a flood near 25k
        frames/s. Server frames are unmasked and uncompressed, so framing is a header per
        payload; aiohttp's own control frames (pong, close) are whole frames too and interleave
        safely between ours.
        """
        every_n = self._faults.drop_every_trades
        deadline = self._opened + self._faults.drop_every_s if self._faults.drop_every_s else None
        transport = self._request.transport
        if transport is None:
            return
        while True:
            if not self._queue:
                self._wake.clear()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            if deadline is not None and time.monotonic() >= deadline:
                self._drop()
                return
            batch, self._queue = self._queue, []
            if self.stalled():
                self.flushed.set()
                await asyncio.Event().wait()  # stopped for good, the socket left open
            for start in range(0, len(batch), WRITE_CHUNK):
                chunk = batch[start : start + WRITE_CHUNK]
                out: list[bytes] = []
                for frame, is_trade in chunk:
                    out.append(ws_header(len(frame)))
                    out.append(frame)
                    if is_trade:
                        self.trades_sent += 1
                        if every_n and self.trades_sent % every_n == 0:
                            transport.write(b"".join(out))
                            self._drop()
                            return
                if transport.is_closing():
                    return
                transport.write(b"".join(out))
                # Flow control: let a slow reader catch up instead of buffering the whole flood.
                # A bare transport has no drain waiter (aiohttp keeps its own private), so poll.
                while transport.get_write_buffer_size() > HIGH_WATER and not transport.is_closing():  # noqa: ASYNC110
                    await asyncio.sleep(DRAIN_POLL_S)
            if not self._queue:
                self.flushed.set()


async def serve_messages(
    ws: web.WebSocketResponse,
    sub: Subscriber,
    limits: WebsocketLimits,
    on_subscribe: Callable[[], None],
    pump: asyncio.Task[None],
) -> None:
    """Read the client's messages until it goes (or the pump ends the connection).

    Pings are answered here (the response runs without aiohttp's autoping), so that pings, pongs
    and requests all count against the message rate, as Binance counts them; a connection past the
    limit is closed with 1008. A pong is written after every trade frame already written to the
    socket, never before: what a client's liveness proof rests on (streamer/liveness.py).
    """
    async for msg in ws:
        if sub.stalled():
            continue  # a stalled server reads nothing and answers nothing
        if msg.type in (WSMsgType.TEXT, WSMsgType.PING, WSMsgType.PONG) and not limits.message(sub.counter):
            await ws.close(code=TOO_MANY_REQUESTS, message=b"Too many requests")
            break
        if msg.type == WSMsgType.PING:
            await ws.pong(msg.data)
        elif msg.type == WSMsgType.TEXT:
            handle_request(sub, msg.data, on_subscribe, limits)
        if pump.done():
            break


def handle_request(
    sub: Subscriber, text: str, on_subscribe: Callable[[], None], limits: WebsocketLimits | None = None
) -> None:
    """Answer one client message: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, as Binance does."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        sub.send_control(b'{"error":{"code":3,"msg":"Invalid JSON: expected value at line 1 column 1"}}')
        return
    if not isinstance(message, dict):
        sub.send_control(b'{"error":{"code":2,"msg":"Invalid request"}}')
        return
    request_id = message.get("id")
    method = message.get("method")
    params = message.get("params", [])
    if method in ("SUBSCRIBE", "UNSUBSCRIBE") and isinstance(params, list) and all(isinstance(p, str) for p in params):
        if method == "SUBSCRIBE":
            adding = len(set(params) - sub.streams)
            if limits is not None and not limits.streams(sub.counter, len(sub.streams), adding):
                sub.send_control(orjson.dumps({"error": {"code": 2, "msg": (
                    f"Invalid request: a connection may listen to at most {limits.streams_per_connection} streams"
                )}, "id": request_id}))
                return
            sub.streams.update(params)
            on_subscribe()
        else:
            sub.streams.difference_update(params)
        sub.send_control(orjson.dumps({"result": None, "id": request_id}))
    elif method == "LIST_SUBSCRIPTIONS":
        sub.send_control(orjson.dumps({"result": sorted(sub.streams), "id": request_id}))
    else:
        sub.send_control(
            orjson.dumps(
                {"error": {"code": 2, "msg": "Invalid request: unknown method or bad params"}, "id": request_id}
            )
        )
