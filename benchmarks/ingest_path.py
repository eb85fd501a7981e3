"""CPU per websocket trade: ccxt alone against ccxt + the streamer's hooks, on the same frames.

    .venv/bin/python benchmarks/ingest_path.py --json [--trades 20000] [--rounds 5] [--root DIR]

The per-trade part of ``benchmarks/ingest.py``'s flood, without the network, the REST catch-up
or the event loop, measured in process CPU time, which another job on the machine moves far less
than wall-clock time (ingest.py's ratio moved 0.48-0.82 at load 2-3 with the code unchanged; here
bare ccxt's best moved 21.6-26.4 us between sessions): compare checkouts back to back (--root).

1. bare: ccxt's binance client handles ``--trades`` trade frames of the flood's synthetic tape
   (``client.handle_message``: JSON, ccxt's parse, its trade buffer), as ``watch_trades`` does.
2. pipeline: the same frames through a client of ``create_exchange`` wrapped by an
   ``ExchangeLink`` (frame guard, liveness), into a live ``FeedRunner`` whose ids continue
   from the frontier: the trade check, the ids, the aggregator and the closing of bars by trade.
   Every trade must reach the aggregator (checked). Where the link reads Binance's trade frames
   without ccxt's parse (streamer/binance_frames.py), ``fast_path_frames`` says how many of a
   run's frames did (then the pipeline can cost less than bare ccxt: ``streamer_us_per_trade``
   below zero).

Each side is run ``--rounds`` times, alternately; the best of each is kept. ``ratio`` is
bare / pipeline, ``streamer_us_per_trade`` the difference. The markets are read once from the
simulator; nothing else talks to a network. ``--root`` measures another checkout with this
harness (it must have ``streamer/exchange_link.py`` or the older ``ExchangeLink`` in feed.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _measure(trades: int, rounds: int) -> dict[str, Any]:
    import ccxt.pro
    import orjson
    from aiohttp import WSMessage, WSMsgType

    from streamer.feed import FeedRunner
    from streamer.simulator import ReplayServer, synthetic_tape
    from streamer.source import create_exchange
    from volcast.keys import Feed
    from volcast.settings import settings_from_mapping

    if Path("streamer/exchange_link.py").exists():
        from streamer.exchange_link import ExchangeLink
    else:  # before the link had a file of its own (an older --root)
        from streamer.feed import ExchangeLink  # type: ignore[attr-defined]

    # A minute ago: the check refuses trades stamped far past the exchange's clock.
    tape = synthetic_tape("BTC/USDT", trades, start_ms=int(time.time() * 1000) - 60_000)
    frames = [
        WSMessage(
            WSMsgType.TEXT,
            orjson.dumps(
                {
                    "e": "trade",
                    "E": t.timestamp_ms,
                    "s": "BTCUSDT",
                    "t": t.trade_id,
                    "p": t.price,
                    "q": t.amount,
                    "T": t.timestamp_ms,
                    "m": t.trade_id % 2 == 0,
                    "M": True,
                }
            ).decode(),
            None,
        )
        for t in tape.trades
    ]
    first = tape.trades[0]
    env = {"VOLCAST_BINANCE_API_KEY": "benchmark"}

    async def clients() -> tuple[Any, Any, Any, Any]:
        async with ReplayServer([tape], speed=1.0, start_on_subscribe=True) as server:
            base = f"http://127.0.0.1:{server.port}"
            urls = {"api": {"public": f"{base}/api/v3", "ws": {"spot": f"ws://127.0.0.1:{server.port}/stream/ws"}}}
            settings = settings_from_mapping(
                {
                    "exchanges": [
                        {
                            "id": "binance",
                            "symbols": ["BTC/USDT"],
                            "urls": urls,
                            "options": {"fetchMarkets": {"types": ["spot"]}},
                        }
                    ],
                    "bars": {"interval": "1s", "grace": "100ms"},
                    "streamer": {"watchdog": "2s"},
                },
                env=env,
            )
            bare = ccxt.pro.binance(
                {
                    "enableRateLimit": False,
                    "urls": urls,
                    "options": {"fetchMarkets": {"types": ["spot"]}, "tradesLimit": trades + 1},
                }
            )
            ours = create_exchange(settings.exchanges[0], env)
            try:
                link = ExchangeLink(ours, settings.exchanges[0], markets_max_age_s=2.0, watchdog_s=2.0)
            except TypeError:  # an older --root
                link = ExchangeLink(ours, settings.exchanges[0])
            await bare.load_markets()
            await ours.load_markets()
            return settings, bare, ours, link

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    settings, bare, ours, link = loop.run_until_complete(clients())
    url = "ws://127.0.0.1:9/stream/ws/0"  # never dialled: the frames are handed to the client
    runs = 0
    fast_path: list[int] = []  # frames of each pipeline run read without ccxt's parse

    def timed(client: Any) -> float:
        started = time.process_time()
        for frame in frames:
            client.handle_message(frame)
        return time.process_time() - started

    def run_bare() -> float:
        nonlocal runs
        runs += 1
        bare.trades = {}
        return timed(bare.client(f"{url}?{runs}"))

    def run_pipeline() -> float:
        nonlocal runs
        runs += 1
        feed = Feed("binance", "BTC/USDT", 1000)
        bars: list[Any] = []
        runner = FeedRunner(feed, link, settings, lambda _feed, bar: bars.append(bar), None)
        runner.frontier, runner.frontier_ms = first.trade_id - 1, first.timestamp_ms - 1
        runner._live = True  # as after the catch-up: bars close on the next trade
        frames_reader = getattr(link, "trade_frames", None)  # None: an older --root, or not Binance
        taken = frames_reader.taken if frames_reader is not None else 0
        took = timed(ours.client(f"{url}?{runs}"))
        fast_path.append(frames_reader.taken - taken if frames_reader is not None else 0)
        if runner.aggregator.trades != trades or not bars:
            raise RuntimeError(f"{runner.aggregator.trades} of {trades} trades aggregated, {len(bars)} bars")
        return took

    best: dict[str, float] = {}
    sides: tuple[tuple[str, Callable[[], float]], ...] = (("bare", run_bare), ("pipeline", run_pipeline))
    for _ in range(rounds):
        for name, run in sides:
            best[name] = min(best.get(name, float("inf")), run())
    loop.run_until_complete(bare.close())
    loop.run_until_complete(ours.close())
    loop.close()
    bare_us, pipeline_us = (best[name] / trades * 1e6 for name in ("bare", "pipeline"))
    return {
        "trades": trades,
        "rounds": rounds,
        "bare_us_per_trade": round(bare_us, 2),
        "pipeline_us_per_trade": round(pipeline_us, 2),
        "streamer_us_per_trade": round(pipeline_us - bare_us, 2),
        "ratio": round(bare_us / pipeline_us, 3),
        "fast_path_frames": min(fast_path),
        "load": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--trades", type=int, default=20_000, help="frames per run (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each side, best kept (default 5)")
    parser.add_argument("--root", type=Path, default=None, help="measure this checkout instead")
    args = parser.parse_args()
    if args.root is not None and args.root.resolve() != ROOT:
        # The other checkout's packages first; this harness, run there as a script.
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--trades",
            str(args.trades),
            "--rounds",
            str(args.rounds),
        ] + (["--json"] if args.json else [])
        env = {**os.environ, "VOLCAST_BENCH_ROOT": str(args.root.resolve())}
        return subprocess.call(command, cwd=args.root.resolve(), env=env)
    root = Path(os.environ.get("VOLCAST_BENCH_ROOT", ROOT))
    os.chdir(root)
    sys.path.insert(0, str(root))
    sys.path.insert(1, str(Path(__file__).resolve().parent))
    import streamer

    if not str(streamer.__file__).startswith(str(root)):  # an editable install elsewhere won
        raise SystemExit(f"streamer imported from {streamer.__file__}, not {root}")
    from report import print_result

    print_result(_measure(args.trades, args.rounds), args.json, 22)
    return 0


if __name__ == "__main__":
    sys.exit(main())
