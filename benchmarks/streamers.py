"""Work per CPU-second of one streamer against two sharing the feeds through leases, in one run.

    .venv/bin/python benchmarks/streamers.py --json [--feeds 4] [--trades 30000] [--speed 1 [4 ...]]
        [--rounds 2] [--read-hold 10ms] [--hold-baseline 0]

A replay server (the simulator, its own process) holds ``--feeds`` synthetic symbols of ``--trades``
trades each (one per millisecond, played at ``--speed``: 1 by default, 1,000 trades/s per feed, a
rate one process keeps up with here, so the figures are the websocket path's and not a backfill
after a choked connection) until every symbol has a subscriber, and one more, a gate symbol no
streamer is configured for: this benchmark subscribes to it (a bare websocket) once the streamers
are live and, with two, have split the feeds, so the flood starts only then. The streamers are
real `volcast stream` processes:

- ``one``: one streamer, default settings (no leases): every feed;
- ``one_leases``: one streamer with ``--leases``;
- ``two``: two streamers with ``--leases``, two feeds each;
- ``two_split``: two streamers without leases, each configured with half the feeds: two processes
  and no coordination at all, so ``two`` against it is the leases' own cost
  (``coordination_2_vs_split``), and it against ``one`` is what any second process costs;
- ``half``: one streamer alone on half the feeds (a flood of those only): what each of two
  streamers that share no core would cost (``efficiency_2_apart_vs_1``).

Each tape has one lead trade ``_LEAD_MS`` before its flood (``_tape``), and the figures count from
the server's clock reaching the flood, so no variant starts with a burst of what the server held
while the streamers started (``two`` starts slowest). With ``two``, the flood also waits until
every feed's health was written by its new owner after the split: a feed that moved still showed
its old owner's ``live``, and its first trades then came by a REST backfill (7,689 in one run).
``--pin`` puts the flood server on CPU 0 and the streamers on the others. ``--feeds 20 --gap-ms
5``: 4,000 trades/s in all at speed 1 over 4 websocket connections (5 symbols a connection), which
two streamers split 2 and 2, as a deployment with more feeds than one connection holds does.

For each: trades/s (wall clock, gate to every trade in the feeds' bars in Redis, closed or forming,
the latter written every ``bars.open_bar_update``, the default 1 s) and trades per
CPU-second of the streamer processes (user + system, /proc, over the same span), and the feeds'
reconnects and backfilled trades (a reconnect under load costs a REST backfill: it explains an
outlier). The goal
(issue 14): two processes do at least 0.9x the work per CPU-second of one; on a 2-core machine that
also runs the flood server the wall clock cannot show a speed-up. Best of ``--rounds`` per variant.

Several ``--speed`` values measure the ratio against the load: a second streamer is started when
one is busy, and what each process pays whatever its trade rate (a busy connection's read cycle,
its timers, status writes and liveness rounds) weighs on the ratio the less else it does. Each
speed's ``one_streamer_core_share`` is one streamer's CPU over the flood's wall time; ``by_speed``
holds every speed's figures, the first's are also the top level.

``--hold-baseline 0`` also runs ``one`` and ``two`` with every frame read as it comes (no read
hold, streamer/receive_pump.py) and gives each one's work per CPU-second against that baseline.

Needs Redis at 127.0.0.1:6379; every key is under a random prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import yaml
from report import print_result
from setting_args import duration_setting

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamer.leases import lease_holders  # noqa: E402
from streamer.simulator import ReplayServer, synthetic_tape  # noqa: E402
from streamer.simulator.tape import Tape  # noqa: E402
from volcast.connections import redis_client  # noqa: E402
from volcast.keys import Feed, RedisKeys  # noqa: E402
from volcast.settings import RedisSettings  # noqa: E402

GATE = "GATE/USDT"
_LEAD_MS = 15_000  # replay ms from a tape's lead trade to its flood: more than the streamers' start-up
_WAIT_S = 180.0
_TICK_S = os.sysconf("SC_CLK_TCK")
# Per variant, its streamer processes: None is one without leases on every feed; s1, s2 share them
# through leases; h1, h2 have each half of them in their config, without leases.
_PROCESSES: dict[str, list[str | None]] = {
    "one": [None], "one_leases": ["s1"], "two": ["s1", "s2"], "two_split": ["h1", "h2"],
}
_LEASED = frozenset({"s1", "s2"})


def _symbols(feeds: int) -> list[str]:
    return [f"F{i}/USDT" for i in range(feeds)]


def _tape(symbol: str, trades: int, gap_ms: int, seed: int, lead_ms: int = _LEAD_MS) -> Tape:
    """One lead trade, then ``trades`` trades ``gap_ms`` apart from ``_LEAD_MS`` after it.

    The server holds its clock until every symbol has a subscriber and then jumps it by the wait
    (streamer/simulator/server.py: a replay clock never runs slower than real time), so whatever a
    tape holds within the wait is published at once: seconds of a dense tape, a burst that is
    cheaper per trade than the paced flood and larger the longer the streamers took to be ready
    (two with leases take longest). The lead keeps that burst to the one lead trade; the figures
    count from the server's clock reaching the flood (``_flood_start``).
    """
    base = synthetic_tape(symbol, trades + 1, seed=seed).trades
    lead = base[0]
    flood = (dataclasses.replace(t, timestamp_ms=lead.timestamp_ms + lead_ms + i * gap_ms)
             for i, t in enumerate(base[1:]))
    return Tape(symbol, (lead, *flood))


def _serve(feeds: int, trades: int, speed: float, conn: Connection, pin: bool, gap_ms: int) -> None:
    if pin:
        os.sched_setaffinity(0, {_SERVER_CPU})

    async def serve() -> None:
        # At an infinite speed everything is published at once: a burst is the point, no lead.
        lead_ms = 0 if math.isinf(speed) else _LEAD_MS
        tapes = [_tape(s, trades, gap_ms, i, lead_ms) for i, s in enumerate(_symbols(feeds))]
        tapes.append(synthetic_tape(GATE, 1))
        async with ReplayServer(tapes, speed=speed, start_on_subscribe=True) as server:
            conn.send(server.port)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(serve())


@contextlib.asynccontextmanager
async def _flood(feeds: int, trades: int, speed: float, pin: bool = False, gap_ms: int = 1) -> AsyncIterator[int]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve, args=(feeds, trades, speed, theirs, pin, gap_ms), daemon=True)
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


def _open_gate(port: int) -> socket.socket:
    """Subscribe to the gate symbol: the last subscriber the server waits for."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /stream/ws/0 HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    payload = b'{"method":"SUBSCRIBE","params":["gateusdt@trade"],"id":1}'
    mask = os.urandom(4)
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return sock


