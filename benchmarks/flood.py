"""Flood throughput of the exchange simulator, on loopback.

    .venv/bin/python benchmarks/flood.py [--trades 500000] [--ccxt-trades 100000]

1. Server side: the simulator runs in its own process; this process reads the websocket with a
   bare socket (no frame parsing, it only counts trades), so the figure is what the server can
   push: trades / time from the first byte to the last.
2. ccxt: ``ccxt.pro.binance.watch_trades`` in one process with the server, i.e. what a real
   consumer takes (findings.md measured 29k to 37k trades/s for ccxt alone).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

import ccxt.pro

from streamer.simulator import ReplayServer, binance_client_options, deep_merge, synthetic_tape

TRADE_END = b'"M":true}'


def serve(n_trades: int, port_out: Connection) -> None:
    async def run() -> None:
        tape = synthetic_tape("BTC/USDT", n_trades)
        async with ReplayServer([tape], speed=float("inf"), start_on_subscribe=True) as server:
            port_out.send(server.port)
            await server.wait_flushed()
            await asyncio.sleep(1.0)

    asyncio.run(run())


def read_raw(port: int, n_trades: int) -> float:
    """Seconds from the first to the last byte of ``n_trades`` trade frames."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /stream/ws/0 HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    payload = b'{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}'
    mask = os.urandom(4)
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    got, tail, start = 0, b"", None
    while got < n_trades:
        data = sock.recv(1 << 20)
        if not data:
            raise RuntimeError(f"server closed after {got} trades")
        if start is None:
            start = time.perf_counter()
        chunk = tail + data
        got += chunk.count(TRADE_END)
        tail = chunk[-(len(TRADE_END) - 1) :]
    sock.close()
    assert start is not None
    return time.perf_counter() - start


def server_side(n_trades: int) -> None:
    receive, send = multiprocessing.Pipe(duplex=False)
    proc = multiprocessing.Process(target=serve, args=(n_trades, send))
    proc.start()
    try:
        elapsed = read_raw(receive.recv(), n_trades)
    finally:
        proc.join(timeout=30)
    print(f"server side: {n_trades:,} trades in {elapsed:.2f} s = {n_trades / elapsed:,.0f} trades/s")


async def ccxt_side(n_trades: int) -> None:
    tape = synthetic_tape("BTC/USDT", n_trades)
    async with ReplayServer([tape], speed=float("inf"), start_on_subscribe=True) as server:
        ex: Any = ccxt.pro.binance({"enableRateLimit": False})
        extra = binance_client_options(server)
        deep_merge(ex.urls, extra["urls"])
        deep_merge(ex.options, extra["options"])
        try:
            await ex.load_markets()
            start = time.perf_counter()
            # watch_trades may strand the last trades of a burst in ccxt's cache: count the cache
            while len(ex.trades.get("BTC/USDT") or []) < n_trades:
                await asyncio.wait_for(ex.watch_trades("BTC/USDT"), 5)
            elapsed = time.perf_counter() - start
        finally:
            await ex.close()
    print(f"ccxt watch_trades: {n_trades:,} trades in {elapsed:.2f} s = {n_trades / elapsed:,.0f} trades/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trades", type=int, default=500_000)
    parser.add_argument("--ccxt-trades", type=int, default=100_000)
    args = parser.parse_args()
    server_side(args.trades)
    asyncio.run(ccxt_side(args.ccxt_trades))


if __name__ == "__main__":
    main()
