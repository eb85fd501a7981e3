"""Proof that a websocket connection is alive up to an exchange time, from ping/pong round trips.

A server answers a ping after everything it wrote before reading it, and TCP keeps the order; ccxt
hands us frames in that order. So a pong for a ping sent at local time L proves that every frame
the server wrote before exchange time L + offset is in (offset: a lower bound of the exchange's
clock minus ours). The exchange writes a trade at most ``bars.grace`` after its time (the delivery
delay each feed measures), so after that pong every trade stamped up to L + offset - grace is in:
a bar ending there is complete even if no trade came after it. One ping per connection serves all
of its symbols; pings are sent when a bar needs one (at its end plus grace) and as a keep-alive.
A ping goes out only while the connection has carried fewer than ``_MESSAGES_PER_S`` of our
messages (ccxt's subscriptions included) in the last second, so its incoming message rate stays
far within the exchange's limit (Binance: 5 per second, pings and pongs included). Not through
ccxt's throttle: its leaky bucket refills only while it has a queue, so every message after a
pause waited a full period (250 to 500 ms).

What a pong cannot prove: that the exchange's stream behind the connection still runs. A gateway
that answers pings while its trade feed has stalled looks like quiet symbols. Where trades flow
(a connection, or the whole exchange, with trades every fraction of a second: ``FlowGuard``), a
pong proves no more than the newest trade of that flow: a quiet symbol's bar closes once the pong
and a trade of any symbol of the flow are both past its end plus grace, so a stall holds its bars
back from its first moment. A silence far longer than the flow's usual gaps is a *stall*: after
it, a feed trusts pongs past its start only once a REST read made after the flow came back shows
that nothing is missing, or a trade of its own with no hole before it arrives (feed.py). A stall on
a connection that carries only quiet symbols cannot be told from quiet, and is not guarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ccxt
import orjson
from aiohttp import WSMsgType

from streamer.tick_grid import until_next_tick

log = logging.getLogger(__name__)

# Pongs outstanding per connection we keep track of; a server may answer only the newest ping
# (RFC 6455 5.5.3), which settles the older ones too.
_MAX_OUTSTANDING = 32
# The exchange's clock is read again this often (REST weight 1), and sooner (at most once a
# second) when trades stamped ahead of our estimate show that it lags: a replay faster than real
# time, or a clock that jumped.
_CLOCK_REFRESH_S = 60.0
_CLOCK_RETRY_S = 1.0
_CLOCK_AHEAD_MS = 1_000
# Frame kinds tested on every frame (an Enum member read off its class costs a descriptor call).
_PONG = WSMsgType.PONG
_TEXT = WSMsgType.TEXT
# Our messages (pings, and ccxt's subscriptions) per connection within any second, at most. With
# ccxt's own spacing of subscriptions (500 ms on Binance, source.py) a connection never gets more
# than 4 of the 5 Binance allows, and usually 1.
_MESSAGES_PER_S = 2


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ExchangeClock:
    """A lower bound of the exchange's clock: our clock plus the smallest offset a reading allows.

    A reading of ``fetch_time`` returns the server's time at some moment between sending the
    request and getting the answer, so ``server - (local time after the answer)`` can only
    understate the offset. Readings are combined by their maximum (an offset that grows, as a
    replay faster than real time does, keeps the bound valid).
    """

    __slots__ = ("_best", "low_ms", "mid_ms", "newest_trade_ms", "read_at")

    # The offset of the reading with the shortest round trip is kept this long (for the figures).
    _BEST_FOR_S = 600.0

    def __init__(self) -> None:
        self.low_ms: int | None = None
        self.read_at = -math.inf  # monotonic
        self.newest_trade_ms = 0  # newest trade time seen on any feed: a hint that the bound lags
        self._best: tuple[int, int, float] | None = None  # (midpoint offset, round trip ms, monotonic)
        # The best estimate of the offset (the midpoint of _best), for figures such as delivery
        # delays; proofs use ``low_ms``. An attribute, not a property: read on every trade.
        self.mid_ms: int | None = None

    def note_reading(self, server_ms: int, before_ms: int, after_ms: int) -> None:
        low = server_ms - after_ms
        self.low_ms = low if self.low_ms is None else max(self.low_ms, low)
        now = self.read_at = time.monotonic()
        rtt, best = after_ms - before_ms, self._best
        if best is None or rtt <= best[1] or now - best[2] > self._BEST_FOR_S:
            self._best = (server_ms - (before_ms + after_ms) // 2, rtt, now)
            self.mid_ms = self._best[0]

    def best_rtt_ms(self) -> int:
        """The round trip of the reading behind ``mid_ms``: the error bound of delays measured with it."""
        return 0 if self._best is None else self._best[1]

    def now_low(self) -> int | None:
        """The exchange's time now is at least this (None before the first reading)."""
        return None if self.low_ms is None else now_ms() + self.low_ms

    def stale(self) -> bool:
        if time.monotonic() - self.read_at >= _CLOCK_REFRESH_S:
            return True
        low = self.now_low()
        ahead = low is not None and self.newest_trade_ms > low + _CLOCK_AHEAD_MS
        return ahead and time.monotonic() - self.read_at >= _CLOCK_RETRY_S


