"""Ingest benchmark: no trade lost in a flood, pipeline throughput against bare ccxt, memory with 100 symbols.

    .venv/bin/python benchmarks/ingest.py --json [--quick]

1. Bare ccxt: ``watch_trades`` (ring buffer raised to hold the whole flood) on a flood of
   ``--trades`` synthetic trades from the simulator's flood server (what ``volcast replay --flood``
   runs) in its own process.
2. Pipeline: the same flood through ``streamer.service.run`` (hooked trades -> aggregator -> closed
   bars -> Redis). Both rates are first trade seen to last trade seen, of websocket trades; the
   pipeline's is read from its health hash (``trades`` less ``backfilled_trades``), polled every
   20 ms. The flood server stays up (REST included) until the bars
   are in Redis: a new feed backfills the trades published before its own (its first hour of
   history, as from a live exchange) and its bars wait for that.
3. Memory: ``volcast stream`` as its own process on 100 symbols of a looping real-trade replay (1h
   bars, about 43 trades/s per symbol), RSS sampled after a warm-up and at the end of the run (a
   few minutes; ``--quick``: ~1; ``--memory-warm-up`` and ``--memory-run`` set both spans). The
   growth over the default span includes the failover window (``streamer/lost_bars.py``, 128 bars
   a feed) filling at the replay's 24 bars a feed a pass: full after ~280 s, so
   ``--memory-warm-up 300`` measures what grows after it. ``rss_mb_100_symbols`` is the peak
   VmRSS of that process alone: not the replay server's (another process) nor this one's. What
   it is made of: docs/streamer.md ("Memory"). It grows when the streamer falls behind (websocket
   buffers), so a loaded machine reads higher.
4. One 1h bar: the replay's loop moves a day per pass, so in step 3 each 1h bar holds one pass
   (46 s) of trades, and memory that grows with the trades in a bar cannot show. Here the
   aggregator alone takes an hour of the tape's trades (its rate, consecutive ids) into one bar,
   and tracemalloc says what it keeps: ``aggregator_mb_per_symbol_1h_bar`` (x 100 symbols, and a
   bar's ids are remembered for two more bars after it closes).

Needs Redis at 127.0.0.1:6379; every key is under a random prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import yaml
from report import print_result

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamer.aggregator import BarAggregator  # noqa: E402
from streamer.service import run  # noqa: E402
from streamer.simulator import ReplayServer, synthetic_tape  # noqa: E402
from streamer.trades_csv import read_trades  # noqa: E402
from volcast.keys import Feed, RedisKeys  # noqa: E402
from volcast.settings import settings_from_mapping  # noqa: E402

TAPE = ROOT / "tests" / "data" / "binance_BTCUSDT_trades_2021-01-08_000000-000046.csv.gz"
HOUR_MS = 3_600_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _urls(port: int) -> dict[str, Any]:
    return {"api": {"public": f"http://127.0.0.1:{port}/api/v3", "ws": {"spot": f"ws://127.0.0.1:{port}/stream/ws"}}}


@contextlib.asynccontextmanager
async def _replay(*args: str) -> Any:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "volcast.cli", "replay", "--port", str(port), *args,
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                _r, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.05)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):  # a flood replay exits once it is sent
            process.terminate()
        await process.wait()


def _serve_flood(count: int, conn: Connection) -> None:
    """The flood server's process: ``volcast replay --flood``'s server, up until told to stop."""

    async def serve() -> None:
        tape = synthetic_tape("BTC/USDT", count)
        async with ReplayServer([tape], speed=math.inf, start_on_subscribe=True) as server:
            conn.send(server.port)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(serve())


@contextlib.asynccontextmanager
async def _flood(count: int) -> AsyncIterator[int]:
    context = multiprocessing.get_context("spawn")  # not fork: this process runs an event loop
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve_flood, args=(count, theirs), daemon=True)
    process.start()
    loop = asyncio.get_running_loop()
    try:
        yield await loop.run_in_executor(None, ours.recv)
    finally:
        with contextlib.suppress(OSError):
            ours.send("stop")
        await loop.run_in_executor(None, process.join, 30)
        if process.is_alive():
            process.kill()


async def _bars_in_redis(redis: aioredis.Redis, keys: RedisKeys, feed: Feed) -> int:
    """Trades in the feed's closed bars and in its forming bar."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(keys.bars(feed))  # type: ignore[assignment]
    closed = sum(int(fields[b"trades"]) for _id, fields in entries)
    return closed + int(await redis.hget(keys.open_bar(feed), "trades") or 0)


