"""The streamer service: every configured feed into Redis, until cancelled.

One ``asyncio.TaskGroup``: a task per feed, the closed-bar writer, and the status task (open
bars and health hashes with their heartbeat TTL). Shutdown is cancellation; on the way out the
closed bars still queued are written (bounded by ``_FLUSH_TIMEOUT_S``) and each health hash says
``stopped``. The forming bar is not saved: a restart rebuilds it by backfill from the last closed
bar's end.

A feed that cannot go on (its symbol is not listed, one of its Redis keys is unusable, the
exchange refuses it) stops alone: one log line, state ``error`` and the reason in its health
hash; the others go on. The service itself stops with one message and a non-zero exit when
nothing can go on: the shared events stream is unusable (no bar may be written unannounced), or
every feed has stopped.

With ``streamer.leases`` several streamers share the feeds: the feed tasks come and go with the
leases this one holds (streamer/shards.py), every write is fenced by the feed's token, and a clean
shutdown releases the leases after the last bars are written, so another streamer takes over at
its next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from streamer.connection_plan import plan_connections, trade_activity
from streamer.exchange_link import ExchangeLink
from streamer.feed import FeedRunner
from streamer.health import FeedState
from streamer.history import load_history
from streamer.metrics import StreamerCollector
from streamer.replica_wait import ReplicaWait
from streamer.shards import FeedOwnership
from streamer.source import create_exchange
from streamer.store import REDIS_DOWN, BarStore, KeyProblem, ResumePoint
from volcast.backoff import Backoff
from volcast.cluster_start import read_slot_map
from volcast.connections import ConnectionProblem, redis_client
from volcast.gc_pauses import freeze_lasting
from volcast.keys import Feed, RedisKeys
from volcast.metrics_server import new_registry, serving_metrics
from volcast.settings import Settings

log = logging.getLogger(__name__)

_FLUSH_TIMEOUT_S = 10.0


class StreamerStopped(ConnectionProblem):
    """No feed is left: each stopped for good (the message gives each reason). A ConnectionProblem,
    so that the CLI prints it as one line and exits 1."""


def replica_wait(redis: aioredis.Redis, settings: Settings) -> ReplicaWait | None:
    """The WAIT step of ``redis.wait_replicas`` (None: off)."""
    wait = settings.redis
    return ReplicaWait(redis, wait.wait_replicas, wait.wait_timeout) if wait.wait_replicas else None


def heartbeat_ttl_ms(settings: Settings) -> int:
    """A health hash outlives its writer by three beats: missing means the streamer is gone."""
    return 3 * max(settings.streamer.watchdog, settings.bars.open_bar_update)


# Feeds per status round trip. All 100 of a benchmark's feeds in one pipeline held the event loop
# for ~57 ms each second (py-spy: packing, encoding and reading 400 commands): every trade frame
# that came meanwhile was read that much later, the delivery delay measured it, and ``auto`` grace
# took it for the exchange's delay. Ten a round trip hold it a few ms at a time.
_STATUS_FEEDS = 10


async def _write_status(store: BarStore, runners: Collection[FeedRunner], ttl_ms: int) -> None:
    feeds = list(runners)  # a live view under leases: fixed for this round
    for start in range(0, len(feeds), _STATUS_FEEDS):
        await _write_status_of(store, feeds[start:start + _STATUS_FEEDS], ttl_ms)


async def _write_status_of(store: BarStore, runners: list[FeedRunner], ttl_ms: int) -> None:
    for runner in runners:
        runner.sync_health()
        runner.health.redis_buffered = store.pending
        runner.health.dropped_bars = store.counters.dropped_bars
        runner.health.redis_reconnects = store.counters.redis_reconnects
        runner.health.bars_restored = store.restored.get(runner.feed, 0)
        runner.health.bars_not_restored = store.not_restored.get(runner.feed, 0)
        if store.replica_wait is not None:
            runner.health.replica_waits = store.replica_wait.counters.waits
            runner.health.replica_wait_timeouts = store.replica_wait.counters.timeouts
    await store.write_status(
        [(r.feed, r.open_bar()) for r in runners], [(r.feed, r.health) for r in runners], ttl_ms
    )


async def _status_loop(store: BarStore, runners: Collection[FeedRunner], settings: Settings) -> None:
    ttl = heartbeat_ttl_ms(settings)
    while True:
        try:
            await _write_status(store, runners, ttl)
        except REDIS_DOWN as exc:
            log.debug("status not written, redis down: %r", exc)
        await asyncio.sleep(settings.bars.open_bar_update / 1000)


async def _check_events_key(store: BarStore, interval_ms: int, backoff: Backoff) -> None:
    """The shared events stream must be usable before the first bar; retried while Redis is down."""
    while True:
        try:
            await store.check_events_key(interval_ms)
            return
        except REDIS_DOWN as exc:
            delay = backoff.next_delay()
            log.warning("redis unreachable checking the events stream (%r); retry in %.1fs", exc, delay)
            await asyncio.sleep(delay)


async def _plan_connections(
    redis: aioredis.Redis, keys: RedisKeys, feeds: dict[Feed, ExchangeLink], per_connection: int
) -> None:
    """Each exchange's symbols on connections, the busiest together (streamer/connection_plan.py)."""
    if per_connection <= 0:
        return
    activity = await trade_activity(redis, keys, list(feeds))
    for link in {id(link): link for link in feeds.values()}.values():
        mine = [feed for feed, owner in feeds.items() if owner is link]
        link.connections = plan_connections(
            [feed.symbol for feed in mine], {feed.symbol: activity[feed] for feed in mine if feed in activity},
            per_connection,
        )
        if link.connections:
            log.info("%s: %d symbols on %d connections, the busiest together (%d of them with recent bars)",
                     link.exchange.id, len(mine), max(link.connections.values()) + 1,
                     sum(feed in activity for feed in mine))