class FlowGuard:
    """A flow of frames (one connection's, or one exchange's): is it busy, and has it stopped?

    The mean gap between frames is an average over the last ``_WINDOW`` frames. A flow is *warm*
    after ``warm_frames`` frames with a mean gap of at most ``warm_gap_s``: then pongs prove no more
    than its newest trade (``cap_ms``), which costs a quiet neighbour about one gap of latency.
    A warm flow silent for longer than ``ratio`` times its mean gap (and than ``floor_s``) has
    stalled (an *episode*; under a Poisson flow the chance of such a silence is e^-ratio). Each
    episode remembers the newest trade time before the silence. A cold flow (quiet symbols) is
    never capped nor judged: a stall there cannot be told from quiet.
    """

    _WINDOW = 64

    __slots__ = ("_episode_open", "_froms", "_last", "_mean_gap", "_newest_before", "episodes", "floor_s", "frames",
                 "newest_ms", "ratio", "warm_frames", "warm_gap_s")

    def __init__(
        self, *, ratio: float = 20.0, floor_s: float = 1.0, warm_frames: int = 64, warm_gap_s: float = 0.1
    ) -> None:
        self.ratio = ratio
        self.floor_s = floor_s
        self.warm_frames = warm_frames
        self.warm_gap_s = warm_gap_s
        self.frames = 0
        self.newest_ms = 0  # newest trade time seen on this flow (fed by the feeds)
        # newest_ms as the previous frame left it: the feeds note a frame's trades before ``note``
        # sees the frame, so a silence found on the frame that ends it starts from this.
        self._newest_before = 0
        self._last: float | None = None
        self._mean_gap = 0.0
        self._episode_open = False
        self.episodes = 0
        self._froms: deque[tuple[int, int]] = deque(maxlen=32)  # (episode number, newest_ms before it)

    @property
    def warm(self) -> bool:
        return self.frames >= self.warm_frames and self._mean_gap <= self.warm_gap_s

    def cap_ms(self) -> int | None:
        """What a pong proves at most on this flow: its newest trade time (None: cold, no cap)."""
        return self.newest_ms if self.warm else None

    def limit_s(self) -> float:
        """The silence beyond which the flow has stalled."""
        if not self.warm:
            return math.inf
        return max(self.floor_s, self.ratio * self._mean_gap)

    def note(self, now: float) -> None:
        """A frame arrived at ``now`` (monotonic seconds). On every frame: kept to a few operations."""
        last = self._last
        self._last = now
        frames = self.frames = self.frames + 1
        before, self._newest_before = self._newest_before, self.newest_ms
        if last is None:
            return
        gap = now - last
        if gap > self.floor_s:  # only a silence past the floor can be a stall
            limit = self.limit_s()
            if gap > limit:
                self._start_episode(before)  # a silence that ends now: register it if nobody looked
                gap = limit  # a long silence moves the mean, but not all at once
        self._episode_open = False
        self._mean_gap += (gap - self._mean_gap) / (frames - 1 if frames <= self._WINDOW else self._WINDOW)

    def suspect(self, now: float) -> bool:
        """The flow is silent beyond its limit now (registers the episode)."""
        last = self._last
        if last is None or now - last <= self.limit_s():
            return False
        self._start_episode()
        return True

    def silent_s(self, now: float) -> float:
        """How long since the flow's last frame (infinite before the first)."""
        last = self._last
        return math.inf if last is None else max(0.0, now - last)

    def silent_beyond_limit_s(self, now: float) -> float:
        """How long the flow has been suspect (0 when it is not)."""
        last = self._last
        if last is None:
            return 0.0
        return max(0.0, now - last - self.limit_s())

    def _start_episode(self, newest_ms: int | None = None) -> None:
        if not self._episode_open:
            self._episode_open = True
            self.episodes += 1
            self._froms.append((self.episodes, self.newest_ms if newest_ms is None else newest_ms))

    def first_since(self, seen: int) -> int | None:
        """The earliest "newest trade time before the silence" of the episodes after number ``seen``."""
        froms = [from_ms for number, from_ms in self._froms if number > seen]
        if self.episodes > seen and len(froms) < self.episodes - seen:
            return 0  # older than we remember: trust nothing
        return min(froms, default=None)


