"""Feed ownership with leases (``streamer.leases``): run only the feeds this streamer holds.

Every ``streamer.lease_renew`` one round: register as live and count the live streamers, renew
the leases held (a refused renewal means another streamer took the feed: drop it), give up the
feeds beyond the fair share ``ceil(feeds / live)`` (a streamer joined), and try to acquire free or
lapsed leases up to that share (a streamer left or died). A feed acquired starts as after a
restart: resume from its last closed bar in Redis, backfill the trades since over REST, load its
history if it has none. The writes themselves are fenced (streamer/leases.py), so a streamer that
was paused past its lease is refused by Redis before it learns of the loss here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from streamer.exchange_link import ExchangeLink
from streamer.feed import FeedRunner
from streamer.history import load_history
from streamer.leases import Leases, default_name, fair_share, lease_holders
from streamer.store import REDIS_DOWN, BarStore, KeyProblem, ResumePoint
from volcast.keys import Feed, RedisKeys
from volcast.settings import Settings

log = logging.getLogger(__name__)

_RELEASE_TIMEOUT_S = 5.0
_UNWATCH_TIMEOUT_S = 5.0


def feed_settings(settings: Settings, feed: Feed) -> Settings:
    """``settings`` with one exchange and one symbol: what the history bootstrap of ``feed`` reads."""
    exchange = next(ex for ex in settings.exchanges if ex.id == feed.exchange)
    return settings.model_copy(update={"exchanges": (exchange.model_copy(update={"symbols": [feed.symbol]}),)})


def acquisition_order(feeds: dict[Feed, ExchangeLink], name: str) -> list[Feed]:
    """The order in which a streamer tries free feeds: whole planned connections (the busiest
    symbols together, ``_plan_connections``) in an order of its own, so two streamers starting at
    once rarely collide, and each planned connection's feeds in the config's order. The excess given
    up when a streamer joins is the latest acquired, so whole connections move too: each streamer
    opens only the connections of the feeds it holds. Feeds in a shuffle of their own spread two
    streamers' 10 feeds each over all 4 connections of 20 feeds, 8 in all, each read for fewer
    frames (docs/benchmarks.md, 2026-12-06 20:40)."""
    groups: dict[tuple[int, object], list[Feed]] = {}
    for feed, link in feeds.items():
        # Without a plan (streamer.symbols_per_connection 0: ccxt places them) each feed alone.
        connection = link.connections.get(feed.symbol)
        groups.setdefault((id(link), feed.symbol if connection is None else connection), []).append(feed)
    ordered = list(groups.values())
    random.Random(name).shuffle(ordered)
    return [feed for group in ordered for feed in group]


class FeedOwnership:
    """Acquires, renews, balances and releases this streamer's feeds, and runs the ones it holds."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        keys: RedisKeys,
        store: BarStore,
        feeds: dict[Feed, ExchangeLink],
        runners: dict[Feed, FeedRunner],
        heartbeat_ttl_ms: int,
        make_runner: Callable[[Feed, ExchangeLink, ResumePoint | None], FeedRunner],
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = keys
        self.store = store
        self.feeds = feeds
        self.runners = runners
        self.name = settings.streamer.name or default_name()
        self.leases = Leases(redis, keys, self.name, settings.streamer.lease_ttl)
        self.held: dict[Feed, str] = {}
        store.tokens = self.held  # the store fences each write with the token held here
        store.on_stale = self._lost
        self._heartbeat_ttl_ms = heartbeat_ttl_ms
        self._make_runner = make_runner
        self._tasks: dict[Feed, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._order = acquisition_order(feeds, self.name)
        self.acquired = 0
        self.lost = 0
        self.released = 0

    # -- the rounds ---------------------------------------------------------------------------

    async def run(self, group: asyncio.TaskGroup) -> None:
        """Rounds every ``streamer.lease_renew`` until cancelled; feed tasks go into ``group``."""
        self._group = group
        log.info("streamer %s: sharing %d feeds through leases (ttl %d ms)", self.name, len(self.feeds),
                 self.settings.streamer.lease_ttl)
        while True:
            try:
                await self.round()
            except (*REDIS_DOWN, ResponseError) as exc:
                # Nothing is confirmed nor lost: the fence keeps writes safe until the next round.
                log.warning("leases not renewed this round (%r)", exc)
            await asyncio.sleep(self.settings.streamer.lease_renew / 1000)

    def info(self) -> dict[str, str | int]:
        return {
            "feeds": len(self.held),
            "held": ",".join(f"{f.exchange} {f.symbol}" for f in self.held),
            "stale_writes": self.store.counters.stale_writes,
            "acquired": self.acquired,
            "lost": self.lost,
            "released": self.released,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    async def round(self) -> None:
        live = await self.leases.heartbeat(self.info())
        for feed in await self.leases.renew(dict(self.held)):
            self.store.counters.stale_writes += 1  # the renewal was a write with a stale token
            if feed in self.held:
                del self.held[feed]
                log.warning("%s %s: lease renewal refused, another streamer took the feed; dropping it",
                            feed.exchange, feed.symbol)
                self._lost(feed)
        target = fair_share(len(self.feeds), live)
        excess = len(self.held) - target
        if excess > 0:
            for feed in list(self.held)[-excess:]:  # the latest acquired: the longest held stay put
                await self._release(feed)
            return
        if len(self.held) >= target:
            return
        # One read for all: only free or lapsed leases are worth a script each (a standby streamer
        # would otherwise try every held feed every round).
        taken = await lease_holders(self.redis, self.keys, [f for f in self._order if f not in self.held])
        for feed in self._order:
            if len(self.held) >= target:
                break
            if feed in self.held or feed in taken:
                continue
            token = await self.leases.acquire(feed)
            if token is not None:
                self._start(feed, token)

    # -- one feed -----------------------------------------------------------------------------

    def _start(self, feed: Feed, token: str) -> None:
        assert self._group is not None
        self.held[feed] = token
        self.acquired += 1
        log.info("%s %s: lease acquired (token %s)", feed.exchange, feed.symbol, token)
        self._tasks[feed] = self._group.create_task(
            self._run_feed(feed), name=f"feed {feed.exchange} {feed.symbol}"
        )

    async def _run_feed(self, feed: Feed) -> None:
        """As a restart does: history if the feed has none, the resume point, then stream."""
        link = self.feeds[feed]
        try:
            await load_history(feed_settings(self.settings, feed), self.redis, self.keys, self._heartbeat_ttl_ms)
        except (*REDIS_DOWN, ResponseError) as exc:
            # History is best effort (docs/streamer.md): the feed streams without it rather than
            # take the whole streamer down, as an error here would (its task is in the service's group).
            log.warning("%s %s: history not loaded (%r); streaming live bars only", feed.exchange, feed.symbol, exc)
        problem: KeyProblem | None = None
        try:
            resume = await self.store.resume_point(feed)
        except KeyProblem as exc:
            resume, problem = None, exc
        runner = self._make_runner(feed, link, resume)
        self.runners[feed] = runner
        if problem is not None:
            runner.fail(str(problem))  # it keeps the lease: another streamer would meet the same key
            return
        log.info("%s %s: %s", feed.exchange, feed.symbol,
                 f"resuming at bar {resume.start_ms}" if resume else "new feed")
        await runner.run()

    def _lost(self, feed: Feed) -> None:
        """Another streamer holds the feed now (the store or a renewal was refused): stop at once."""
        self.lost += 1
        self.held.pop(feed, None)
        self._stop(feed)

    def _stop(self, feed: Feed) -> asyncio.Task[None] | None:
        task = self._tasks.pop(feed, None)
        if task is not None:
            task.cancel()
        runner = self.runners.pop(feed, None)
        if runner is not None:
            link = runner.link
            if link.runners.get(feed.symbol) is runner:
                del link.runners[feed.symbol]
            if self._group is not None:  # stop the exchange sending trades nobody here takes
                self._group.create_task(self._unwatch(link, feed), name=f"unwatch {feed.symbol}")
        return task

    async def _unwatch(self, link: ExchangeLink, feed: Feed) -> None:
        if feed in self._tasks or not hasattr(link.exchange, "un_watch_trades"):  # taken back meanwhile
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(link.exchange.un_watch_trades(feed.symbol), _UNWATCH_TIMEOUT_S)

    async def _release(self, feed: Feed) -> None:
        """Hand a feed over: stop it, write its queued bars, then let the lease go at once."""
        task = self._stop(feed)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.store.drained(), _RELEASE_TIMEOUT_S)
        token = self.held.pop(feed, None)
        if token is None:
            return
        self.released += 1
        if await self.leases.release(feed, token):
            log.info("%s %s: lease released for another streamer", feed.exchange, feed.symbol)

    async def release_all(self) -> None:
        """At a clean shutdown (after the last bars are written): every lease at once, and leave."""
        for feed, token in list(self.held.items()):
            await self.leases.release(feed, token)
        self.held.clear()
        await self.leases.leave()
        log.info("streamer %s: leases released", self.name)