async def bare_ccxt(count: int) -> float:
    import ccxt.pro

    async with _flood(count) as port:
        ex = ccxt.pro.binance({
            "enableRateLimit": False, "urls": _urls(port),
            "options": {"fetchMarkets": {"types": ["spot"]}, "tradesLimit": count + 1},
        })
        try:
            seen = 0
            first = 0.0
            while seen < count:
                trades = await ex.watch_trades("BTC/USDT")
                if not first:
                    first = time.perf_counter()
                seen += len(trades)
            return count / (time.perf_counter() - first)
        finally:
            await ex.close()


async def pipeline(count: int, prefix: str, *, leases: bool = False) -> tuple[float, int, int, int]:
    """(websocket trades/s, trades aggregated, trades in the bars written to Redis, trades of the
    measured span read over REST); ``leases``: with ``streamer.leases`` (the feed held through a
    lease, every write fenced).

    The rate counts the websocket's trades only, as bare ccxt's does: a new feed's history comes
    over REST a page of 1000 at a time, and counting those made the ratio read above 1 in some
    runs (2026-12-05). The span's time still holds the REST work, so the rate is the pipeline's
    websocket throughput while it also backfills."""
    async with _flood(count) as port:
        settings = settings_from_mapping({
            "exchanges": [{"id": "binance", "symbols": ["BTC/USDT"], "urls": _urls(port),
                           "options": {"fetchMarkets": {"types": ["spot"]}}}],
            "bars": {"interval": "1s", "grace": "100ms", "open_bar_update": "20ms"},
            "streamer": {"watchdog": "2s", "leases": leases},
            "redis": {"key_prefix": prefix},
        }, env={"VOLCAST_BINANCE_API_KEY": "benchmark"})
        os.environ["VOLCAST_BINANCE_API_KEY"] = "benchmark"
        keys = RedisKeys(prefix)
        feed = Feed("binance", "BTC/USDT", 1000)
        redis = aioredis.Redis()
        task = asyncio.create_task(run(settings))
        first = last = 0.0
        trades = rest_first = rest = 0
        deadline = time.monotonic() + 120
        while trades < count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            raw, raw_rest = await redis.hmget(keys.health(feed), ["trades", "backfilled_trades"])
            trades, rest = int(raw or 0), int(raw_rest or 0)
            if trades and not first:
                first, rest_first = time.perf_counter(), rest
            last = time.perf_counter()
        # The bars close once the feed's backfill is done and its clock - watchdog has passed them.
        settle = time.monotonic() + 60
        while time.monotonic() < settle:
            if await _bars_in_redis(redis, keys, feed) >= trades:
                break
            await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        in_redis = await _bars_in_redis(redis, keys, feed)
        await redis.aclose()
        rest_in_span = rest - rest_first
        return (trades - rest_in_span) / max(last - first, 1e-9), trades, in_redis, rest_in_span


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def memory(prefix: str, symbols: int, warmup_s: float, run_s: float, tmp: Path) -> tuple[float, float]:
    names = [f"S{i:03d}/USDT" for i in range(symbols)]
    args: list[str] = ["--loop", "--speed", "1"]
    for name in names:
        args += ["--trades", str(TAPE), "--symbol", name]
    async with _replay(*args) as port:
        config = {
            "exchanges": [{"id": "binance", "symbols": names, "urls": _urls(port),
                           "options": {"fetchMarkets": {"types": ["spot"]}}}],
            "bars": {"interval": "1h", "grace": "1s"},
            "streamer": {"watchdog": "10s"},
            "redis": {"key_prefix": prefix},
        }
        path = tmp / f"bench-{prefix}.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        env = {**os.environ, "VOLCAST_BINANCE_API_KEY": "benchmark"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "volcast.cli", "stream", "--config", str(path),
            cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(warmup_s)
            warm = _rss_mb(process.pid)
            peak = warm
            end = time.monotonic() + run_s
            while time.monotonic() < end:
                await asyncio.sleep(2)
                peak = max(peak, _rss_mb(process.pid))
            final = _rss_mb(process.pid)
        finally:
            process.terminate()
            await process.wait()
            path.unlink()
        return peak, 100.0 * (final - warm) / warm