_SERVER_CPU = 0


def _streamer_cpus() -> None:
    """In a streamer's child process before exec: every CPU but the flood server's."""
    os.sched_setaffinity(0, os.sched_getaffinity(0) - {_SERVER_CPU})


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK_S  # utime, stime


async def _flood_start(port: int, symbol: str) -> None:
    """Return when the server's clock reaches the flood: ``_LEAD_MS`` after the lead trade, which
    the gate's opening publishes at once (the server's own clock and trades, over its REST API)."""
    base = f"http://127.0.0.1:{port}/api/v3"
    async with aiohttp.ClientSession() as session:
        async def get(path: str) -> Any:
            async with session.get(f"{base}/{path}") as response:
                return await response.json()

        lead: list[dict[str, Any]] = []

        async def published() -> bool:
            lead[:] = await get(f"trades?symbol={symbol.replace('/', '')}&limit=1")
            return bool(lead)

        await _poll(published, "the lead trade published")
        flood_ms = int(lead[0]["time"]) + _LEAD_MS

        async def reached() -> bool:
            return int((await get("time"))["serverTime"]) >= flood_ms - 5

        await _poll(reached, "the server's clock at the flood")


async def _poll(check: Any, what: str) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {_WAIT_S:.0f}s: {what}")
        await asyncio.sleep(0.05)