async def _until_no_feed_left(runners: Collection[FeedRunner], none_left: asyncio.Event) -> None:
    await none_left.wait()
    reasons = "; ".join(f"{r.feed.exchange} {r.feed.symbol}: {r.health.error}" for r in runners)
    raise StreamerStopped(f"every feed stopped with an error, nothing left to stream ({reasons})")


async def run(settings: Settings) -> None:
    """Stream every feed of ``settings`` into Redis until cancelled."""
    keys = RedisKeys(settings.redis.key_prefix)
    streamer = settings.streamer
    async with contextlib.AsyncExitStack() as stack:
        redis = redis_client(settings.redis)
        stack.push_async_callback(redis.aclose)
        # A cluster whose start-up node is down (a master not yet replaced): retried, logged.
        await read_slot_map(redis, settings.redis,
                            Backoff(streamer.backoff_initial / 1000, streamer.backoff_max / 1000))
        store = BarStore(
            redis,
            keys,
            retention_bars=settings.bars.retention_bars,
            buffer_bars=streamer.buffer_bars,
            backoff=Backoff(streamer.backoff_initial / 1000, streamer.backoff_max / 1000),
            event_shards=settings.redis.event_shards,
            replica_wait=replica_wait(redis, settings),
        )
        by_feed: dict[Feed, FeedRunner] = {}
        collector = StreamerCollector(by_feed, store, per_feed=settings.metrics.per_feed)
        await stack.enter_async_context(serving_metrics(settings.metrics, "stream", new_registry([collector])))
        await _check_events_key(
            store, settings.bars.interval, Backoff(streamer.backoff_initial / 1000, streamer.backoff_max / 1000)
        )
        links: list[ExchangeLink] = []
        feeds: dict[Feed, ExchangeLink] = {}
        for exchange_settings in settings.exchanges:
            exchange = create_exchange(exchange_settings)
            stack.push_async_callback(exchange.close)
            watchdog_s = streamer.watchdog / 1000
            link = ExchangeLink(
                exchange, exchange_settings, markets_max_age_s=watchdog_s, watchdog_s=watchdog_s,
                read_hold_ms=streamer.read_hold,
            )
            links.append(link)
            for symbol in exchange_settings.symbols:
                feeds[Feed(exchange_settings.id, symbol, settings.bars.interval)] = link
        ownership: FeedOwnership | None = None
        none_left = asyncio.Event()

        def feed_failed(_runner: FeedRunner) -> None:
            if ownership is None and all(r.failed for r in by_feed.values()):
                none_left.set()

        def make_runner(feed: Feed, link: ExchangeLink, resume: ResumePoint | None) -> FeedRunner:
            runner = FeedRunner(feed, link, settings, store.put, resume, on_amend=store.amend)
            runner.on_error = feed_failed
            return runner

        if streamer.leases:
            # Ranked by what Redis holds now: a feed this start loads history for ranks as quiet.
            await _plan_connections(redis, keys, feeds, streamer.symbols_per_connection)
            ownership = FeedOwnership(
                settings, redis, keys, store, feeds, by_feed, heartbeat_ttl_ms(settings), make_runner
            )
            collector.ownership = ownership
        else:
            # Before any feed starts: a new feed's history must be in its stream before its first live bar.
            await load_history(settings, redis, keys, heartbeat_ttl_ms(settings))
            await _plan_connections(redis, keys, feeds, streamer.symbols_per_connection)
            for feed, link in feeds.items():
                problem: KeyProblem | None = None
                try:
                    resume = await store.resume_point(feed)
                except KeyProblem as exc:
                    resume, problem = None, exc
                runner = by_feed[feed] = FeedRunner(feed, link, settings, store.put, resume, on_amend=store.amend)
                if problem is not None:
                    runner.fail(str(problem))
                    continue
                log.info(
                    "%s %s: %s", feed.exchange, feed.symbol,
                    f"resuming at bar {resume.start_ms}" if resume else "new feed",
                )
            for runner in by_feed.values():
                runner.on_error = feed_failed
            if by_feed and all(r.failed for r in by_feed.values()):
                none_left.set()

        def feed_error(feed: Feed, problem: KeyProblem) -> None:
            runner = by_feed.get(feed)
            if runner is not None:
                runner.fail(str(problem))

        store.on_feed_error = feed_error
        runners = by_feed.values()  # a live view: with leases, feeds come and go
        freeze_lasting()  # ccxt, aiohttp, redis and the history's leftovers: out of every later collection
        fatal: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                if ownership is not None:
                    group.create_task(ownership.run(group), name="leases")
                else:
                    for runner in runners:
                        if not runner.failed:
                            group.create_task(runner.run(), name=f"feed {runner.feed.exchange} {runner.feed.symbol}")
                    group.create_task(_until_no_feed_left(runners, none_left), name="feeds left")
                for link in links:  # the pings whose pongs close quiet feeds' bars (streamer/liveness.py)
                    group.create_task(link.liveness.run(), name=f"liveness {link.exchange.id}")
                group.create_task(store.run_writer(), name="bar writer")
                group.create_task(_status_loop(store, runners, settings), name="status")
        except* (KeyProblem, StreamerStopped) as failures:
            fatal = failures.exceptions[0]
        finally:
            await _flush(store, list(runners), settings, fatal)
            if ownership is not None:
                await _release_leases(ownership)
        if fatal is not None:
            raise fatal


