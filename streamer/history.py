"""History bootstrap: before its first live bar, a new feed gets the exchange's recent candles.

A fresh deployment would otherwise forecast from baselines until each feed has built a day or
more of bars from live trades. So when the streamer starts, every feed whose bars stream is empty
(or holds only history, from a load a stop interrupted) first gets up to ``history.days`` (at
most ``bars.retention``) of 1-minute candles from the exchange's REST klines, through ccxt's
``fetch_ohlcv`` (history_client.py), written into the same bars stream with status ``history``.

Where the history ends. Stream ids only grow, so history must be in the stream before the feed's
first bar built from trades, and only for times before it: then a bar built from trades always
wins (none is ever written over or before a history bar). The history ends at

    H = min(bar_open(now - streamer.max_backfill / 2), bar_open(now))

on the exchange's clock, read after every feed's bulk load (the newest candles are topped up
then). The feed then starts from Redis as any feed does: it resumes at H (the end of its last
bar) and backfills the trades since H over REST, the way it would after a restart. That backfill
reaches back at most ``max_backfill`` from the moment the feed connects (older trades would be
a gap): half of it is left for the time between this clock reading and the connection, which
passes faster than real time against a fast replay (60x: 30 real seconds with the default 1 h;
a first try with one bar of margin lost the first live bars at 600x). Before ``bar_open(now)``
every candle has closed. A feed whose stream ends with a bar
built from trades is never given history again (``kept``): a restart does not load it twice.

Intervals. The feed's interval is built from 1-minute candles (coarser_bars.py) when it is a
whole number of minutes; a shorter one gets no history (``unsupported``).

Best effort. A feed whose candles cannot be had (the exchange refuses, fails, or bans us for
long) streams live as if there were no history: what this load wrote is deleted (all or
nothing, so a half-loaded feed never resumes from a stale end), the error is logged and shown
in the feed's health hash. A candle with a value that cannot be real is skipped and counted;
its interval reads as one without trades. The loader spends at most half of the exchange's
request weight per window (request_budget.py).

Events. No bar-closed event is sent for history bars (a month is 43,200 per feed): the
forecaster reads a feed's last ``look_back`` bars from its stream when the feed's first live bar
is announced, history included, and the refit worker reads every bar in the stream.

Health fields (the feed's health hash, ``keys.health``): ``history_state`` (loading, loaded,
failed, kept, unsupported, off), ``history_bars`` (written by this load), ``history_from_ms`` and
``history_to_ms`` (the span in the stream), ``history_requests``, ``history_bad_candles``,
``history_rate_limited`` and ``history_weight_waits`` (of the exchange's loader), and
``history_error``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import cast

import ccxt.pro
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streamer.coarser_bars import Coarsener
from streamer.history_client import CandleClient, HistoryUnavailable
from streamer.kline_rows import CandleError, bar_from_candle
from streamer.request_budget import WeightBudget
from streamer.source import create_exchange
from volcast.bar import Bar, BarStatus
from volcast.keys import Feed, RedisKeys
from volcast.settings import DAY_MS, ExchangeSettings, Settings

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
PARALLEL_FEEDS = 4  # feeds of one exchange loading at once (the weight budget paces them anyway)
_WRITE_BATCH = 1_000
_Entries = list[tuple[bytes, dict[bytes | str, bytes | str]]]


class HistoryState(StrEnum):
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"  # the exchange could not give it: the feed streams live without history
    KEPT = "kept"  # the stream already has bars built from trades: nothing loaded
    UNSUPPORTED = "unsupported"  # an interval below a minute, or an exchange without candles
    OFF = "off"  # history.days is 0


@dataclass(slots=True)
class FeedHistory:
    """One feed's load: what it needs, how far it got, what its health hash says."""

    feed: Feed
    state: HistoryState = HistoryState.LOADING
    resume_after: Bar | None = None  # the stream's last history bar (an interrupted load)
    first_ms: int | None = None  # the stream's first bar
    to_ms: int | None = None  # where the history written so far ends (exclusive)
    bars: int = 0
    requests: int = 0
    bad_candles: int = 0
    error: str = ""
    coarsener: Coarsener | None = None
    budget: WeightBudget | None = field(default=None, repr=False)

    def fields(self) -> dict[str, str]:
        budget = self.budget
        return {
            "history_state": self.state.value,
            "history_bars": str(self.bars),
            "history_from_ms": "" if self.first_ms is None else str(self.first_ms),
            "history_to_ms": "" if self.to_ms is None else str(self.to_ms),
            "history_requests": str(self.requests),
            "history_bad_candles": str(self.bad_candles),
            "history_rate_limited": str(budget.rate_limited if budget else 0),
            "history_weight_waits": str(budget.waits if budget else 0),
            "history_error": self.error,
        }


