"""Overhead of streamer leases (``streamer.leases``) against the default single streamer, in one run.

    .venv/bin/python benchmarks/leases.py --json [--rounds 3] [--trades 100000] [--bars 20000]

1. Pipeline: benchmarks/ingest.py's flood (``--trades`` synthetic trades at full speed through
   ``streamer.service.run`` into Redis), alternately without and with leases, ``--rounds`` times
   each; the best rate of each (the machine is shared: the best is the least disturbed).
   ``pipeline_ratio`` = with / without.
2. Bar writes: ``--bars`` closed bars of 100 feeds through ``BarStore.write_pending`` (the Lua
   script that writes a bar and its event), plain and fenced by a lease token; bars/s of each and
   ``write_ratio`` = fenced / plain, best of ``--rounds``.

Needs Redis at 127.0.0.1:6379; every key is under a random prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from report import print_result

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ingest import pipeline  # noqa: E402

from streamer.leases import Leases  # noqa: E402
from streamer.store import BarStore  # noqa: E402
from volcast.backoff import Backoff  # noqa: E402
from volcast.bar import Bar, BarStatus  # noqa: E402
from volcast.keys import Feed, RedisKeys  # noqa: E402

T0 = 1_700_000_000_000


def _bar(open_time_ms: int) -> Bar:
    price, one = Decimal("100.5"), Decimal("0.25")
    return Bar(open_time_ms=open_time_ms, open=price, high=price, low=price, close=price, volume=one,
               quote_volume=price * one, trades=3, buy_volume=one, sell_volume=Decimal("0"), vwap=price,
               first_trade_id=open_time_ms, last_trade_id=open_time_ms + 2, status=BarStatus.COMPLETE)


async def bar_writes(count: int, prefix: str, fenced: bool) -> float:
    """Bars/s through the store's writer: ``count`` bars over 100 feeds, plain or fenced."""
    redis = aioredis.Redis()
    keys = RedisKeys(prefix)
    feeds = [Feed("bench", f"S{i}/USDT", 1000) for i in range(100)]
    store = BarStore(redis, keys, retention_bars=100_000, buffer_bars=count + 1, backoff=Backoff(0.1, 1.0))
    if fenced:
        leases = Leases(redis, keys, "bench", 60_000)
        store.tokens = {}
        for feed in feeds:
            token = await leases.acquire(feed)
            assert token is not None
            store.tokens[feed] = token
    for i in range(count // len(feeds)):
        for feed in feeds:
            store.put(feed, _bar(T0 + i * 1000))
    started = time.perf_counter()
    await store.write_pending()
    elapsed = time.perf_counter() - started
    assert store.counters.bars_written == count // len(feeds) * len(feeds), store.counters
    await redis.aclose()
    return store.counters.bars_written / elapsed


async def _delete(prefix: str) -> None:
    redis = aioredis.Redis()
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        await redis.delete(key)
    await redis.aclose()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench-leases-{uuid.uuid4().hex[:8]}"
    plain_tps: list[float] = []
    leased_tps: list[float] = []
    plain_bars: list[float] = []
    fenced_bars: list[float] = []
    lost = 0
    try:
        for r in range(args.rounds):
            for leases, out in ((False, plain_tps), (True, leased_tps)):
                tps, aggregated, _in_redis, _rest = await pipeline(
                    args.trades, f"{prefix}-p{r}{int(leases)}", leases=leases)
                out.append(tps)
                lost += args.trades - aggregated
            for fenced, out in ((False, plain_bars), (True, fenced_bars)):
                out.append(await bar_writes(args.bars, f"{prefix}-w{r}{int(fenced)}", fenced))
    finally:
        await _delete(prefix)
    return {
        "trades": args.trades,
        "rounds": args.rounds,
        "trades_lost": lost,
        "pipeline_tps": round(max(plain_tps)),
        "pipeline_tps_leases": round(max(leased_tps)),
        "pipeline_ratio": round(max(leased_tps) / max(plain_tps), 3),
        "bars": args.bars,
        "bar_writes_per_s": round(max(plain_bars)),
        "bar_writes_per_s_fenced": round(max(fenced_bars)),
        "write_ratio": round(max(fenced_bars) / max(plain_bars), 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant (default 3); the best counts")
    parser.add_argument("--trades", type=int, default=100_000, help="trades in each flood (default 100000)")
    parser.add_argument("--bars", type=int, default=20_000, help="bars in each write run (default 20000)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print_result(result, args.json, 24)
    return 0


if __name__ == "__main__":
    sys.exit(main())