async def _release_leases(ownership: FeedOwnership) -> None:
    """After the last bars are written: another streamer may take the feeds at once."""
    try:
        await asyncio.wait_for(ownership.release_all(), _FLUSH_TIMEOUT_S)
    except (TimeoutError, ResponseError, *REDIS_DOWN) as exc:
        log.error("shutdown: leases not released, they lapse after streamer.lease_ttl (%s)", exc)


async def _flush(
    store: BarStore, runners: Collection[FeedRunner], settings: Settings, fatal: BaseException | None
) -> None:
    """Write what is queued and mark the feeds stopped; give up after a bounded time.

    After a fatal error only the health hashes are written: the bars queued are said lost, not
    "written", so that the shutdown does not pose as a clean one.
    """
    for runner in runners:
        if not runner.failed:
            runner.health.state = FeedState.STOPPED
    try:
        if fatal is None:
            await asyncio.wait_for(store.write_pending(), _FLUSH_TIMEOUT_S)
        await asyncio.wait_for(_write_status(store, runners, heartbeat_ttl_ms(settings)), _FLUSH_TIMEOUT_S)
    except (TimeoutError, KeyProblem, *REDIS_DOWN) as exc:
        log.error("shutdown: %d closed bars not written (%s)", store.pending, exc)
        return
    if fatal is not None:
        log.error("shutdown after an error: %d closed bars not written (%s)", store.pending, fatal)
    else:
        log.info("shutdown: all closed bars written")