class ConnectionProbe:
    """One ccxt websocket client: the pings sent on it, the newest one answered, its flow of frames."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.flow = FlowGuard()
        self.proven_local_ms = -1  # local time a ping was sent whose pong has come
        # The clock's lower-bound offset when that ping was sent (None: unknown then). A replay
        # faster than real time raises the bound as it goes: the newer bound added to an older
        # send time overstated the proof by seconds (and closed bars before their trades came).
        self.proven_offset_ms: int | None = None
        self.pings = 0
        self.pongs = 0
        self.acked: dict[int, int] = {}  # subscription request id -> local time its answer came
        self.needs: dict[int, int] = {}  # feed -> exchange time it wants proven
        # payload -> (local ms, monotonic, the clock's lower-bound offset) at sending
        self._sent: dict[bytes, tuple[int, float, int | None]] = {}
        self.messages: deque[float] = deque()  # monotonic times of our messages on it (pings, subscriptions)
        self._numbers = itertools.count(1)
        self.last_ping = -math.inf  # monotonic
        self.pinging: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        connection = self.client.connection
        return connection is None or bool(connection.closed)

    def connected(self) -> bool:
        connected = getattr(self.client, "connected", None)
        return connected is not None and connected.done() and not connected.cancelled() and (
            connected.exception() is None) and not self.closed

    def unanswered_s(self, now: float) -> float:
        """How long the oldest ping without an answer has waited (0: none is waiting)."""
        if not self._sent:
            return 0.0
        return now - min(mono for _ms, mono, _low in self._sent.values())

    def unheard_s(self, now: float) -> float:
        """How long a ping has waited with nothing at all heard from the connection meanwhile.

        The server writes a pong after every frame it has already written (in order), so under a
        flood the pong waits behind a backlog that this process reads slower than it comes: frames
        still arriving prove the connection alive, and dropping it would only add a backfill to the
        backlog (benchmarks/ingest.py: 2 s without a pong in a 100,000-trade flood, a reconnect,
        and half the throughput). A connection that answers no ping and sends nothing is dead.
        """
        return min(self.unanswered_s(now), self.flow.silent_s(now))

    def sent_message(self) -> None:
        """A message of ours left on this connection (ccxt's ``send``: a subscription)."""
        self.messages.append(time.monotonic())

    def pace_s(self) -> float:
        """How long until one more message keeps within ``_MESSAGES_PER_S`` (0: now)."""
        now = time.monotonic()
        messages = self.messages
        while messages and now - messages[0] >= 1.0:
            messages.popleft()
        return 0.0 if len(messages) < _MESSAGES_PER_S else messages[0] + 1.0 - now

    async def ping(self, low_ms: int | None = None) -> None:
        """Send one ping, once the connection's message rate allows it; ``low_ms``: the exchange
        clock's lower-bound offset now, what its pong will prove the send time on."""
        wait = self.pace_s()
        if wait > 0:
            # Once: only the prober's one task per connection pings it (a subscription sent
            # meanwhile could make three in a second, still within the five Binance allows).
            await asyncio.sleep(wait)
        connection = self.client.connection
        if connection is None or connection.closed:
            return
        payload = next(self._numbers).to_bytes(8, "big")
        if len(self._sent) >= _MAX_OUTSTANDING:
            self._sent.pop(next(iter(self._sent)))
        # Taken before the write: the server reads the ping after this moment.
        self._sent[payload] = (now_ms(), time.monotonic(), low_ms)
        self.last_ping = time.monotonic()
        self.messages.append(self.last_ping)
        self.pings += 1
        await connection.ping(payload)

    def on_pong(self, payload: bytes) -> bool:
        """A pong came; True if it answers one of our pings (a new proof)."""
        sent = self._sent.pop(bytes(payload), None)
        if sent is None:
            return False  # ccxt's own keep-alive (empty payload), or a ping we gave up on
        self.pongs += 1
        sent_ms, _mono, low = sent
        for key in [k for k, (ms, _mono, _low) in self._sent.items() if ms <= sent_ms]:
            del self._sent[key]  # answered too: the server read them before this one
        if sent_ms >= self.proven_local_ms:
            self.proven_local_ms, self.proven_offset_ms = sent_ms, low
        return True

    def offset_ms(self, low_ms: int) -> int:
        """The offset the newest answered ping is proven on: the bound at its sending, if known
        and lower than ``low_ms`` (the bound now)."""
        at_send = self.proven_offset_ms
        return low_ms if at_send is None else min(low_ms, at_send)

    def on_text(self, data: str) -> None:
        """Note a subscription's answer (Binance: ``{"result":null,"id":7}``)."""
        if data.startswith('{"result":'):
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                return
            request_id = message.get("id") if isinstance(message, dict) else None
            if isinstance(request_id, int) and message.get("result") is None:
                self.acked[request_id] = now_ms()

    def due(self, exchange_now: int, low_ms: int) -> bool:
        """Some feed wants a moment proven that has come, and neither an answered ping nor one on
        its way (sent at or after that moment) covers it."""
        due = [need for need in self.needs.values() if need <= exchange_now]
        if not due:
            return False
        wanted = max(due)
        if self.proven_local_ms + self.offset_ms(low_ms) >= wanted:
            return False
        return not any(ms + (low_ms if low is None else min(low, low_ms)) >= wanted
                       for ms, _mono, low in self._sent.values())

    def next_need(self) -> int | None:
        return min(self.needs.values(), default=None)


class Liveness:
    """The probes of one exchange's connections, its clock bound, and its whole flow of frames.

    ``run`` sends the pings: when a feed's moment has come (its bar's end plus grace on the
    exchange's lower-bound clock), and as a keep-alive every ``keepalive_s`` so that a connection
    that stopped answering is found (feeds' watchdogs act on ``unanswered_s``).
    """

    def __init__(self, exchange: Any, *, keepalive_s: float, on_proof: Callable[[ConnectionProbe], None]) -> None:
        self.exchange = exchange
        self.clock = ExchangeClock()
        self.flow = FlowGuard()
        self.keepalive_s = keepalive_s
        self._on_proof = on_proof
        self._probes: dict[int, ConnectionProbe] = {}
        self._wake = asyncio.Event()

    # -- called by the frame hook (source.guard_frames), synchronously, in frame order ------------

    def probe(self, client: Any) -> ConnectionProbe:
        probe: ConnectionProbe | None = getattr(client, "_volcast_probe", None)
        if probe is None:
            probe = ConnectionProbe(client)
            client._volcast_probe = probe
            self._probes[id(client)] = probe
        return probe

    def on_frame(self, client: Any, message: Any) -> None:
        """Every frame a connection delivered, after ccxt handled it (its trades are in)."""
        probe: ConnectionProbe | None = getattr(client, "_volcast_probe", None)
        if probe is None:
            probe = self.probe(client)
        kind = message.type
        if kind is _PONG:
            if probe.on_pong(message.data or b""):
                self._on_proof(probe)
            return
        if kind is _TEXT and message.data[:10] == '{"result":':
            # A subscription's answer is not the stream: counted as a frame of the flow, the answers
            # of a reconnect cut a stall into silences too short to see (tests/test_close_faults.py).
            probe.on_text(message.data)
            return
        now = time.monotonic()
        probe.flow.note(now)
        self.flow.note(now)

    # -- for the feeds ---------------------------------------------------------------------------

    def probe_for(self, symbol: str) -> ConnectionProbe | None:
        """The open connection that carries ``symbol``'s trades, if any."""
        for client in list((self.exchange.clients or {}).values()):
            if not isinstance(getattr(client, "subscriptions", None), dict):
                continue
            if any(isinstance(h, str) and h.endswith("::" + symbol) for h in client.subscriptions):
                probe = self.probe(client)
                return None if not probe.connected() else probe
        return None

    def wake(self) -> None:
        self._wake.set()

    async def read_clock(self) -> None:
        """Read the exchange's clock (``fetch_time``) into the lower bound."""
        if not self.exchange.has.get("fetchTime"):
            return
        before = now_ms()
        server = await self.exchange.fetch_time()
        after = now_ms()
        if server is not None:
            self.clock.note_reading(int(server), before, after)

    def on_send(self, client: Any) -> None:
        """ccxt sends a message on ``client`` (counted against the connection's message rate)."""
        self.probe(client).sent_message()

    # -- the prober ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Send pings until cancelled."""
        try:
            while True:
                if self.clock.stale():
                    try:
                        await self.read_clock()
                    except ccxt.BaseError as exc:
                        self.clock.read_at = time.monotonic() - _CLOCK_REFRESH_S + _CLOCK_RETRY_S
                        log.debug("%s: exchange clock unreadable (%r)", self.exchange.id, exc)
                wait = self._send_due()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            for probe in self._probes.values():
                if probe.pinging is not None:
                    probe.pinging.cancel()

    def _send_due(self) -> float:
        """Start the pings that are due; seconds until the next one may be: a wanted ping's moment,
        else the feeds' next tick (tick_grid.py: the look at the flows costs no wake-up of its own)."""
        wait = until_next_tick(asyncio.get_running_loop().time())
        now = time.monotonic()
        self.flow.suspect(now)  # registers a stall under way, for the feeds to see (feed._note_stalls)
        low = self.clock.low_ms
        exchange_now = self.clock.now_low()
        current = {id(c) for c in (self.exchange.clients or {}).values()}
        for key, probe in list(self._probes.items()):
            if key not in current:
                del self._probes[key]  # a connection that ended: ccxt makes a new client for the next
                continue
            probe.flow.suspect(now)
            if not probe.connected():
                continue
            need = probe.next_need()
            # A keep-alive, unless a wanted ping comes within a second anyway (each costs a message).
            soon = need is not None and exchange_now is not None and need - exchange_now < 1_000
            keepalive = now - probe.last_ping >= self.keepalive_s and not soon
            wanted = exchange_now is not None and low is not None and probe.due(exchange_now, low)
            if (wanted or keepalive) and not (probe.pinging is not None and not probe.pinging.done()):
                probe.pinging = asyncio.create_task(self._ping(probe), name="liveness ping")
            if exchange_now is not None and need is not None and need > exchange_now:
                wait = min(wait, (need - exchange_now) / 1000)
        return max(wait, 0.001)

    async def _ping(self, probe: ConnectionProbe) -> None:
        try:
            await probe.ping(self.clock.low_ms)
        except (ConnectionError, RuntimeError, OSError) as exc:  # the socket is closing: its feeds reconnect
            log.debug("ping on %s failed: %r", probe.client.url, exc)
