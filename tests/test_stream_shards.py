"""Several `volcast stream` processes share the feeds through leases (real Redis, the simulator,
ccxt's real client, the real command as subprocesses): they split the feeds; a killed one's feeds
are taken over; a paused one's writes after its lease passed on are refused and counted, and it
takes its share back; a stopped one hands its feeds over; and the bars stay equal to `volcast
bars` of the same trades throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, cast

import pytest
import redis.asyncio as aioredis
import yaml
from stream_harness import (
    PATIENCE_S,
    StreamEntries,
    delete_prefix,
    redis_bars,
    same_bars,
    stream_settings,
    streamed_to_the_end,
    unique_prefix,
    write_windows,
)

from streamer.leases import lease_holders, live_streamers
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from volcast.bar import BarStatus
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


class Streamer:
    """One `volcast stream --config` subprocess named ``name`` (its log in ``name.log``)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.config = directory / f"{name}.yml"
        self.log_path = directory / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def start(self, raw: dict[str, object]) -> None:
        raw = {**raw, "streamer": {**raw["streamer"], "leases": True, "name": self.name}}  # type: ignore[dict-item]
        self.config.write_text(yaml.safe_dump(raw), encoding="utf-8")
        env = {**os.environ, "VOLCAST_BINANCE_API_KEY": "simulator"}
        self._log = self.log_path.open("wb")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "volcast.cli", "stream", "--config", str(self.config),
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    async def stop(self) -> int:
        """SIGTERM (after SIGCONT, should it be paused) and the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), PATIENCE_S)
        if self._log is not None:
            self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


async def _until(check: Callable[[], Awaitable[bool]], what: str, streamers: list[Streamer]) -> float:
    """Wait for ``check``; returns the seconds it took (a figure to print, never asserted)."""
    started = time.monotonic()
    while time.monotonic() - started < PATIENCE_S:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    logs = "\n".join(f"--- {s.name}\n{s.log()[-3000:]}" for s in streamers)
    raise AssertionError(f"not within {PATIENCE_S:.0f}s: {what}\n{logs}")


async def _owners(redis: aioredis.Redis, keys: RedisKeys, feeds: list[Feed]) -> dict[Feed, str]:
    return {feed: holder.owner for feed, holder in (await lease_holders(redis, keys, feeds)).items()}


def _raw(server: ReplayServer, symbols: list[str], prefix: str, redis: dict[str, Any]) -> dict[str, object]:
    settings = stream_settings(server, symbols, prefix, redis=redis)
    return settings.model_dump(mode="json", include={"exchanges", "bars", "streamer", "redis"})


def _shards(redis_mode: str) -> int:
    return 3 if redis_mode == "cluster" else 1  # on the cluster, events in shards of their own slots


async def _each_bar_announced(redis: aioredis.Redis, keys: RedisKeys, feed: Feed, redis_mode: str) -> None:
    """Every streamed bar has its event, whoever wrote it: once on one node (bar and event in one
    fenced script); on a cluster at least once (a takeover re-sends what a stop left unsent)."""
    streamed = await redis_bars(redis, keys, feed)
    events = [int(f[b"open_time_ms"])
              for _, f in cast(StreamEntries, await redis.xrange(keys.feed_events(feed, _shards(redis_mode))))
              if f[b"symbol"] == feed.symbol.encode()]
    assert sorted(set(events)) == [b.open_time_ms for b in streamed]
    assert len(events) == len(streamed) or redis_mode == "cluster"


async def _split(redis: aioredis.Redis, keys: RedisKeys, feeds: list[Feed], streamers: list[Streamer]) -> None:
    """Until every feed is held and each streamer holds its fair share (here 2 and 1 of 3)."""
    async def split() -> bool:
        owners = await _owners(redis, keys, feeds)
        counts = sorted(list(owners.values()).count(s.name) for s in streamers)
        return len(owners) == len(feeds) and counts == [1, 2]

    await _until(split, "the two streamers split the feeds 2 and 1", streamers)


async def _busiest_first(redis: aioredis.Redis, keys: RedisKeys, a: Streamer, b: Streamer) -> tuple[Streamer, Streamer]:
    """The streamer holding BTC/USDT (the busy feed) first: the one the test kills or pauses."""
    owner = (await _owners(redis, keys, [Feed("binance", "BTC/USDT", 1000)])).get(Feed("binance", "BTC/USDT", 1000))
    return (a, b) if owner == a.name else (b, a)


async def test_two_streamers_split_the_feeds_and_one_takes_over_a_killed_ones(
    tmp_path: Path, redis_mode: str, redis_config: dict[str, Any]
) -> None:
    files = write_windows(tmp_path, 60)
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    keys = RedisKeys(prefix)
    redis = redis_client(RedisSettings(**redis_config))
    feeds = [Feed("binance", t.symbol, 1000) for t in tapes]
    a, b = Streamer(tmp_path, "a"), Streamer(tmp_path, "b")
    try:
        # The replay waits for every symbol's subscriber: the two must have split the feeds.
        async with ReplayServer(tapes, speed=2, start_on_subscribe=True) as server:
            raw = _raw(server, [t.symbol for t in tapes], prefix, {**redis_config, "event_shards": _shards(redis_mode)})
            await a.start(raw)
            await b.start(raw)
            await _split(redis, keys, feeds, [a, b])
            await asyncio.wait_for(server.started.wait(), PATIENCE_S)
            await asyncio.sleep(3.0)  # bars close in both
            a, b = await _busiest_first(redis, keys, a, b)
            a_feeds = [f for f, owner in (await _owners(redis, keys, feeds)).items() if owner == a.name]
            a.signal(signal.SIGKILL)  # no flush, no release: its leases lapse
            killed = await a.stop()

            async def all_b() -> bool:
                owners = await _owners(redis, keys, feeds)
                return len(owners) == len(feeds) and set(owners.values()) == {b.name}

            takeover_s = await _until(all_b, "b holds every lease", [a, b])
            print(f"takeover of {len(a_feeds)} feeds after kill -9: {takeover_s:.1f}s (lease_ttl 6s, renew 2s)")
            expected = await streamed_to_the_end(redis, keys, server, tapes, files)
            code = await b.stop()
        assert killed == -signal.SIGKILL
        assert code == 0, b.log()[-3000:]
        for feed, bars in expected.items():
            streamed = await redis_bars(redis, keys, feed)
            same_bars(streamed, bars, statuses=False)
            assert all(bar.status is not BarStatus.GAP for bar in streamed)
            await _each_bar_announced(redis, keys, feed, redis_mode)
        assert await _owners(redis, keys, feeds) == {}  # b released its leases on SIGTERM
        assert await live_streamers(redis, keys) == {}
        assert "lease acquired" in b.log()
    finally:
        for streamer in (a, b):
            if streamer.process is not None and streamer.process.returncode is None:
                streamer.process.kill()
                await streamer.process.wait()
        await delete_prefix(redis, prefix)
        await redis.aclose()


async def test_a_paused_streamer_cannot_write_after_its_lease_passed_on(
    tmp_path: Path, redis_mode: str, redis_config: dict[str, Any]
) -> None:
    files = write_windows(tmp_path, 60)
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    keys = RedisKeys(prefix)
    redis = redis_client(RedisSettings(**redis_config))
    feeds = [Feed("binance", t.symbol, 1000) for t in tapes]
    a, b = Streamer(tmp_path, "a"), Streamer(tmp_path, "b")
    try:
        async with ReplayServer(tapes, speed=2, start_on_subscribe=True) as server:
            raw = _raw(server, [t.symbol for t in tapes], prefix, {**redis_config, "event_shards": _shards(redis_mode)})
            await a.start(raw)
            await b.start(raw)
            await _split(redis, keys, feeds, [a, b])
            await asyncio.wait_for(server.started.wait(), PATIENCE_S)
            await asyncio.sleep(3.0)
            a, b = await _busiest_first(redis, keys, a, b)
            a_feeds = [f for f, owner in (await _owners(redis, keys, feeds)).items() if owner == a.name]
            a.signal(signal.SIGSTOP)  # a believes it holds its feeds; its bars keep "closing" on resume

            async def all_b() -> bool:
                owners = await _owners(redis, keys, feeds)
                return len(owners) == len(feeds) and set(owners.values()) == {b.name}

            await _until(all_b, "b holds every lease while a is paused", [a, b])
            a.signal(signal.SIGCONT)

            async def a_refused() -> bool:
                info = (await live_streamers(redis, keys)).get(a.name, {})
                return int(info.get("stale_writes", "0")) >= 1

            await _until(a_refused, "a's stale writes refused and counted", [a, b])
            # a is live again: b gives up its excess and a takes its share back.
            await _split(redis, keys, feeds, [a, b])
            # A clean stop hands a's feeds over at once: released after its last bars, not lapsed.
            code_a = await a.stop()
            handover_s = await _until(all_b, "b holds every lease after a stopped", [a, b])
            print(f"handover after SIGTERM: {handover_s:.1f}s (b's next round, lease_renew 2s)")
            expected = await streamed_to_the_end(redis, keys, server, tapes, files)
            codes = [code_a, await b.stop()]
        assert codes == [0, 0], a.log()[-3000:] + b.log()[-3000:]
        assert "leases released" in a.log()
        assert a_feeds
        assert "write refused, the lease passed to another streamer" in a.log() or "renewal refused" in a.log()
        for feed, bars in expected.items():
            streamed = await redis_bars(redis, keys, feed)
            same_bars(streamed, bars, statuses=False)
            assert all(bar.status is not BarStatus.GAP for bar in streamed)
            await _each_bar_announced(redis, keys, feed, redis_mode)
    finally:
        for streamer in (a, b):
            if streamer.process is not None and streamer.process.returncode is None:
                streamer.process.kill()
                await streamer.process.wait()
        await delete_prefix(redis, prefix)
        await redis.aclose()


def test_a_bad_streamer_name_is_one_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "volcast.cli", "stream", "--config", str(ROOT / "config.yml"), "--leases",
         "--name", "two words"], cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE_S, check=False)
    assert done.returncode == 2
    assert "--name 'two words'" in done.stderr and "without spaces or braces" in done.stderr
    assert "Traceback" not in done.stderr
