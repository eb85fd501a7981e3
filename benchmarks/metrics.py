"""Metrics overhead: what Prometheus metrics cost the streamer and the forecaster, measured in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/metrics.py --json [--rounds 2] [--feeds 1000]

1. Ingest: the flood of benchmarks/ingest.py (``--trades`` synthetic trades, one symbol, through
   ``streamer.service.run`` into Redis) with metrics off and on, rounds interleaved (off, on,
   off, on, ...); with metrics on a client scrapes /metrics every ``--scrape-every`` s (default
   1 s, 15x Prometheus' usual interval) from the same process' point of view: the HTTP thread
   and the collector run inside the streamer's process. ``ratio`` = median trades/s on / off.
2. Scrape cost at scale: one scrape (collect and format) of ``--feeds`` real ``FeedRunner``
   records (a ccxt client, no connection), with ``metrics.per_feed`` true and false: milliseconds
   of the scrape thread, series and bytes served.
3. Forecaster hook: ``ForecasterMetrics.recorded`` on a boundary of ``--feeds`` predictions (the
   only per-boundary work metrics add, in the bookkeeping task after the hand-over to MQTT).

Needs Redis at 127.0.0.1:6379; keys under a random prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ingest import _bars_in_redis, _flood, _urls  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402

from streamer.service import run  # noqa: E402
from volcast.keys import Feed, RedisKeys  # noqa: E402
from volcast.settings import settings_from_mapping  # noqa: E402


def _scrape(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return len(answer.read())


async def _port_of(task: asyncio.Task[None], holder: dict[str, int]) -> int:
    while "port" not in holder:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return holder["port"]


async def ingest(count: int, prefix: str, *, metrics: bool, scrape_every: float) -> dict[str, float]:
    """One flood through the streamer: trades/s (first to last trade seen), scrapes made."""
    import logging

    async with _flood(count) as port:
        settings = settings_from_mapping({
            "exchanges": [{"id": "binance", "symbols": ["BTC/USDT"], "urls": _urls(port),
                           "options": {"fetchMarkets": {"types": ["spot"]}}}],
            "bars": {"interval": "1s", "grace": "100ms", "open_bar_update": "20ms"},
            "streamer": {"watchdog": "2s"},
            "redis": {"key_prefix": prefix},
            "metrics": {"enabled": metrics, "stream_port": 0},
        }, env={"VOLCAST_BINANCE_API_KEY": "benchmark"})
        os.environ["VOLCAST_BINANCE_API_KEY"] = "benchmark"
        keys = RedisKeys(prefix)
        feed = Feed("binance", "BTC/USDT", 1000)
        redis = aioredis.Redis()
        holder: dict[str, int] = {}

        class _Port(logging.Handler):  # the bound port, from the service's own log line
            def emit(self, record: logging.LogRecord) -> None:
                if record.getMessage().startswith("stream metrics on "):
                    holder["port"] = int(record.getMessage().rsplit(":", 1)[1].split("/")[0])

        handler = _Port()
        logging.getLogger("volcast.metrics_server").addHandler(handler)
        logging.getLogger("volcast.metrics_server").setLevel(logging.INFO)
        task = asyncio.create_task(run(settings))
        scrapes = 0
        scraper: asyncio.Task[None] | None = None
        if metrics:
            metrics_port = await _port_of(task, holder)

            async def scrape_loop() -> None:
                nonlocal scrapes
                while True:
                    await asyncio.to_thread(_scrape, metrics_port)
                    scrapes += 1
                    await asyncio.sleep(scrape_every)

            scraper = asyncio.create_task(scrape_loop())
        first = last = 0.0
        trades = 0
        deadline = time.monotonic() + 120
        while trades < count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            trades = int(await redis.hget(keys.health(feed), "trades") or 0)
            if trades and not first:
                first = time.perf_counter()
            last = time.perf_counter()
        settle = time.monotonic() + 60
        while time.monotonic() < settle:
            if await _bars_in_redis(redis, keys, feed) >= trades:
                break
            await asyncio.sleep(0.2)
        for running in (scraper, task):
            if running is not None:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
        logging.getLogger("volcast.metrics_server").removeHandler(handler)
        in_redis = await _bars_in_redis(redis, keys, feed)
        async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
            await redis.delete(key)
        await redis.aclose()
        return {"trades_per_s": trades / max(last - first, 1e-9), "trades": trades, "in_redis": in_redis,
                "scrapes": scrapes}


async def scrape_cost(feeds: int, per_feed: bool) -> dict[str, float]:
    """Collect and format one scrape of ``feeds`` real feed records (no connection is made)."""
    from streamer.close_proof import CloseProof
    from streamer.exchange_link import ExchangeLink
    from streamer.feed import FeedRunner
    from streamer.metrics import StreamerCollector
    from streamer.source import create_exchange
    from streamer.store import BarStore
    from volcast.backoff import Backoff
    from volcast.metrics_server import new_registry

    symbols = [f"S{i}/USDT" for i in range(feeds)]
    settings = settings_from_mapping({"exchanges": [{"id": "binance", "symbols": symbols}]}, env={})
    exchange = create_exchange(settings.exchanges[0], env={})
    try:
        link = ExchangeLink(exchange, settings.exchanges[0])
        store = BarStore(aioredis.Redis(), RedisKeys("bench"), retention_bars=10, buffer_bars=10,
                         backoff=Backoff(1.0, 1.0))
        by_feed = {}
        for i, symbol in enumerate(symbols):
            feed = Feed("binance", symbol, settings.bars.interval)
            runner = FeedRunner(feed, link, settings, lambda _feed, _bar: None, None)
            runner.health.trades, runner.health.bars_closed, runner.health.lag_ms = 1_000_000 + i, 10_000, 150
            for k in range(64):
                runner.close_stats.record(CloseProof.TRADE if k % 3 else CloseProof.LIVENESS, (k * 37 + i) % 3000)
            by_feed[feed] = runner
        registry = new_registry([StreamerCollector(by_feed, store, per_feed=per_feed)])
        times = []
        size = 0
        for _ in range(7):
            started = time.perf_counter()
            size = len(generate_latest(registry))
            times.append((time.perf_counter() - started) * 1000)
        text = generate_latest(registry).decode()
    finally:
        await exchange.close()
    series = sum(1 for line in text.splitlines() if line.startswith("volcast_"))
    return {"ms_median": round(statistics.median(times), 2), "ms_max": round(max(times), 2), "series": series,
            "bytes": size}


def forecast_hook(feeds: int) -> dict[str, float]:
    """``ForecasterMetrics.recorded`` on one boundary of ``feeds`` predictions."""
    from forecaster.metrics import ForecasterMetrics
    from forecaster.payload import Prediction

    now = time.time_ns() // 1_000_000
    bar = now - now % 60_000 - 60_000
    predictions = [Prediction(feed=Feed("binance", f"S{i}/USDT", 60_000), open_time_ms=bar + 60_000,
                              last_bar_ms=bar, last_volume=1.0, volume=1.5, quantiles={}, model_name="lstm",
                              model_version="3", baseline=False, created_ms=now + i // 256)
                   for i in range(feeds)]
    metrics = ForecasterMetrics(None)  # type: ignore[arg-type]  # recorded() reads no worker
    timings = {"read_ms": 1.0, "predict_ms": 2.0, "submit_ms": 0.5}
    times = []
    for _ in range(50):
        started = time.perf_counter()
        metrics.recorded(predictions, timings)
        times.append((time.perf_counter() - started) * 1000)
    return {"ms_median": round(statistics.median(times), 3), "ms_max": round(max(times), 3)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if args.rounds == 0:  # the scrape and hook costs only
        return {"scrape": {f"{args.feeds}_feeds_per_feed": await scrape_cost(args.feeds, True),
                           f"{args.feeds}_feeds_per_exchange": await scrape_cost(args.feeds, False)},
                "forecast_hook": {f"{args.feeds}_predictions": forecast_hook(args.feeds)}, "load": os.getloadavg()}
    rounds: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            prefix = f"bench-metrics-{uuid.uuid4().hex[:8]}"
            rounds[mode].append(await ingest(args.trades, prefix, metrics=mode == "on",
                                             scrape_every=args.scrape_every))
    off = statistics.median(r["trades_per_s"] for r in rounds["off"])
    on = statistics.median(r["trades_per_s"] for r in rounds["on"])
    lost = sum(r["trades"] - r["in_redis"] for mode in rounds.values() for r in mode)
    return {
        "ingest": {"trades": args.trades, "scrape_every_s": args.scrape_every,
                   "off_trades_per_s": [round(r["trades_per_s"]) for r in rounds["off"]],
                   "on_trades_per_s": [round(r["trades_per_s"]) for r in rounds["on"]],
                   "scrapes_per_run": [r["scrapes"] for r in rounds["on"]],
                   "ratio": round(on / off, 3), "trades_lost": lost},
        "scrape": {f"{args.feeds}_feeds_per_feed": await scrape_cost(args.feeds, True),
                   f"{args.feeds}_feeds_per_exchange": await scrape_cost(args.feeds, False)},
        "forecast_hook": {f"{args.feeds}_predictions": forecast_hook(args.feeds)},
        "load": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--trades", type=int, default=100_000, help="trades per flood (default 100000)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="floods per mode, interleaved (default 2; 0: scrape and hook costs only)")
    parser.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes (default 1)")
    parser.add_argument("--feeds", type=int, default=1000, help="feeds for the scrape cost (default 1000)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