def history_end_ms(now_ms: int, settings: Settings) -> int:
    """H: where a new feed's history ends and its bars from trades begin (module docstring)."""
    interval = settings.bars.interval
    since = now_ms - settings.streamer.max_backfill // 2
    return min(since - since % interval, now_ms - now_ms % interval)


class _Writer:
    """History bars into Redis: the stream entries, and the health hash with its heartbeat TTL."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, ttl_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = ttl_ms

    async def bars(self, state: FeedHistory, bars: Sequence[Bar]) -> None:
        key = self.keys.bars(state.feed)
        for lo in range(0, len(bars), _WRITE_BATCH):
            pipe = self.redis.pipeline(transaction=False)
            for bar in bars[lo:lo + _WRITE_BATCH]:
                pipe.xadd(key, bar.to_fields(), id=f"{bar.open_time_ms}-0")  # type: ignore[arg-type]
            await pipe.execute()
        if bars:
            state.bars += len(bars)
            state.first_ms = bars[0].open_time_ms if state.first_ms is None else state.first_ms
            state.to_ms = bars[-1].open_time_ms + state.feed.interval_ms

    async def health(self, state: FeedHistory) -> None:
        key = self.keys.health(state.feed)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=state.fields())  # type: ignore[arg-type]
        pipe.pexpire(key, self.ttl_ms)
        try:
            await pipe.execute()
        except RedisError as exc:  # the health hash is for people; the load goes on
            log.debug("history health of %s not written: %r", state.feed, exc)

    async def discard(self, state: FeedHistory) -> None:
        """All or nothing: the stream held only history (that is why it was loaded)."""
        await self.redis.delete(self.keys.bars(state.feed))
        state.first_ms = state.to_ms = None


async def _inspect(redis: aioredis.Redis, keys: RedisKeys, feed: Feed) -> FeedHistory:
    """What a feed's stream asks for: nothing (live bars there), a fresh load, or the rest of one."""
    state = FeedHistory(feed)
    key = keys.bars(feed)
    try:
        last = cast(_Entries, await redis.xrevrange(key, count=1))
        first = cast(_Entries, await redis.xrange(key, count=1)) if last else []
    except RedisError as exc:  # a key of another type: the feed itself reports it
        state.state, state.error = HistoryState.FAILED, f"cannot read {key}: {exc}"
        return state
    if not last:
        return state
    try:
        bar = Bar.from_fields(last[0][1])
        state.first_ms = Bar.from_fields(first[0][1]).open_time_ms
    except ValueError as exc:  # not ours to repair: the feed's resume reports it
        state.state, state.error = HistoryState.FAILED, f"unreadable bar in {key}: {exc}"[:300]
        return state
    state.to_ms = bar.open_time_ms + feed.interval_ms
    if bar.status is BarStatus.HISTORY:
        state.resume_after = bar
    else:
        state.state = HistoryState.KEPT
    return state


async def _load_span(client: CandleClient, writer: _Writer, state: FeedHistory, start_ms: int, end_ms: int) -> None:
    """Candles opening in [start_ms, end_ms) into the stream, page by page, oldest first."""
    coarsener = state.coarsener
    assert coarsener is not None
    cursor = start_ms - start_ms % MINUTE_MS
    while cursor < end_ms:
        page = await client.page(state.feed.symbol, cursor, end_ms)
        state.requests += 1
        if not page:
            break
        fine: list[Bar] = []
        for candle in page:
            try:
                fine.append(bar_from_candle(candle.raw, candle.parsed))
            except CandleError as exc:
                state.bad_candles += 1
                if state.bad_candles <= 3:
                    log.warning("%s: candle %s skipped: %s", state.feed.symbol, candle.parsed[:1], exc)
        await writer.bars(state, list(coarsener.add(fine)))
        await writer.health(state)
        cursor = int(page[-1].parsed[0]) + MINUTE_MS
    # Minutes without a candle up to end_ms had no trades (Binance sends empty candles; others
    # skip them). Before any candle there is no price: then nothing is written, and the feed
    # starts as a new one.
    await writer.bars(state, list(coarsener.finish(end_ms)))