def hour_bar_memory() -> tuple[int, float]:
    """(trades, MB the aggregator keeps) for one 1h bar at the tape's trade rate."""
    tape = list(read_trades(TAPE))
    first, last = tape[0], tape[-1]
    per_hour = len(tape) * HOUR_MS // (last.timestamp_ms - first.timestamp_ms + 1)
    start = first.timestamp_ms - first.timestamp_ms % HOUR_MS
    id_span = last.trade_id - first.trade_id + 1
    tracemalloc.start()
    try:
        aggregator = BarAggregator(HOUR_MS, 1_000, lambda bar: None)
        for i in range(per_hour):
            loop, k = divmod(i, len(tape))
            trade = tape[k]
            # New objects per trade, as parsed from the feed: only what the aggregator keeps stays.
            aggregator.add(
                replace(trade, timestamp_ms=start + i * HOUR_MS // per_hour, trade_id=trade.trade_id + loop * id_span)
            )
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return per_hour, held / 2**20


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    try:
        ccxt_tps = await bare_ccxt(args.trades)
        pipeline_tps, aggregated, in_redis, rest_trades = await pipeline(args.trades, prefix)
        warm, run_s = (30.0, 30.0) if args.quick else (60.0, 180.0)
        warm = args.memory_warm_up if args.memory_warm_up is not None else warm
        run_s = args.memory_run if args.memory_run is not None else run_s
        rss, growth = await memory(prefix + "-mem", 100, warm, run_s, Path("/tmp"))
        bar_trades, bar_mb = hour_bar_memory()
    finally:
        redis = aioredis.Redis()
        async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
            await redis.delete(key)
        await redis.aclose()
    return {
        "trades": args.trades,
        "trades_lost": args.trades - aggregated,
        "trades_in_redis_bars": in_redis,
        "pipeline_tps": round(pipeline_tps),
        "pipeline_rest_trades_in_span": rest_trades,
        "ccxt_tps": round(ccxt_tps),
        "ratio": round(pipeline_tps / ccxt_tps, 3),
        "rss_mb_100_symbols": round(rss, 1),
        "rss_growth_pct": round(growth, 2),
        "memory_warm_up_s": warm,
        "memory_run_s": run_s,
        "trades_per_symbol_1h_bar": bar_trades,
        "aggregator_mb_per_symbol_1h_bar": round(bar_mb, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a one-minute memory run instead of four")
    parser.add_argument("--trades", type=int, default=100_000, help="trades in the flood (default 100000)")
    parser.add_argument("--memory-warm-up", type=float, default=None, metavar="S",
                        help="seconds of the memory run before its first RSS reading (default 60, --quick 30); "
                             "300 or more: after the failover window of 128 bars a feed is full")
    parser.add_argument("--memory-run", type=float, default=None, metavar="S",
                        help="seconds from that reading to the last (default 180, --quick 30)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print_result(result, args.json, 22)
    return 0


if __name__ == "__main__":
    sys.exit(main())
