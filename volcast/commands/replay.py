"""``volcast replay``: serve recorded trades as a local Binance-compatible exchange.

Runs in the foreground until Ctrl-C, or until every trade was sent when not looping. Prints the
URLs and the config.yml snippet that points the streamer at it, then progress every few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

PROGRESS_EVERY_S = 5.0
LINGER_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trades",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="trades CSV (gzip or plain): timestamp_ms,trade_id,price,amount,side; repeat for several symbols",
    )
    parser.add_argument(
        "--symbol",
        action="append",
        default=[],
        metavar="SYM",
        help="symbol of each --trades file in order (default: from the file name, e.g. ..._BTCUSDT_... -> BTC/USDT)",
    )
    parser.add_argument(
        "--history",
        action="append",
        default=[],
        metavar="FILE",
        help="real 1-minute bars (timestamp_ms,open,high,low,close,volume; gzip or plain) served as "
        "klines before a symbol's trades, moved to end where its tape starts; the symbol comes from "
        "the file name, or write SYM=FILE; repeat for several symbols or months",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="pacing: X seconds of recording per real second (timestamps are never scaled)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (default: 8765)")
    parser.add_argument("--loop", action="store_true", help="start again at the end, days later, ids continuing")
    parser.add_argument(
        "--as-recorded",
        action="store_true",
        help="send the recorded timestamps (default: move them by whole days to the last day)",
    )
    parser.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="e.g. drop_every_trades=500,duplicate_rate=0.01,rest_error_rate=0.2 (see streamer/simulator/faults.py)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    parser.add_argument(
        "--flood",
        type=int,
        default=0,
        metavar="N",
        help="instead of files, send N synthetic trades per --symbol (default BTC/USDT) as fast as "
        "possible, starting when every symbol has a subscriber",
    )


def _config_snippet(rest_url: str, ws_url: str, symbols: list[str]) -> str:
    """A config.yml that streams this replay as printed (the other sections keep their defaults)."""
    return (
        "exchanges:\n"
        "  - id: binance\n"
        f"    symbols: [{', '.join(symbols)}]\n"
        "    # a large trade buffer keeps every trade of a fast replay's bursts; spot markets only,\n"
        "    # else ccxt also asks the real futures host, which is not reachable offline\n"
        "    options: {tradesLimit: 1000000, fetchMarkets: {types: [spot]}}\n"
        "    urls:\n"
        f'      api: {{public: "{rest_url}", ws: {{spot: "{ws_url}"}}}}\n'
    )


def _environment_snippet() -> str:
    """Backfill reads Binance's historicalTrades, which ccxt sends only with an API key; without
    one every reconnect's missed trades become gap bars. The replay accepts any key."""
    from streamer.source import api_key_variable

    return (
        "environment (backfill needs an API key; the replay accepts any):\n"
        f"  export {api_key_variable('binance')}=replay\n"
    )


def main(args: argparse.Namespace) -> int:
    from streamer.simulator import FaultSpecError, ReplayServer, load_tapes, parse_faults, synthetic_tape
    from streamer.simulator.bar_files import load_bar_files
    from streamer.simulator.tape import normalise_symbol

    try:
        faults = parse_faults(args.faults)
        if args.flood:
            if args.trades:
                raise ValueError("--flood generates its own trades: give --symbol, not --trades")
            symbols = [normalise_symbol(s) for s in args.symbol] or ["BTC/USDT"]
            tapes = [synthetic_tape(s, args.flood, seed=args.seed) for s in symbols]
            speed = float("inf")
        else:
            if not args.trades:
                raise ValueError("give at least one --trades FILE (or --flood N)")
            tapes = load_tapes(args.trades, args.symbol)
            speed = args.speed
        history = load_bar_files(args.history)
        server = ReplayServer(
            tapes,
            speed=speed,
            faults=faults,
            seed=args.seed,
            host=args.host,
            port=args.port,
            loop=args.loop,
            as_recorded=args.as_recorded,
            start_on_subscribe=bool(args.flood),
            history=history,
        )
    except FaultSpecError as exc:
        print(f"volcast replay: bad --faults: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"volcast replay: {exc}", file=sys.stderr)
        return 2
    from volcast.signals import until_signalled

    code = asyncio.run(until_signalled(_serve(server), "replay"))
    if not server.done.is_set():  # stopped by a signal before the last trade was sent
        print("\nstopped", file=sys.stderr)
    return code


async def _serve(server: object) -> None:
    from streamer.simulator import ReplayServer

    assert isinstance(server, ReplayServer)
    async with server:
        symbols = [t.symbol for t in server.tapes]
        print(f"REST      {server.rest_url}")
        print(f"websocket {server.ws_url}")
        for book in server.klines.values():
            if book.first_ms < book.tape_start_ms:
                print(f"history   {book.symbol}: {(book.tape_start_ms - book.first_ms) // 60_000} minutes of bars "
                      "before its trades (GET /api/v3/klines)")
        print("config.yml (then: volcast stream --config config.yml):\n"
              + _config_snippet(server.rest_url, server.ws_url, symbols), flush=True)
        print(_environment_snippet(), flush=True)
        if server.start_on_subscribe:
            print("waiting for a subscriber to every symbol...", flush=True)
        last = 0
        while not server.done.is_set():
            # asyncio.timeout, not wait_for, whose 3.11 version can swallow the Ctrl-C cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROGRESS_EVERY_S):
                    await server.done.wait()
            sent = sum(server.published.values())
            if sent != last or server.done.is_set():
                print(
                    f"{time.strftime('%H:%M:%S')} published {sent} trades ({server.loops_completed} loops), "
                    f"clock {server.clock_ms()}, {server.subscribers} connections",
                    flush=True,
                )
                last = sent
        await server.wait_flushed()
        if server.started_mono is not None and server.finished_mono is not None:
            elapsed = server.finished_mono - server.started_mono
            print(f"done: {sum(server.published.values())} trades in {elapsed:.2f} s", flush=True)
        # Clients that lost trades at the very end can still backfill them over REST.
        print(f"serving REST for {LINGER_S:.0f} s more", flush=True)
        await asyncio.sleep(LINGER_S)