async def _bulk(client: CandleClient, writer: _Writer, state: FeedHistory, settings: Settings, end_ms: int) -> None:
    interval = settings.bars.interval
    span = min(settings.history.days * DAY_MS, settings.bars.retention)
    if state.resume_after is not None:
        start = state.resume_after.open_time_ms + interval
        last_close = state.resume_after.close
    else:
        start = -(-(end_ms - span) // interval) * interval
        last_close = None
    state.coarsener = Coarsener(MINUTE_MS, interval, start, BarStatus.HISTORY, last_close)
    if start < end_ms:
        await _load_span(client, writer, state, start, end_ms)


async def _fail(state: FeedHistory, writer: _Writer, error: BaseException) -> None:
    """No history for this feed: what is in its stream (history only) goes, the feed starts anew."""
    state.state, state.error = HistoryState.FAILED, f"{type(error).__name__}: {error}"[:300]
    log.error("%s %s: no history (%s); the feed streams live without it", state.feed.exchange,
              state.feed.symbol, state.error)
    try:
        await writer.discard(state)
    except RedisError as exc:
        log.error("%s: the partial history could not be deleted: %r", state.feed.symbol, exc)
    state.bars = 0


async def _guarded(state: FeedHistory, writer: _Writer, step: Callable[[], Awaitable[None]]) -> None:
    """Run one step of a feed's load; a failure ends its history, never the streamer."""
    if state.state is not HistoryState.LOADING:
        return
    try:
        await step()
    except (HistoryUnavailable, ccxt.BaseError, RedisError) as exc:
        await _fail(state, writer, exc)
    except Exception as exc:  # a bug or an answer nobody foresaw: still never the streamer's end
        log.exception("%s: history load failed unexpectedly", state.feed.symbol)
        await _fail(state, writer, exc)


async def _load_exchange(
    exchange_settings: ExchangeSettings, states: list[FeedHistory], settings: Settings, writer: _Writer
) -> None:
    exchange = create_exchange(exchange_settings)
    budget = WeightBudget()
    for state in states:
        state.budget = budget
    try:
        client = CandleClient(exchange, budget)
        try:
            await exchange.load_markets()
            await client.learn_limits()
            if not client.supported:
                for state in states:
                    state.state, state.error = HistoryState.UNSUPPORTED, f"{exchange.id} has no candles (fetchOHLCV)"
                return
            end_ms = history_end_ms(await client.now_ms(), settings)
        except Exception as exc:  # ccxt's errors, or anything else: history is best effort
            for state in states:
                await _fail(state, writer, exc)
            return
        for state in states:
            await writer.health(state)
        gate = asyncio.Semaphore(PARALLEL_FEEDS)

        async def bulk(state: FeedHistory) -> None:
            async with gate:
                await _guarded(state, writer, lambda: _bulk(client, writer, state, settings, end_ms))

        await asyncio.gather(*(bulk(s) for s in states))
        # The newest candles, up to where the feeds will start: read the clock again, now that
        # every feed's bulk is in, so that the feeds connect right after their history ends.
        try:
            final_ms = max(end_ms, history_end_ms(await client.now_ms(), settings))
        except Exception as exc:
            log.warning("%s: exchange clock unreadable (%r); history ends at %d", exchange.id, exc, end_ms)
            final_ms = end_ms

        async def top_up(state: FeedHistory) -> None:
            async with gate:
                await _guarded(state, writer, lambda: _load_span(client, writer, state, end_ms, final_ms))

        if final_ms > end_ms:
            await asyncio.gather(*(top_up(s) for s in states))
        for state in states:
            if state.state is HistoryState.LOADING:
                state.state = HistoryState.LOADED
                log.info("%s %s: %d history bars loaded (%s to %s), %d requests", state.feed.exchange,
                         state.feed.symbol, state.bars, state.first_ms, state.to_ms, state.requests)
    finally:
        await exchange.close()


async def load_history(settings: Settings, redis: aioredis.Redis, keys: RedisKeys, ttl_ms: int) -> list[FeedHistory]:
    """Give every feed that needs it its history (module docstring); returns what each got."""
    started = time.monotonic()
    writer = _Writer(redis, keys, ttl_ms)
    out: list[FeedHistory] = []
    work: list[tuple[ExchangeSettings, list[FeedHistory]]] = []
    for exchange_settings in settings.exchanges:
        needing: list[FeedHistory] = []
        for symbol in exchange_settings.symbols:
            feed = Feed(exchange_settings.id, symbol, settings.bars.interval)
            state = await _inspect(redis, keys, feed)
            out.append(state)
            if state.state is HistoryState.LOADING:
                if settings.history.days == 0:
                    state.state = HistoryState.OFF
                elif feed.interval_ms % MINUTE_MS:
                    state.state = HistoryState.UNSUPPORTED
                    state.error = f"bars of {feed.interval} cannot be built from 1-minute candles"
                else:
                    needing.append(state)
        if needing:
            work.append((exchange_settings, needing))
    for _, states in work:  # at once: the refit worker waits while a history is loading
        for state in states:
            await writer.health(state)
    await asyncio.gather(*(_load_exchange(ex, states, settings, writer) for ex, states in work))
    for state in out:
        await writer.health(state)
    if work:
        log.info("history: %d bars for %d feeds in %.1f s", sum(s.bars for s in out),
                 sum(len(states) for _, states in work), time.monotonic() - started)
    return out
