"""The streamer service: every configured feed into Redis, until cancelled.

One ``asyncio.TaskGroup``: a task per feed, the closed-bar writer, and the status task (open
bars and health hashes with their heartbeat TTL). Shutdown is cancellation; on the way out the
closed bars still queued are written (bounded by ``_FLUSH_TIMEOUT_S``) and each health hash says
``stopped``. The forming bar is not saved: a restart rebuilds it by backfill from the last closed
bar's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from streamer.feed import ExchangeLink, FeedRunner
from streamer.health import FeedState
from streamer.source import create_exchange
from streamer.store import REDIS_DOWN, BarStore
from volcast.backoff import Backoff
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import Settings

log = logging.getLogger(__name__)

_FLUSH_TIMEOUT_S = 10.0


def heartbeat_ttl_ms(settings: Settings) -> int:
    """A health hash outlives its writer by three beats: missing means the streamer is gone."""
    return 3 * max(settings.streamer.watchdog, settings.bars.open_bar_update)


async def _write_status(store: BarStore, runners: Sequence[FeedRunner], ttl_ms: int) -> None:
    for runner in runners:
        runner.sync_health()
        runner.health.redis_buffered = store.pending
        runner.health.dropped_bars = store.counters.dropped_bars
        runner.health.redis_reconnects = store.counters.redis_reconnects
    await store.write_status(
        [(r.feed, r.open_bar()) for r in runners], [(r.feed, r.health) for r in runners], ttl_ms
    )


async def _status_loop(store: BarStore, runners: Sequence[FeedRunner], settings: Settings) -> None:
    ttl = heartbeat_ttl_ms(settings)
    while True:
        try:
            await _write_status(store, runners, ttl)
        except REDIS_DOWN as exc:
            log.debug("status not written, redis down: %r", exc)
        await asyncio.sleep(settings.bars.open_bar_update / 1000)


async def run(settings: Settings) -> None:
    """Stream every feed of ``settings`` into Redis until cancelled."""
    keys = RedisKeys(settings.redis.key_prefix)
    streamer = settings.streamer
    async with contextlib.AsyncExitStack() as stack:
        redis = redis_client(settings.redis)
        stack.push_async_callback(redis.aclose)
        store = BarStore(
            redis,
            keys,
            retention_bars=settings.bars.retention_bars,
            buffer_bars=streamer.buffer_bars,
            backoff=Backoff(streamer.backoff_initial / 1000, streamer.backoff_max / 1000),
        )
        runners: list[FeedRunner] = []
        for exchange_settings in settings.exchanges:
            exchange = create_exchange(exchange_settings)
            stack.push_async_callback(exchange.close)
            link = ExchangeLink(exchange, exchange_settings)
            for symbol in exchange_settings.symbols:
                feed = Feed(exchange_settings.id, symbol, settings.bars.interval)
                resume = await store.resume_point(feed)
                runners.append(FeedRunner(feed, link, settings, store.put, resume))
                log.info(
                    "%s %s: %s", feed.exchange, symbol,
                    f"resuming at bar {resume.start_ms}" if resume else "new feed",
                )
        try:
            async with asyncio.TaskGroup() as group:
                for runner in runners:
                    group.create_task(runner.run(), name=f"feed {runner.feed.exchange} {runner.feed.symbol}")
                group.create_task(store.run_writer(), name="bar writer")
                group.create_task(_status_loop(store, runners, settings), name="status")
        finally:
            await _flush(store, runners, settings)


async def _flush(store: BarStore, runners: Sequence[FeedRunner], settings: Settings) -> None:
    """Write what is queued and mark the feeds stopped; give up after a bounded time."""
    for runner in runners:
        runner.health.state = FeedState.STOPPED
    try:
        await asyncio.wait_for(store.write_pending(), _FLUSH_TIMEOUT_S)
        await asyncio.wait_for(_write_status(store, runners, heartbeat_ttl_ms(settings)), _FLUSH_TIMEOUT_S)
    except (TimeoutError, *REDIS_DOWN) as exc:
        log.error("shutdown: %d closed bars not written (%r)", store.pending, exc)
    else:
        log.info("shutdown: all closed bars written")
