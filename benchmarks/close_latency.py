"""End-to-end latency of the product: from a bar's end (exchange time) to its next-bar forecast
at an MQTT subscriber, for busy and quiet symbols streamed in real time.

    .venv/bin/python benchmarks/close_latency.py --json            # 5 measured minutes
    .venv/bin/python benchmarks/close_latency.py --json --minutes 2 --liquid 2 --quiet 8

Every part is a real process of its own: a private ``redis-server`` and ``mosquitto`` on free
ports, ``volcast replay --speed 1`` (real time) serving ``--liquid`` busy and ``--quiet`` quiet
symbols, ``volcast stream``, ``volcast forecast`` (the baseline serves: no model is trained), and
an MQTT subscriber (this file with ``--subscriber``) that writes the arrival time of every
forecast. The tapes are real trades from tests/data, copies renamed: busy ones are the Binance
BTC/USDT raw trades (46 s, ~43 per second; ``--liquid-source btc+eth`` alternates them with the
ETH/USDT trades, 3.5 min, ~5 per second) played back to back with their ids continued, each
symbol at another phase; quiet ones are
windows of the Binance XRP/ETH trades (a trade every 17 s on average, pauses up to 8 minutes),
each window from another part of the 2.5 days. All tapes start in one minute.

Per class it reports, for each bar that ended after the warm-up and before the end: the time
from the bar's end on the exchange's clock (the replay's, read over REST with the round trip's
midpoint) to the first arrival of the forecast for the next bar at the subscriber: p50, p99, max;
the streamer's bars closed per proof and its watchdog reconnects (health hashes); the REST
request weight used per minute against the limit (the replay's ``X-MBX-USED-WEIGHT-1M`` read
every 5 s, this benchmark's own reads taken off) and what the replay's limits counted
(``GET /debug/limits``: websocket messages per second and connection attempts, REST weight);
whether every closed bar equals ``volcast bars`` of its tape (the final bars: an amended one,
rewritten after a late trade, as its newest revision; ``bars.amended`` counts them and
``bars.amended_inexact`` those still wrong), the late and amended trades per class, the revised
forecasts the subscriber got; and ``uptime`` load at start and end. ``liquid_breakdown``
follows each busy bar: the tape's first trade at or after its end, its event written in Redis,
its forecast at the subscriber (and the share of all instants of
the busy tapes that wait more than 300 ms for a trade). ``--exchange-grace auto`` (or a
duration) sets ``exchanges[].grace``; ``grace_ms_at_end`` reports what the proofs used.
``--symbols-per-connection N`` sets ``streamer.symbols_per_connection`` (0: ccxt's round robin, one
busy symbol per connection); with no history to rank by, the plan follows the config's order,
which lists the busy symbols first. ``--read-hold D`` sets ``streamer.read_hold`` (0: every frame
read as it comes). Progress goes to stderr; with
``--json`` one JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import itertools
import json
import math
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from setting_args import duration_setting  # noqa: E402

DATA = ROOT / "tests" / "data"
LIQUID_SOURCES = {
    "btc": DATA / "binance_BTCUSDT_trades_2021-01-08_000000-000046.csv.gz",  # ~43 trades/s
    "eth": DATA / "unknown-exchange_ETHUSDT_trades_2023-02-02_0920.csv.gz",  # ~5 trades/s, pauses up to 2 s
}
QUIET_SOURCE = DATA / "binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz"
DAY_MS = 86_400_000
MINUTE_MS = 60_000
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
WEIGHT_POLL_S = 5.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the tapes ----------------------------------------------------------------------------------

Row = tuple[int, int, str, str, str]  # timestamp_ms, trade_id, price, amount, side


def read_rows(path: Path) -> list[Row]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        return [(int(r[0]), int(r[1]), r[2], r[3], r[4]) for r in reader]


def write_rows(path: Path, rows: list[Row]) -> None:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["timestamp_ms", "trade_id", "price", "amount", "side"])
        writer.writerows(rows)


def tiled(rows: list[Row], start_ms: int, span_ms: int, phase_ms: int) -> list[Row]:
    """``rows`` played back to back from ``start_ms - phase_ms``, ids continued, cut to the span."""
    first, last = rows[0][0], rows[-1][0]
    period = last - first + max(1, (last - first) // len(rows))  # one mean gap between copies
    id0, count = rows[0][1], len(rows)
    out: list[Row] = []
    for copy in range(math.ceil((span_ms + phase_ms) / period) + 1):
        for ts, tid, price, amount, side in rows:
            at = start_ms - phase_ms + copy * period + (ts - first)
            if start_ms <= at < start_ms + span_ms:
                out.append((at, id0 + copy * count + (tid - id0), price, amount, side))
    return out


def window(rows: list[Row], first_index: int, start_ms: int, span_ms: int) -> list[Row]:
    """The trades from ``rows[first_index]`` on, for ``span_ms``, moved to start at ``start_ms``."""
    begin = rows[first_index][0]
    return [(start_ms + ts - begin, tid, p, a, s) for ts, tid, p, a, s in rows[first_index:] if ts - begin < span_ms]


def make_tapes(out: Path, liquid: int, quiet: int, start_ms: int, span_ms: int,
               liquid_sources: list[str]) -> dict[str, tuple[Path, str]]:
    """Tape files by symbol: (path, class)."""
    tapes: dict[str, tuple[Path, str]] = {}
    sources = [read_rows(LIQUID_SOURCES[name]) for name in liquid_sources]
    for i in range(liquid):
        rows = sources[i % len(sources)]
        symbol = f"L{i:02d}X/USDT"
        path = out / f"liquid_{i:02d}.csv.gz"
        write_rows(path, tiled(rows, start_ms, span_ms, phase_ms=i * 4_567))
        tapes[symbol] = (path, "liquid")
    rows = read_rows(QUIET_SOURCE)
    last_start = next(i for i, r in enumerate(rows) if r[0] > rows[-1][0] - span_ms)
    for i in range(quiet):
        first_index = (i * last_start) // max(1, quiet)
        symbol = f"Q{i:02d}X/ETH"
        path = out / f"quiet_{i:02d}.csv.gz"
        write_rows(path, window(rows, first_index, start_ms, span_ms))
        tapes[symbol] = (path, "quiet")
    return tapes


# -- the subscriber (its own process) -----------------------------------------------------------


def run_subscriber(port: int, topic: str, out: Path) -> int:
    """Append ``[arrival_ms, topic, open_time_ms, revision]`` per forecast to ``out`` until SIGTERM
    (``revision`` 0, or the payload's: a forecast made again from an amended bar)."""
    import socket

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    lock = threading.Lock()
    lines: list[str] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"close-sub-{uuid.uuid4().hex[:8]}")

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        sock = c.socket()
        if sock is not None:  # findings.md: without it a message can wait ~40 ms for an ACK
            # cast: paho types it as any transport's socket; this client's is TCP
            cast(socket.socket, sock).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe(topic, qos=1)

    def on_message(_c: mqtt.Client, _u: Any, message: Any) -> None:
        arrival = time.time_ns() // 1_000_000
        try:
            payload = json.loads(message.payload)
            open_ms, revision = int(payload["open_time_ms"]), int(payload.get("revision", 0))
        except (ValueError, KeyError, TypeError):
            return
        with lock:
            lines.append(json.dumps([arrival, message.topic, open_ms, revision]))

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        with out.open("a", encoding="utf-8") as handle:
            while not stop.wait(0.5):
                with lock:
                    batch, lines[:] = list(lines), []
                handle.writelines(line + "\n" for line in batch)
                handle.flush()
            with lock:
                handle.writelines(line + "\n" for line in lines)
    finally:
        client.loop_stop()
        client.disconnect()
    return 0


