"""A local exchange that replays recorded trades over Binance spot's public API (REST + websocket).

ccxt's real ``ccxt.pro.binance`` client works against it unchanged but for its URLs (see
``binance_client_options``)::

    async with ReplayServer([load_tape("binance_BTCUSDT_trades.csv.gz")], speed=60) as server:
        ex = ccxt.pro.binance({"enableRateLimit": False, **binance_client_options(server)})
        trades = await ex.watch_trades("BTC/USDT")

Time. Trade timestamps are never scaled. By default they are re-based: each file is moved by a
whole number of days, chosen so that its first trade lands in the day before the server
started (files recorded on different dates then play side by side, as live symbols do); each
trade keeps its UTC time of day, its bar, and its offsets to the other trades of its file.
With ``as_recorded`` they go out as recorded. ``speed`` scales only the pacing: at 60 a minute
of recording goes out per real second. The replay clock (``clock_ms()``, and
``GET /api/v3/time``) is the exchange's time now: it starts ``start_delay_s`` (real) before the
first trade, advances at ``speed`` x real time, and never passes a trade that has not been
published, so a clock reading X proves every trade stamped <= X was sent: a client can close a
bar when the clock passes its end even if no trade comes. It is not the wall clock (it can lag
it by up to a day, and runs faster at speed > 1). When looping, the clock jumps over the idle
days between the end of one pass and the start of the next.

Publishing. A trade is published when the clock reaches its timestamp: it is sent to every
websocket connection subscribed to ``<symbol>@trade`` and becomes visible to the REST trade
lists, so a client can backfill what a dropped connection missed. Faults: see ``faults.py``.

Delisting. ``delist(symbol)`` does what an exchange does to a symbol it drops while clients
stream it: the symbol leaves ``exchangeInfo``, its trade lists answer -1121 "Invalid symbol", and
its stream goes silent (subscriptions are still accepted, as Binance accepts any stream name).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from types import TracebackType

from aiohttp import web

from streamer.simulator.bar_files import BarFile
from streamer.simulator.clock import ReplayClock
from streamer.simulator.faults import FaultSpec
from streamer.simulator.frames import trade_frame
from streamer.simulator.klines import kline_books
from streamer.simulator.published import PublishedTrades
from streamer.simulator.rest import BinanceRest
from streamer.simulator.tape import Tape
from streamer.simulator.timeline import Timeline
from streamer.simulator.websocket import Subscriber, serve_messages
from streamer.simulator.weights import BINANCE_LIMIT, RequestWeights
from streamer.simulator.ws_limits import WebsocketLimits

log = logging.getLogger(__name__)

# Trades published per step before yielding to the event loop, so that senders, REST and pings
# keep running while a flood or a fast replay publishes.
MAX_BATCH = 2000


class ReplayServer:
    """Serves ``tapes`` on ``host:port`` (0 = a free port) while inside ``async with``.

    ``start_on_subscribe`` holds the replay (and the clock) until every symbol has a websocket
    subscriber: a flood or a test then loses nothing to a late subscription; the clock then jumps
    forward by the wait, so that it never runs slower than real time. ``history`` gives
    symbols real 1-minute bars before their tape (served as klines, see klines.py);
    ``weight_limit`` (None: count only) and ``weight_window_s`` are the REST request weight rule
    (Binance: 6000 per minute, see weights.py).
    """

    def __init__(
        self,
        tapes: Sequence[Tape],
        *,
        speed: float = 1.0,
        faults: FaultSpec | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        loop: bool = False,
        as_recorded: bool = False,
        start_delay_s: float = 0.2,
        start_on_subscribe: bool = False,
        history: Mapping[str, BarFile] | None = None,
        weight_limit: int | None = BINANCE_LIMIT,
        weight_window_s: float = 60.0,
        ws_limits: WebsocketLimits | None = None,
    ) -> None:
        if not tapes:
            raise ValueError("nothing to replay: no tapes")
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.tapes = tuple(tapes)
        self.speed = speed
        self.faults = faults or FaultSpec()
        self.seed = seed
        self.host = host
        self._requested_port = port
        self.loop = loop
        self.start_on_subscribe = start_on_subscribe
        if as_recorded:
            self.timeline = Timeline.build(self.tapes, [0] * len(self.tapes))
        else:
            self.timeline = Timeline.rebased(self.tapes, int(time.time() * 1000))
        self._lead_ms = 0.0 if math.isinf(speed) else start_delay_s * speed * 1000.0
        self.clock = ReplayClock(self.timeline.first_ms - self._lead_ms, 0.0)
        self.clock.hold_below = self.timeline.first_ms
        tl = self.timeline
        self._stores = {
            t.market_id: PublishedTrades(t, tl.shifts_ms[ti], tl.period_ms) for ti, t in enumerate(self.tapes)
        }
        self._market_ids = {t.market_id: t.market_id.encode() for t in self.tapes}
        self._tape_market_ids = [t.market_id for t in self.tapes]
        # The first pass's frames, encoded before the replay starts (the flood's hot path).
        self._first_pass_frames = [
            [
                trade_frame(mid, t.timestamp_ms + shift, t.trade_id, t.price, t.amount, t.buyer_maker)
                for t in tape.trades
            ]
            for tape, mid, shift in zip(
                self.tapes, (m.encode() for m in self._tape_market_ids), tl.shifts_ms, strict=True
            )
        ]
        books = kline_books(self.tapes, tl.shifts_ms, tl.period_ms, loop=loop, history=history or {})
        self.klines = {book.symbol: book for book in books.values()}
        self._rest = BinanceRest(
            list(self.tapes), self._stores, self.clock.now_ms, self.faults, seed,
            klines=books, weights=RequestWeights(weight_limit, weight_window_s),
        )
        self.ws_limits = ws_limits or WebsocketLimits()
        """Binance's websocket limits (ws_limits.py): counted, enforced, shown at GET /debug/limits."""
        self._subscribers: set[Subscriber] = set()
        self._connections = itertools.count(1)
        self._all_subscribed = asyncio.Event()
        self.started = asyncio.Event()
        self.done = asyncio.Event()
        """Set when every trade was published (never, when looping)."""
        self.loops_completed = 0
        self.connections_opened = 0
        self.started_mono: float | None = None
        self.finished_mono: float | None = None
        self._runner: web.AppRunner | None = None
        self._publisher: asyncio.Task[None] | None = None
        # The ``late_*`` fault: the first tape's frames held back, (release time, market, frames).
        self._late: deque[tuple[float, str, list[bytes]]] = deque()
        self._late_wake = asyncio.Event()
        self._late_sender: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}/api/v3"

    @property
    def ws_url(self) -> str:
        """ccxt appends ``/<stream index>``; ``/ws`` and ``/stream/ws`` with or without it all work."""
        return f"ws://{self.host}:{self.port}/stream/ws"

    @property
    def published(self) -> dict[str, int]:
        """Trades published so far, per unified symbol."""
        return {t.symbol: len(self._stores[t.market_id]) for t in self.tapes}

    @property
    def total(self) -> int:
        """Trades in one pass over all tapes."""
        return len(self.timeline)

    def delist(self, symbol: str) -> None:
        """Drop ``symbol`` (unified, e.g. ``BTC/USDT``) from the exchange from now on."""
        market = next((t.market_id for t in self.tapes if t.symbol == symbol), None)
        if market is None:
            raise ValueError(f"{symbol} is not replayed here")
        self._rest.delisted.add(market)

    @property
    def rest(self) -> BinanceRest:
        """The REST side: its request counters and weights (``rest.weights``)."""
        return self._rest

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def wait_flushed(self) -> None:
        """Wait until every trade is published and handed to the sockets of live connections."""
        await self.done.wait()
        for sub in list(self._subscribers):
            await sub.flushed.wait()

    def clock_ms(self) -> int:
        return self.clock.now_ms()

    async def __aenter__(self) -> ReplayServer:
        app = web.Application()
        self._rest.add_routes(app)
        for path in ("/ws", "/ws/{index}", "/stream/ws", "/stream/ws/{index}"):
            app.router.add_get(path, self._websocket)
        app.router.add_get("/debug/limits", self._debug_limits)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._publisher = asyncio.create_task(self._publish(), name="replay-publisher")
        if self.faults.late_ms:
            self._late_sender = asyncio.create_task(self._send_late(), name="replay-late")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in (self._publisher, self._late_sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._runner is not None:
            await self._runner.cleanup()

    def _check_subscribed(self) -> None:
        if all(any(s.wants(m) for s in self._subscribers) for m in self._market_ids):
            self._all_subscribed.set()

    async def _debug_limits(self, request: web.Request) -> web.Response:
        """What the exchange's limits saw: websocket messages and connections, REST weight."""
        weights = self._rest.weights
        rest = {"limit": weights.limit, "window_s": weights.window_s, "used": weights.used, "peak": weights.peak,
                "total": weights.total, "refused": weights.refused, "bans": weights.bans}
        return web.json_response({"websocket": self.ws_limits.snapshot(), "rest": rest})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if not self.ws_limits.attempt():
            return web.json_response({"code": -1003, "msg": "Too many connection attempts."}, status=429,
                                     headers={"Retry-After": "60"})
        # Binance does not compress; ccxt offers permessage-deflate, which would cost the flood dearly.
        # Pings are answered by serve_messages, which counts them against the message rate limit.
        ws = web.WebSocketResponse(compress=False, autoping=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        number = next(self._connections)
        self.connections_opened += 1
        sub = Subscriber(number, ws, request, self.faults, self.seed)
        if self.faults.stall_after_s:
            sub.stalled = lambda: self._stalled(sub)
        self._subscribers.add(sub)
        pump = asyncio.create_task(sub.pump(), name=f"replay-ws-{number}")
        try:
            await serve_messages(ws, sub, self.ws_limits, self._check_subscribed, pump)
        finally:
            self._subscribers.discard(sub)
            sub.flushed.set()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pump
        return ws

    def connection_streams(self) -> list[set[str]]:
        """The streams each open websocket connection carries, in the order they were opened."""
        return [set(sub.streams) for sub in sorted(self._subscribers, key=lambda sub: sub.number)]

    def _stalled(self, sub: Subscriber) -> bool:
        """The ``stall_after_s`` fault: connections open at that moment stop for good."""
        if self.started_mono is None:
            return False
        stall_at = self.started_mono + self.faults.stall_after_s
        return time.monotonic() >= stall_at and sub.opened < stall_at

    def _frames(self, ti: int, loop: int, start: int, stop: int) -> list[bytes]:
        """Frames of tape ``ti``'s trades ``start:stop`` in pass ``loop``."""
        if loop == 0:
            return self._first_pass_frames[ti][start:stop]
        tape, mid = self.tapes[ti], self._market_ids[self._tape_market_ids[ti]]
        offset = self.timeline.offset_ms(ti, loop)
        id_offset = loop * tape.id_span
        return [
            trade_frame(mid, t.timestamp_ms + offset, t.trade_id + id_offset, t.price, t.amount, t.buyer_maker)
            for t in tape.trades[start:stop]
        ]

    def _fan_out(
        self, ti: int, loop: int, start: int, stop: int, silent: bool, late: bool = False, muted: bool = False
    ) -> None:
        market_id = self._tape_market_ids[ti]
        self._stores[market_id].advance(stop - start)
        if silent or (muted and ti == 0) or market_id in self._rest.delisted:
            return
        if ti == 0 and (late or self._late):  # held back, or queued behind what is
            release = time.monotonic() + self.faults.late_ms / 1000 if late else self._late[-1][0]
            self._late.append((release, market_id, self._frames(ti, loop, start, stop)))
            self._late_wake.set()
            return
        targets = self._targets(market_id)
        if targets:
            self._offer(market_id, targets, self._frames(ti, loop, start, stop))

    async def _send_late(self) -> None:
        """Send the held-back frames of the ``late_*`` fault, in order, each at its release time."""
        while True:
            if not self._late:
                self._late_wake.clear()
                await self._late_wake.wait()
                continue
            release, market_id, frames = self._late[0]
            wait = release - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._late.popleft()
            if market_id not in self._rest.delisted:
                self._offer(market_id, self._targets(market_id), frames)

    def _targets(self, market_id: str) -> list[Subscriber]:
        return [s for s in self._subscribers if s.wants(market_id) and not s.dropped]

    def _offer(self, market_id: str, targets: list[Subscriber], frames: list[bytes]) -> None:
        mid = self._market_ids[market_id]
        for sub in targets:
            sub.offer(mid, frames)

    async def _publish(self) -> None:
        waited_ms = 0.0
        if self.start_on_subscribe:
            waiting_since = time.monotonic()
            await self._all_subscribed.wait()
            # The clock stood still while the replay waited for its subscribers. A real exchange's
            # never does, and a client's lower bound of it rests on that (streamer/liveness.py
            # ExchangeClock: a reading plus the time since): after a wait of seconds that bound ran
            # seconds ahead and proved bars complete before their trades were out. The replay goes
            # on from where a clock that had run at real time through the wait would be.
            waited_ms = (time.monotonic() - waiting_since) * 1000.0
        timeline, clock, faults = self.timeline, self.clock, self.faults
        self.started_mono = time.monotonic()
        clock.rebase(timeline.first_ms - self._lead_ms + waited_ms, self.speed)
        self.started.set()
        n = len(timeline)
        for loop in itertools.count():
            if loop:
                # Skip the idle days between passes: the next pass starts now.
                clock.rebase(timeline.timestamp(loop, 0), self.speed)
            order, tapes = timeline.order, self.tapes
            offsets = [timeline.offset_ms(ti, loop) for ti in range(len(tapes))]
            done_in_pass = [0] * len(tapes)
            i = 0
            while i < n:
                due = timeline.timestamp(loop, i)
                clock.hold_below = due
                wait = clock.seconds_until(due)
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                ideal = clock.ideal_ms()
                elapsed = time.monotonic() - self.started_mono
                silent = faults.silent_at(elapsed)
                late = faults.late_at(elapsed)
                muted = faults.muted_at(elapsed)
                counts = [0] * len(tapes)
                end = min(n, i + MAX_BATCH)
                j = i
                while j < end:
                    ti, k = order[j]
                    if tapes[ti].trades[k].timestamp_ms + offsets[ti] > ideal:
                        break
                    counts[ti] += 1
                    j += 1
                for ti, count in enumerate(counts):
                    if count:
                        start = done_in_pass[ti]
                        done_in_pass[ti] = start + count
                        self._fan_out(ti, loop, start, start + count, silent, late, muted)
                i = j
                clock.hold_below = timeline.timestamp(loop, i) if i < n else timeline.timestamp(loop + 1, 0)
                await asyncio.sleep(0)
            self.loops_completed += 1
            if not self.loop:
                break
        self.finished_mono = time.monotonic()
        clock.hold_below = None
        if math.isinf(self.speed):
            clock.rebase(timeline.last_ms, 1.0)
        self.done.set()
        log.info("replay done: %d trades published", sum(self.published.values()))