async def _in_bars(redis: aioredis.Redis, keys: RedisKeys, feed: Feed) -> int:
    """Trades in the feed's closed bars and its forming bar: the work done, whoever did it."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(keys.bars(feed))  # type: ignore[assignment]
    closed = sum(int(fields[b"trades"]) for _id, fields in entries)
    return closed + int(await redis.hget(keys.open_bar(feed), "trades") or 0)


async def one_run(variant: str, feeds: int, trades: int, directory: Path,
                  redis_section: dict[str, Any] | None = None, *, speed: float = 1.0,
                  read_hold: int | str | None = None, pin: bool = False, gap_ms: int = 1) -> dict[str, Any]:
    """One variant; ``redis_section`` (the settings' ``redis`` without key_prefix) points it at
    another Redis, e.g. a cluster (benchmarks/scale.py); ``read_hold`` sets ``streamer.read_hold``
    (None: its default); ``pin``: the flood server on CPU 0, the streamers on the others; ``gap_ms``:
    the replay milliseconds between a feed's trades."""
    prefix = f"bench-streamers-{uuid.uuid4().hex[:8]}"
    keys = RedisKeys(prefix)
    feed_list = [Feed("binance", s, 5000) for s in _symbols(feeds)]
    redis_raw = {**(redis_section or {}), "key_prefix": prefix}
    redis = redis_client(RedisSettings(**redis_raw))
    env = {**os.environ, "VOLCAST_BINANCE_API_KEY": "benchmark"}
    processes: list[asyncio.subprocess.Process] = []
    try:
        async with _flood(feeds, trades, speed, pin, gap_ms) as port:
            base = f"http://127.0.0.1:{port}"
            config: dict[str, Any] = {
                "exchanges": [{"id": "binance", "symbols": _symbols(feeds),
                               "urls": {"api": {"public": f"{base}/api/v3", "ws": {"spot": f"ws://127.0.0.1:{port}/stream/ws"}}},
                               "options": {"fetchMarkets": {"types": ["spot"]}}}],
                "bars": {"interval": "5s"},  # grace and open_bar_update: the defaults (2s, 1s)
                "history": {"days": 0},
                "redis": redis_raw,
            }
            if read_hold is not None:
                config["streamer"] = {"read_hold": read_hold}
            names = _PROCESSES[variant]
            symbols = _symbols(feeds)
            halves = {"h1": symbols[: feeds // 2], "h2": symbols[feeds // 2:]}
            for name in names:
                config["exchanges"][0]["symbols"] = halves.get(str(name), symbols)
                path = directory / f"stream-{name}.yml"
                path.write_text(yaml.safe_dump(config), encoding="utf-8")
                leases = ["--leases", "--name", name] if name in _LEASED else []
                log = (directory / f"{variant}-{name}.log").open("wb")
                processes.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "volcast.cli", "stream", "--config", str(path), *leases,
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                    preexec_fn=_streamer_cpus if pin else None))

            split_ms: list[int] = []  # when the two were first seen to hold half the feeds each

            async def ready() -> bool:
                if variant == "two" and not split_ms:
                    owners = [h.owner for h in (await lease_holders(redis, keys, feed_list)).values()]
                    if sorted(owners.count(n) for n in ("s1", "s2")) != [feeds // 2, feeds - feeds // 2]:
                        return False
                    split_ms.append(int(time.time() * 1000))
                for feed in feed_list:
                    health = await redis.hmget(keys.health(feed), ["state", "updated_ms"])
                    if health[0] != b"live":
                        return False
                    # A feed that moved still shows its old owner's last "live" until the new owner
                    # writes (a fenced write: the old one can no longer): the flood waits for that,
                    # or the new owner's first trades came by a REST backfill (thousands at speed 4).
                    if split_ms and int(health[1] or 0) <= split_ms[0]:
                        return False
                return True

            await _poll(ready, "the streamers live on their feeds")
            gate = _open_gate(port)
            if not math.isinf(speed):
                await _flood_start(port, _symbols(feeds)[0])
            cpu0 = sum(_cpu_s(p.pid) for p in processes)
            started = time.monotonic()

            async def counted() -> bool:
                total = 0
                for feed in feed_list:
                    total += await _in_bars(redis, keys, feed)
                return total >= feeds * (trades + 1)  # each feed's lead trade too

            await _poll(counted, "every trade counted")
            wall = time.monotonic() - started
            cpu = sum(_cpu_s(p.pid) for p in processes) - cpu0
            gate.close()
            reconnects = backfilled = 0
            for feed in feed_list:
                health = await redis.hgetall(keys.health(feed))
                reconnects += int(health.get(b"reconnects", 0))
                backfilled += int(health.get(b"backfilled_trades", 0))
            moves = 0  # leases lost or released (the split at the start releases some): feeds that moved
            for name in names:
                if name in _LEASED:
                    info = await redis.hgetall(keys.streamer(name))
                    moves += int(info.get(b"lost", 0)) + int(info.get(b"released", 0))
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                await asyncio.wait_for(process.wait(), _WAIT_S)
        total = feeds * trades
        return {"trades_per_s": round(total / wall), "trades_per_cpu_s": round(total / cpu), "cpu_s": round(cpu, 2),
                "wall_s": round(wall, 2), "reconnects": reconnects, "backfilled_trades": backfilled,
                "lease_moves": moves}
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
            await redis.delete(key)
        await redis.aclose()


async def measure(args: argparse.Namespace, speed: float, trades: int) -> dict[str, Any]:
    """Every variant at one replay speed, best of ``--rounds`` each, and their ratios."""
    best: dict[str, dict[str, Any]] = {}
    # (name in the results, variant, streamer.read_hold)
    runs = [(v, v, args.read_hold) for v in ("one", "one_leases", "two", "two_split", "half")]
    if args.hold_baseline is not None:
        runs += [(f"{v}_baseline_hold", v, args.hold_baseline) for v in ("one", "two")]
    for round_ in range(args.rounds):
        for variant, processes, hold in runs:
            directory = Path(tempfile.mkdtemp(prefix="volcast-streamers-"))
            # half: one streamer alone with half the feeds (and a flood of those only)
            feeds = args.feeds // 2 if processes == "half" else args.feeds
            try:
                result = await one_run("one" if processes == "half" else processes, feeds, trades, directory,
                                       speed=speed, read_hold=hold, pin=args.pin, gap_ms=args.gap_ms)
            except BaseException:
                print(f"{variant}: failed; the streamers' logs are in {directory}", file=sys.stderr)
                raise
            shutil.rmtree(directory, ignore_errors=True)
            print(f"speed {speed:g} round {round_ + 1} {variant}: {result}", file=sys.stderr)
            if variant not in best or result["trades_per_cpu_s"] > best[variant]["trades_per_cpu_s"]:
                best[variant] = result
    baseline: dict[str, Any] = {}
    if args.hold_baseline is not None:
        baseline = {"hold_baseline": {
            "read_hold": args.hold_baseline,
            "streamers": {"1": best["one_baseline_hold"], "2": best["two_baseline_hold"]},
            "efficiency_2_vs_1": round(best["two_baseline_hold"]["trades_per_cpu_s"]
                                       / best["one_baseline_hold"]["trades_per_cpu_s"], 3),
            "work_per_cpu_s_vs_baseline": {
                n: round(best[v]["trades_per_cpu_s"] / best[f"{v}_baseline_hold"]["trades_per_cpu_s"], 3)
                for n, v in (("1", "one"), ("2", "two"))},
        }}
    one = best["one"]
    return {
        "speed": speed,
        "trades_per_feed": trades,
        "one_streamer_core_share": round(one["cpu_s"] / one["wall_s"], 3),
        "streamers": {"1": one, "1_leases": best["one_leases"], "2": best["two"], "2_split": best["two_split"],
                      "1_half": best["half"]},
        "efficiency_2_vs_1": round(best["two"]["trades_per_cpu_s"] / one["trades_per_cpu_s"], 3),
        # Two processes that share no core (two machines): each costs what one streamer alone on
        # half the feeds costs. Here two streamers time-share the cores with each other and the
        # flood server: efficiency_2_vs_1 includes that, this one does not.
        "efficiency_2_apart_vs_1": round(best["half"]["trades_per_cpu_s"] / one["trades_per_cpu_s"], 3),
        "efficiency_2_split_vs_1": round(best["two_split"]["trades_per_cpu_s"] / one["trades_per_cpu_s"], 3),
        "coordination_2_vs_split": round(best["two"]["trades_per_cpu_s"] / best["two_split"]["trades_per_cpu_s"], 3),
        "efficiency_1_leases_vs_1": round(best["one_leases"]["trades_per_cpu_s"] / one["trades_per_cpu_s"], 3),
        **baseline,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    # Each speed's flood lasts as long as the first's: its trades scale with it (not inf's).
    first_speed = args.speed[0]
    by_speed = [await measure(args, speed, args.trades if math.isinf(speed) or math.isinf(first_speed)
                              else round(args.trades * speed / first_speed))
                for speed in args.speed]
    first = by_speed[0]
    return {
        "feeds": args.feeds,
        "rounds": args.rounds,
        "read_hold": args.read_hold or "default",
        "pinned": args.pin,
        **first,
        "goal": 0.9,
        **({"by_speed": {f"{m['speed']:g}": m for m in by_speed}} if len(by_speed) > 1 else {}),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--feeds", type=int, default=4, help="flooded symbols (default 4)")
    parser.add_argument("--trades", type=int, default=30_000, help="trades per symbol (default 30000)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant (default 2); the best counts")
    parser.add_argument("--speed", type=float, nargs="+", default=[1.0],
                        help="replay speed (default 1: 1,000 trades/s per feed; inf floods them at once); "
                             "several: each is measured, with --trades scaled so each flood lasts as long "
                             "as the first's, and the first's figures are the top level")
    parser.add_argument("--read-hold", default=None, type=duration_setting, metavar="DURATION",
                        help="the streamers' streamer.read_hold, e.g. 25ms or 0 (default: the setting's default)")
    parser.add_argument("--hold-baseline", default=None, type=duration_setting, metavar="DURATION",
                        help="also run one and two streamers with this read_hold (e.g. 0) and give the ratios")
    parser.add_argument("--pin", action="store_true",
                        help="the flood server on CPU 0 and the streamers on the other CPUs, so that one and "
                             "two streamers share the same CPUs and the server competes with neither")
    parser.add_argument("--gap-ms", type=int, default=1,
                        help="replay milliseconds between a feed's trades (default 1: 1,000 trades/s per feed "
                             "at speed 1; 5 and 20 feeds: 4,000 trades/s in all over 4 connections)")
    args = parser.parse_args()
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        parser.error("--pin needs at least two CPUs")
    result = asyncio.run(main_async(args))
    print_result(result, args.json, 26)
    return 0


if __name__ == "__main__":
    sys.exit(main())