# -- the run ------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uptime() -> str:
    import subprocess

    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def volcast(*args: str) -> list[str]:
    return [sys.executable, "-m", "volcast.cli", *args]


def exchange_offset_ms(rest_url: str) -> tuple[int, int]:
    """The replay's clock minus ours (round trip's midpoint, best of 20 reads), and that round trip."""
    best: tuple[int, int] | None = None
    for _ in range(20):
        before = time.time_ns() // 1_000_000
        with urllib.request.urlopen(f"{rest_url}/time", timeout=5) as response:
            server = int(json.loads(response.read())["serverTime"])
        after = time.time_ns() // 1_000_000
        if best is None or after - before < best[1]:
            best = (server - (before + after) // 2, after - before)
    assert best is not None
    return best


class WeightWatch(threading.Thread):
    """Reads the replay's used request weight every few seconds (one ``time`` request, weight 1)."""

    def __init__(self, rest_url: str) -> None:
        super().__init__(daemon=True)
        self.rest_url = rest_url
        self.readings: list[tuple[float, int]] = []  # (wall s, used weight in that minute)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(WEIGHT_POLL_S):
            try:
                with urllib.request.urlopen(f"{self.rest_url}/time", timeout=5) as response:
                    used = int(response.headers.get("X-MBX-USED-WEIGHT-1M", "0"))
            except (OSError, ValueError):
                continue
            self.readings.append((time.time(), used))

    def per_minute(self, since_s: float) -> list[int]:
        """The most weight seen used in each calendar minute from ``since_s``, without our own reads."""
        peaks: dict[int, int] = {}
        own: dict[int, int] = defaultdict(int)
        for at, used in self.readings:
            minute = int(at // 60)
            own[minute] += 1
            peaks[minute] = max(peaks.get(minute, 0), used - own[minute])
        return [peaks[m] for m in sorted(peaks) if m * 60 >= since_s]


def percentiles(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)

    def rank(fraction: float) -> int:
        return ordered[min(len(ordered), max(1, math.ceil(fraction * len(ordered)))) - 1]

    return {"n": len(ordered), "p50_ms": rank(0.5), "p99_ms": rank(0.99), "max_ms": ordered[-1],
            "mean_ms": round(statistics.fmean(ordered), 1)}


def service_config(*, replay_port: int, redis_port: int, mqtt_port: int, prefix: str, symbols: list[str],
                   model_dir: Path, grace: str, exchange_grace: str | None,
                   symbols_per_connection: int | None = None, read_hold: int | str | None = None) -> dict[str, Any]:
    streamer: dict[str, Any] = {}
    if symbols_per_connection is not None:
        streamer["symbols_per_connection"] = symbols_per_connection
    if read_hold is not None:
        streamer["read_hold"] = read_hold
    return {
        "exchanges": [{
            "id": "binance",
            "symbols": symbols,
            **({} if exchange_grace is None else {"grace": exchange_grace}),
            "options": {"fetchMarkets": {"types": ["spot"]}},
            "urls": {"api": {"public": f"http://127.0.0.1:{replay_port}/api/v3",
                             "ws": {"spot": f"ws://127.0.0.1:{replay_port}/stream/ws"}}},
        }],
        "bars": {"interval": "1m", "grace": grace, "open_bar_update": "1s"},
        # Without history the connection plan ranks symbols in config order: busy ones first here.
        **({"streamer": streamer} if streamer else {}),
        "history": {"days": 0},  # no kline bootstrap: the tapes start with the run
        "redis": {"url": f"redis://127.0.0.1:{redis_port}/0", "key_prefix": prefix},
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "topic_prefix": prefix},
        "refit": {"model_dir": str(model_dir)},
    }


@contextlib.contextmanager
def stopped_at_exit(services: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for service in reversed(services):
            service.stop(20.0)


def check_bars(client: Any, keys: Any, tapes: dict[str, tuple[Path, str]], until_ms: int) -> dict[str, int]:
    """Every closed bar in Redis against ``volcast bars`` of its tape (same aggregator, offline).

    The bars in Redis are the final ones: an amended bar (streamer/bar_revisions.py) is replaced in
    place by its newest revision (field ``rev``), so an amended bar counts as exact only if the
    amendment made it so; ``amended`` / ``amended_inexact`` count them apart.
    """
    from dataclasses import replace

    from streamer.offline import aggregate_trades
    from streamer.trades_csv import read_trades
    from volcast.bar import Bar, BarStatus
    from volcast.keys import Feed

    checked = inexact = gap = amended = amended_inexact = 0
    for symbol, (path, _kind) in tapes.items():
        expected = {b.open_time_ms: b for b in aggregate_trades(read_trades(path), MINUTE_MS)[0]}
        for _id, fields in client.xrange(keys.bars(Feed("binance", symbol, MINUTE_MS))):
            bar = Bar.from_fields(fields)
            if bar.open_time_ms + MINUTE_MS > until_ms or bar.open_time_ms not in expected:
                continue  # after the tape's last trade: empty bars of no trade
            checked += 1
            revised = b"rev" in fields
            amended += revised
            if bar.status is BarStatus.GAP:
                gap += 1
            elif replace(bar, status=BarStatus.COMPLETE) != replace(expected[bar.open_time_ms],
                                                                    status=BarStatus.COMPLETE):
                inexact += 1
                amended_inexact += revised
    return {"bars_checked": checked, "inexact": inexact, "gap": gap, "amended": amended,
            "amended_inexact": amended_inexact}


def first_trade_at_or_after(path: Path, ends: list[int]) -> dict[int, int]:
    """For each bar end, the time of the tape's first trade stamped at or after it (absent: none)."""
    import bisect

    times = [row[0] for row in read_rows(path)]
    found: dict[int, int] = {}
    for end in ends:
        i = bisect.bisect_left(times, end)
        if i < len(times):
            found[end] = times[i]
    return found


def decompose(tapes: dict[str, tuple[Path, str]], written: dict[tuple[str, int], int],
              forecast: dict[tuple[str, int], int], offset_ms: int, from_ms: int, to_ms: int) -> dict[str, Any]:
    """Per busy bar ending in [from_ms, to_ms]: where the time from its end to its forecast goes.

    ``tape_wait``: the tape's first trade at or after the end, minus the end (what a close on the
    trade proof must wait for at least); ``to_redis``: the bar's event written in Redis (its stream
    id: Redis's clock, this machine's) minus the end, i.e. tape wait + delivery to the streamer +
    close + write (on the trade proof a bar closes when that trade arrives); ``to_subscriber``: the
    next bar's forecast at the subscriber minus the end. All on the exchange's clock.
    """
    rows: list[dict[str, Any]] = []
    for symbol, (path, kind) in tapes.items():
        if kind != "liquid":
            continue
        ends = [end for (s, open_ms) in written if s == symbol
                if from_ms <= (end := open_ms + MINUTE_MS) <= to_ms]
        nexts = first_trade_at_or_after(path, ends)
        topic_symbol = symbol.replace("/", "-")
        for end in sorted(ends):
            at_redis = written[(symbol, end - MINUTE_MS)] + offset_ms - end
            arrival = forecast.get((topic_symbol, end))
            next_trade = nexts.get(end)
            rows.append({"symbol": symbol, "end_ms": end,
                         "tape_wait_ms": None if next_trade is None else next_trade - end,
                         "to_redis_ms": at_redis,
                         "to_subscriber_ms": None if arrival is None else arrival + offset_ms - end})

    def values(name: str) -> list[int]:
        return [v for r in rows if isinstance(v := r[name], int)]

    waits = values("tape_wait_ms")
    pairs = [(r["tape_wait_ms"], r["to_redis_ms"]) for r in rows
             if isinstance(r["tape_wait_ms"], int) and isinstance(r["to_redis_ms"], int)]
    return {
        "bars": len(rows),
        "tape_wait": percentiles(waits),
        "tape_wait_over_300ms": sum(w > 300 for w in waits),
        # Over every instant of the busy tapes, not only these bar ends: the trade proof alone cannot
        # give a p99 of 300 ms where this is above 1%.
        "tape_instants_waiting_over_300ms": instants_waiting(
            [path for path, kind in tapes.values() if kind == "liquid"], 300),
        "to_redis": percentiles(values("to_redis_ms")),
        "to_subscriber": percentiles(values("to_subscriber_ms")),
        # to_redis - tape_wait: delivery of the proving trade + close + write, for bars closed on it
        # (a bar closed on a pong before its next trade has this negative).
        "to_redis_minus_tape_wait": percentiles([b - a for a, b in pairs if isinstance(a, int) and isinstance(b, int)]),
        "redis_to_subscriber": percentiles([
            int(s) - int(t) for r in rows if isinstance(s := r["to_subscriber_ms"], int)
            and isinstance(t := r["to_redis_ms"], int)]),
        "slowest": sorted(rows, key=lambda r: -(r["to_subscriber_ms"] or 0))[:8],
    }


def instants_waiting(paths: list[Path], over_ms: int) -> float:
    """The share of all instants of the tapes whose next trade is more than ``over_ms`` away: what a
    bar end falling anywhere waits for on the trade proof (the gaps' excess over ``over_ms``)."""
    excess = span = 0
    for path in paths:
        times = [row[0] for row in read_rows(path)]
        excess += sum(max(0, b - a - over_ms) for a, b in itertools.pairwise(times))
        span += times[-1] - times[0]
    return round(excess / span, 4) if span else 0.0


def written_at(client: Any, keys: Any) -> dict[tuple[str, int], int]:
    """(symbol, open_time_ms) -> when its bar-closed event was written (the event's stream id, ms)."""
    out: dict[tuple[str, int], int] = {}
    for entry_id, fields in client.xrange(keys.bar_events(MINUTE_MS)):
        symbol = fields[b"symbol"].decode()
        out.setdefault((symbol, int(fields[b"open_time_ms"])), int(entry_id.split(b"-")[0]))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import redis
    import yaml
    from soak_processes import Service, clean_env, wait_for_port

    from volcast.keys import Feed, RedisKeys, forecast_topic_filter

    work = Path(tempfile.mkdtemp(prefix="volcast-close-"))
    logs = work / "logs"
    logs.mkdir()
    prefix = f"close-{uuid.uuid4().hex[:8]}"
    env = clean_env(VOLCAST_BINANCE_API_KEY="bench")
    span_ms = int((args.warmup_s + args.minutes * 60 + 120) * 1000)
    # Tapes start two minutes into the last day: the replay keeps them on their day (no shift).
    now_ms = time.time_ns() // 1_000_000
    start_ms = now_ms - now_ms % MINUTE_MS - DAY_MS + 2 * MINUTE_MS
    tapes = make_tapes(work, args.liquid, args.quiet, start_ms, span_ms, args.liquid_source.split("+"))
    load_start = uptime()
    log(f"close_latency: {args.liquid} liquid + {args.quiet} quiet symbols, warm-up {args.warmup_s:g} s, "
        f"{args.minutes:g} min measured; logs in {logs}; {load_start}")
    services: list[Service] = []

    def add(name: str, command: list[str]) -> Service:
        service = Service(name, command, logs, env, ROOT, restartable=False)
        services.append(service)
        service.start()
        return service

    with stopped_at_exit(services):
        redis_port = free_port()
        wait_for_port(redis_port, add("redis", [REDIS_SERVER, "--port", str(redis_port), "--bind", "127.0.0.1",
                                               "--save", "", "--appendonly", "no"]))
        mqtt_port = free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                        "max_queued_messages 100000\npersistence false\n")
        wait_for_port(mqtt_port, add("mosquitto", [MOSQUITTO, "-c", str(conf)]))
        arrivals = work / "arrivals.jsonl"
        add("subscriber", [sys.executable, str(Path(__file__).resolve()), "--subscriber", str(mqtt_port),
                           forecast_topic_filter(prefix), str(arrivals)])
        replay_port = free_port()
        replay_args = ["replay", "--port", str(replay_port), "--speed", "1"]
        for symbol, (path, _kind) in tapes.items():
            replay_args += ["--trades", str(path), "--symbol", symbol]
        replay = add("replay", volcast(*replay_args))
        wait_for_port(replay_port, replay, timeout_s=120)
        rest_url = f"http://127.0.0.1:{replay_port}/api/v3"
        offset_ms, rtt_ms = exchange_offset_ms(rest_url)
        weights = WeightWatch(rest_url)
        weights.start()
        config = work / "config.yml"
        config.write_text(yaml.safe_dump(service_config(
            replay_port=replay_port, redis_port=redis_port, mqtt_port=mqtt_port, prefix=prefix,
            symbols=list(tapes), model_dir=work / "models", grace=args.grace, exchange_grace=args.exchange_grace,
            symbols_per_connection=args.symbols_per_connection, read_hold=args.read_hold)))
        started_wall = time.time()
        add("stream", volcast("stream", "--config", str(config)))
        add("forecast", volcast("forecast", "--config", str(config)))
        run_s = args.warmup_s + args.minutes * 60
        measure_from_ms = int(started_wall * 1000) + offset_ms + int(args.warmup_s * 1000)
        while (elapsed := time.time() - started_wall) < run_s:
            for service in services:
                if service.process is not None and service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} exited {service.process.returncode}; see {service.log}")
            log(f"close_latency: {elapsed:.0f}/{run_s:.0f} s")
            time.sleep(min(30.0, max(0.1, run_s - elapsed)))
        measure_to_ms = int(time.time() * 1000) + offset_ms - 5_000  # the last forecasts are still on their way
        weights.stop.set()
        client = redis.Redis(port=redis_port)
        keys = RedisKeys(prefix)
        health = {s: {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], client.hgetall(
                          keys.health(Feed("binance", s, MINUTE_MS)))).items()} for s in tapes}
        load_end = uptime()
        with urllib.request.urlopen(f"http://127.0.0.1:{replay_port}/debug/limits", timeout=10) as response:
            exchange_limits = json.loads(response.read())
        for service in services:
            service.rss()  # also reads its CPU time
        services_cpu = {s.name: s.summary()["cpu_s"] for s in services if s.name in ("stream", "forecast", "replay")}
        for name in ("stream", "forecast", "subscriber"):
            next(s for s in services if s.name == name).stop(20.0)
        bars = check_bars(client, keys, tapes, measure_to_ms)
        written = written_at(client, keys)
        client.close()

    first_arrival: dict[tuple[str, int], int] = {}
    revised_forecasts = 0  # forecasts made again from an amended bar (payload ``revision``)
    for line in arrivals.read_text(encoding="utf-8").splitlines():
        arrival, topic, open_ms, revision = json.loads(line)
        revised_forecasts += revision > 0
        key = (topic, open_ms)
        # The latency is the first forecast's: a revision follows it.
        first_arrival[key] = min(arrival, first_arrival.get(key, arrival))
    kind_of_topic = {s.replace("/", "-"): kind for s, (_p, kind) in tapes.items()}
    latencies: dict[str, list[int]] = {"liquid": [], "quiet": []}
    for (topic, open_ms), arrival in first_arrival.items():
        # The forecast for the bar opening at open_ms follows the close of the bar ending there.
        if not measure_from_ms <= open_ms <= measure_to_ms:
            continue
        kind = kind_of_topic[topic.split("/")[-3]]
        latencies[kind].append(arrival + offset_ms - open_ms)

    def per_class(kind: str) -> dict[str, Any]:
        feeds = [h for s, h in health.items() if tapes[s][1] == kind]

        def total(name: str) -> int:
            return sum(int(h.get(name) or 0) for h in feeds)

        return {
            "symbols": len(feeds),
            "bar_end_to_forecast": percentiles(latencies[kind]),
            "closed_by": {p: total(f"closed_by_{p}") for p in ("trade", "liveness", "rest")},
            # The streamer's part: bar end to close (each feed's own figures over its last bars).
            "streamer_close_delay_p50_ms_median": statistics.median(
                [int(h.get("close_delay_p50_ms") or 0) for h in feeds] or [0]),
            "streamer_close_delay_p99_ms_max": max((int(h.get("close_delay_p99_ms") or 0) for h in feeds), default=0),
            "streamer_close_delay_max_ms": max((int(h.get("close_delay_max_ms") or 0) for h in feeds), default=0),
            "delivery_p99_ms_max": max((int(h.get("delivery_p99_ms") or 0) for h in feeds), default=0),
            "delivery_max_ms_max": max((int(h.get("delivery_max_ms") or 0) for h in feeds), default=0),
            # The grace the closing proofs used at the end (exchanges[].grace: auto moves it).
            "grace_ms_at_end": sorted({int(h.get("grace_ms") or 0) for h in feeds}),
            "grace_auto_at_end": sorted({int(h.get("grace_auto") or 0) for h in feeds}),
            "watchdog_reconnects": total("watchdog_timeouts"),
            "reconnects": total("reconnects"),
            "stalls": total("stalls"),
            "rest_checks": total("rest_checks"),
            "late": total("late"),
            # Trades for a recently closed bar added to it, and the bar revisions written (streamer/bar_revisions.py).
            "amended": total("amended"),
            "bars_amended": total("bars_amended"),
            "grace_raised_at_end": sorted({int(h.get("grace_raised") or 0) for h in feeds}),
        }

    forecast_at = {(topic.split("/")[-3], open_ms): arrival for (topic, open_ms), arrival in first_arrival.items()}
    breakdown = decompose(tapes, written, forecast_at, offset_ms, measure_from_ms, measure_to_ms)
    per_minute = weights.per_minute(started_wall)
    after_start = weights.per_minute(started_wall + args.warmup_s)
    return {
        "benchmark": "close_latency",
        "minutes_measured": args.minutes,
        "warmup_s": args.warmup_s,
        "grace": args.grace,
        "exchange_grace": args.exchange_grace,
        "liquid_source": args.liquid_source,
        "symbols_per_connection": args.symbols_per_connection,  # None: the streamer's default
        "read_hold": args.read_hold,  # None: the streamer's default
        "websocket_connections_opened": exchange_limits["websocket"]["attempts_total"],
        "exchange_offset_ms": offset_ms,
        "clock_read_rtt_ms": rtt_ms,
        "liquid": per_class("liquid"),
        "quiet": per_class("quiet"),
        "liquid_breakdown": breakdown,
        "rest_weight_per_minute": per_minute,
        "rest_weight_per_minute_after_warmup_max": max(after_start, default=None),
        "rest_weight_limit": 6000,
        "exchange_limits": exchange_limits,
        "bars": bars,
        "revised_forecasts_at_subscriber": revised_forecasts,
        "cpu_s": services_cpu,
        "load_start": load_start,
        "load_end": load_end,
        "logs": str(logs),
    }


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--subscriber":
        return run_subscriber(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="measured minutes after the warm-up")
    parser.add_argument("--warmup-s", type=float, default=90.0)
    parser.add_argument("--liquid", type=int, default=10)
    parser.add_argument("--quiet", type=int, default=90)
    parser.add_argument("--grace", default="2s", help="bars.grace")
    parser.add_argument("--exchange-grace", default=None,
                        help="exchanges[].grace: a duration or auto (absent: the default, auto)")
    parser.add_argument("--liquid-source", default="btc", choices=["btc", "eth", "btc+eth"])
    parser.add_argument("--symbols-per-connection", type=int, default=None,
                        help="streamer.symbols_per_connection (absent: the default; 0: ccxt's round robin)")
    parser.add_argument("--read-hold", default=None, type=duration_setting, metavar="DURATION",
                        help="streamer.read_hold, e.g. 0 (every frame read as it comes) or 25ms (absent: the default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args)
    text = json.dumps(result, indent=None if args.json else 2)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
