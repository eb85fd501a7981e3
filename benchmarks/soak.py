"""Soak benchmark: the whole pipeline for N minutes of looped real trades with faults on.

    .venv/bin/python benchmarks/soak.py --json --minutes 2

Every part is a real process of its own, as deployed: a private ``redis-server`` and
``mosquitto`` on free ports (a unique key and topic prefix all the same), ``volcast replay``
looping three real trade files (tests/data: XRP/ETH 2.5 days, BTC/USDT 46 s, ETH/USDT 3.5 min)
at ``--speed`` with faults (dropped connections, duplicates, reordering, broken frames, REST
errors, a silent spell), ``volcast stream``, two ``volcast forecast`` (one consumer group, two
consumer names), ``volcast refit`` on a short schedule with a tiny model, and an MQTT subscriber
(benchmarks/soak_subscriber.py). A service that exits is a crash (exit code and last log lines
reported) and is started again, as compose's ``restart: unless-stopped`` would, except the replay
(a new one would send another timeline).

Every ``--sample-s`` it records each process's RSS, Redis ``used_memory``, the events stream's
pending list (XPENDING of the group: delivered, not yet acknowledged; per consumer, and how long
its oldest event has waited) and lag (not yet delivered), and checks every bar the streamer has
written since the last sample against the reference (benchmarks/soak_reference.py: the trades
the replay sent, looping included, aggregated offline with the aggregator ``volcast bars`` uses).
``complete`` and ``backfilled`` bars must equal it field for field; ``gap`` bars are counted
apart; bars must be contiguous. At the end it counts the events each forecaster claimed from the
other (its log): with both alive, an event is claimed only after waiting
``forecaster.claim_idle`` on a worker.

RSS "start" is read after the warm-up (the first ``--warmup-s``: imports, the bar history
filling up to ``bars.retention``; the first model comes after 70 to 110 s, so in runs under 5
minutes it is loaded after the warm-up: ``first_model_s``), "end" just before the services are
stopped. Redis memory rises until its streams reach their caps (events 100,000, predictions
10,000 per feed, bars ``bars.retention``): the events stream's takes about 18 minutes at 1800x.
There is no baseline to take a ratio against: the figures are absolute (crashes, inexact bars,
growth), and the load of the machine is printed beside them (``uptime``). Progress goes to
stderr; with ``--json`` one JSON object goes to stdout.

Speed: at 1800 a 1-minute bar closes every 33 ms per feed, the XRP/ETH tape (2.5 days) plays
in about 2 minutes, and each loop then jumps the replay clock over the idle hours to the next
pass, so every feed closes hundreds of empty bars at once. The bars history is kept 2 days
(``--retention``): full within 2 minutes, so Redis memory can level off in a short soak, and long
enough that no bar is trimmed before it is checked.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import yaml
from report import print_result

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from soak_processes import Crash, Service, clean_env, wait_for_port  # noqa: E402
from soak_reference import ReferenceBars, replay_timeline  # noqa: E402

from streamer.aggregator import AMEND_BARS  # noqa: E402
from streamer.simulator.tape import Tape, load_tapes  # noqa: E402
from volcast.bar import Bar  # noqa: E402
from volcast.keys import Feed, RedisKeys, forecast_topic_filter  # noqa: E402

DATA = ROOT / "tests" / "data"
TRADE_FILES: tuple[tuple[Path, str], ...] = (
    (DATA / "binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz", "XRP/ETH"),
    (DATA / "binance_BTCUSDT_trades_2021-01-08_000000-000046.csv.gz", "BTC/USDT"),
    (DATA / "unknown-exchange_ETHUSDT_trades_2023-02-02_0920.csv.gz", "ETH/USDT"),
)
# Every simulator fault, each often enough to happen several times in two minutes: the
# connections drop every 20 s, about one frame in 1000 is broken (half the kinds stall ccxt's
# reader until the watchdog), 10% of REST calls fail, and the feed goes silent for 5 s once.
DEFAULT_FAULTS = ("drop_every_s=20,duplicate_rate=0.01,reorder_window=4,malformed_rate=0.001,"
                  "rest_error_rate=0.1,rest_error_status=503,silent_after_s=45,silent_for_s=5")
INTERVAL_MS = 60_000
GROUP = "soak"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def volcast(*args: str) -> list[str]:
    return [sys.executable, "-m", "volcast.cli", *args]


def service_config(args: argparse.Namespace, *, replay_port: int, redis_port: int, mqtt_port: int,
                   prefix: str, model_dir: Path) -> dict[str, Any]:
    """The services' config.yml: the replay as the exchange, tiny model settings so that a refit
    takes seconds on a shared 2-core machine."""
    return {
        "exchanges": [{
            "id": "binance",
            "symbols": [symbol for _, symbol in TRADE_FILES],
            "options": {"fetchMarkets": {"types": ["spot"]}},
            "urls": {"api": {"public": f"http://127.0.0.1:{replay_port}/api/v3",
                             "ws": {"spot": f"ws://127.0.0.1:{replay_port}/stream/ws"}}},
        }],
        "bars": {"interval": "1m", "grace": "2s", "retention": args.retention, "open_bar_update": "1s"},
        # The first backfill reaches 6 h of replay time back (12 s at 1800x; the default 1 h is 2 s):
        # the streamer starts after the replay and still gets BTC/USDT's 46 s tape of the first pass.
        "streamer": {"max_backfill": "6h"},
        "redis": {"url": f"redis://127.0.0.1:{redis_port}/0", "key_prefix": prefix},
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "topic_prefix": prefix},
        "model": {"look_back": 30, "hidden": 8},
        # The lstm trains on a day of bars plus look_back at least: 1470 after the 120 held back.
        "training": {"epochs": 2, "patience": 0, "max_bars": 2000},
        "refit": {"every": args.refit_every, "model_dir": str(model_dir), "keep": 3, "holdout_bars": 120,
                  "min_bars": 1700},
        "forecaster": {"group": GROUP},
    }


def dead_letter_key(keys: RedisKeys) -> str | None:
    """The dead-letter stream's key, if volcast/keys.py has a method for it yet."""
    for name in dir(keys):
        if "dead" not in name.lower() or name.startswith("_"):
            continue
        method = getattr(keys, name)
        if not callable(method):
            continue
        params = [p for p in inspect.signature(method).parameters.values() if p.default is p.empty]
        if not params:
            return str(method())
        if len(params) == 1:
            return str(method(INTERVAL_MS))
    return None


class Monitor:
    """What the soak samples from Redis and checks, tick by tick."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, feeds: list[Feed]) -> None:
        self.redis = client
        self.keys = keys
        self.feeds = feeds
        self.stream = keys.bar_events(INTERVAL_MS)
        self.memory: list[tuple[float, float]] = []
        self.pending: list[tuple[float, int]] = []
        self.pending_idle: list[tuple[float, float]] = []
        self.lag: list[tuple[float, int]] = []
        self.references: dict[Feed, ReferenceBars] = {}
        self._last_id: dict[Feed, str] = {}
        self.refits: dict[str, tuple[str, str]] = {}
        self.first_model_s: float | None = None
        self.by_consumer: dict[str, int] = {}

    def used_memory_mb(self) -> float:
        info: Any = self.redis.info("memory")
        return float(info["used_memory"]) / 2**20

    def group_state(self) -> tuple[int, float, int]:
        """(pending, seconds since the oldest pending event was delivered, lag) of the forecasters'
        group; zeros before it exists."""
        try:
            summary: Any = self.redis.xpending(self.stream, GROUP)
            oldest: Any = self.redis.xpending_range(self.stream, GROUP, min="-", max="+", count=1)
            groups: Any = self.redis.xinfo_groups(self.stream)
        except redis.ResponseError:  # no stream or no group yet
            return 0, 0.0, 0
        idle_s = oldest[0]["time_since_delivered"] / 1000 if oldest else 0.0
        lag = next((g.get("lag") for g in groups if g["name"] in (GROUP, GROUP.encode())), 0)
        self.by_consumer = {c["name"].decode(): int(c["pending"]) for c in summary.get("consumers") or []}
        return int(summary["pending"]), idle_s, int(lag or 0)

    def sample(self, at_s: float) -> None:
        at = round(at_s, 1)
        self.memory.append((at, round(self.used_memory_mb(), 2)))
        pending, idle_s, lag = self.group_state()
        self.pending.append((at, pending))
        self.pending_idle.append((at, round(idle_s, 1)))
        self.lag.append((at, lag))
        if self.first_model_s is None and self.redis.hget(self.keys.model(), "version"):
            self.first_model_s = at
        refit: Any = self.redis.hgetall(self.keys.refit())
        if refit.get(b"last_run_ms") and refit.get(b"finished_ms"):
            self.refits[refit[b"last_run_ms"].decode()] = (refit[b"result"].decode(), refit[b"message"].decode())

    def check_bars(self, rest_url: str, tapes: list[Tape], *, final: bool = False) -> None:
        """Compare every bar written since the last call with the reference. Each bar is read once:
        a feed's newest ``AMEND_BARS`` bars can still be amended (streamer/bar_revisions.py), so
        they wait for a later call, or for the ``final`` one once the streamer has stopped."""
        if not self.references:
            timeline = replay_timeline(rest_url, tapes)
            if timeline is None:
                return  # bars wait in Redis (retention 2d) until the reference can be built
            for index, (tape, feed) in enumerate(zip(tapes, self.feeds, strict=True)):
                self.references[feed] = ReferenceBars(tape, timeline, index, INTERVAL_MS)
        for feed in self.feeds:
            while True:
                start = self._last_id.get(feed)
                entries: Any = self.redis.xrange(self.keys.bars(feed), min=f"({start}" if start else "-",
                                                 count=5000)
                if not final and len(entries) < 5000:  # the last page: hold its newest bars back
                    entries = entries[:-AMEND_BARS]
                if not entries:
                    break
                self.references[feed].compare([Bar.from_fields(fields) for _, fields in entries])
                self._last_id[feed] = entries[-1][0].decode()

    def bars_summary(self) -> dict[str, Any]:
        per_feed: dict[str, Any] = {}
        totals = dict.fromkeys(("complete", "backfilled", "gap", "inexact_complete", "inexact_backfilled",
                                "missing"), 0)
        examples: list[dict[str, Any]] = []
        for feed, reference in self.references.items():
            check = reference.check
            row = {name: getattr(check, name) for name in totals}
            per_feed[feed.symbol] = row
            for name in totals:
                totals[name] += row[name]
            examples += [{"symbol": feed.symbol, "open_time_ms": m.open_time_ms, "status": m.status,
                          "fields": m.fields} for m in check.examples]
        return {"checked": totals["complete"] + totals["backfilled"] + totals["gap"], **totals,
                "inexact": totals["inexact_complete"] + totals["inexact_backfilled"],
                "per_feed": per_feed, "inexact_examples": examples[:10]}

    def dead_letters(self) -> int | str:
        key = dead_letter_key(self.keys)
        if key is None:
            return "not available"
        kind: Any = self.redis.type(key)
        if kind in (b"none", "none"):
            return 0
        if kind in (b"stream", "stream"):
            return int(self.redis.xlen(key))
        return f"key {key} is a {kind!r}, not a stream"

    def events_written(self) -> int:
        try:
            info: Any = self.redis.xinfo_stream(self.stream)
        except redis.ResponseError:
            return 0
        return int(info.get("entries-added", info.get("length", 0)))

    def health(self) -> dict[str, dict[str, int]]:
        fields = ("trades", "duplicates", "late", "malformed", "gaps", "gap_bars", "reconnects",
                  "watchdog_timeouts", "backfilled_trades", "bars_closed", "dropped_bars")
        out: dict[str, dict[str, int]] = {}
        for feed in self.feeds:
            raw: Any = self.redis.hgetall(self.keys.health(feed))
            out[feed.symbol] = {f: int(raw[f.encode()]) for f in fields if f.encode() in raw}
        return out


def progress_line(at_s: float, monitor: Monitor, subscriber: dict[str, Any], crashes: int,
                  rss: dict[str, float | None]) -> str:
    bars = monitor.bars_summary()
    held = ",".join(f"{k}:{v}" for k, v in sorted(monitor.by_consumer.items()))
    memory = " ".join(f"{name} {'-' if v is None else f'{v:.0f}'}" for name, v in rss.items())
    return (f"[{at_s:5.0f}s] pending {monitor.pending[-1][1]} ({held}; oldest {monitor.pending_idle[-1][1]:.0f}s) "
            f"lag {monitor.lag[-1][1]} | redis {monitor.memory[-1][1]:.1f} MB | predictions "
            f"{subscriber.get('messages', 0)} | bars {bars['checked']} checked, {bars['inexact']} inexact, "
            f"{bars['gap']} gap | crashes {crashes} | RSS MB {memory}")


def replay_loops(log_path: Path | None) -> int:
    """Loops the replay reports in its last progress line."""
    if log_path is None:
        return 0
    found = re.findall(r"\((\d+) loops\)", log_path.read_text(errors="replace"))
    return int(found[-1]) if found else 0


def events_claimed(service: Service) -> int:
    """Events this worker took over from the other one (its log, every start): an event is claimed
    once it has been pending ``forecaster.claim_idle`` on a worker, the sign of a dead or stuck one."""
    total = 0
    for start in range(1, service.starts + 1):
        path = service.log_dir / f"{service.name}.{start}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        total += sum(int(n) for n in re.findall(r"claimed (\d+) pending events of other consumers", text))
    return total


@contextlib.contextmanager
def services_stopped(services: list[Service]) -> Iterator[None]:
    """Whatever happens, every process started here is stopped (in reverse order) on the way out."""
    try:
        yield
    finally:
        for service in reversed(services):
            with contextlib.suppress(Exception):
                service.stop(10.0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_s = args.minutes * 60.0
    warmup_s = args.warmup_s if args.warmup_s is not None else min(max(60.0, 0.2 * run_s), run_s / 2)
    work = Path(tempfile.mkdtemp(prefix="volcast-soak-"))
    logs = work / "logs"
    logs.mkdir()
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    env = clean_env(VOLCAST_BINANCE_API_KEY="soak")  # historicalTrades (the backfill) needs a key in ccxt
    services: list[Service] = []
    load_start = uptime()
    log(f"soak: {args.minutes:g} min, warm-up {warmup_s:.0f} s, logs in {logs}; {load_start}")

    def add(name: str, command: list[str], *, restartable: bool = True) -> Service:
        service = Service(name, command, logs, env, ROOT, restartable=restartable)
        services.append(service)
        service.start()
        return service

    with services_stopped(services):
        redis_port = free_port()
        redis_server = add("redis", [REDIS_SERVER, "--port", str(redis_port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no"], restartable=False)
        wait_for_port(redis_port, redis_server)
        if Path(MOSQUITTO).exists():
            mqtt_port = free_port()
            conf = work / "mosquitto.conf"
            # As deploy/mosquitto.conf: no QoS 1 queue limit to drop bursts, TCP_NODELAY.
            conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                            "max_queued_messages 100000\npersistence false\n")
            broker = add("mosquitto", [MOSQUITTO, "-c", str(conf)], restartable=False)
            wait_for_port(mqtt_port, broker)
        else:
            mqtt_port = 1883  # the shared broker; the topic prefix is unique all the same

        replay_port = free_port()
        replay_args = ["replay", "--port", str(replay_port), "--loop", "--speed", str(args.speed),
                       "--seed", str(args.seed), "--faults", args.faults]
        for path, symbol in TRADE_FILES:
            replay_args += ["--trades", str(path), "--symbol", symbol]
        replay = add("replay", volcast(*replay_args), restartable=False)
        wait_for_port(replay_port, replay)
        rest_url = f"http://127.0.0.1:{replay_port}/api/v3"

        config = work / "config.yml"
        config.write_text(yaml.safe_dump(service_config(args, replay_port=replay_port, redis_port=redis_port,
                                                        mqtt_port=mqtt_port, prefix=prefix,
                                                        model_dir=work / "models")))
        add("stream", volcast("stream", "--config", str(config)))
        add("forecast-a", volcast("forecast", "--config", str(config), "--consumer", "soak-a"))
        add("forecast-b", volcast("forecast", "--config", str(config), "--consumer", "soak-b"))
        add("refit", volcast("refit", "--config", str(config)))
        stats_file = work / "subscriber.json"
        add("subscriber", [sys.executable, str(HERE / "soak_subscriber.py"), "--port", str(mqtt_port),
                           "--topic", forecast_topic_filter(prefix), "--out", str(stats_file)])

        tapes = load_tapes([p for p, _ in TRADE_FILES], [s for _, s in TRADE_FILES])
        feeds = [Feed("binance", symbol, INTERVAL_MS) for _, symbol in TRADE_FILES]
        keys = RedisKeys(prefix)
        client = redis.Redis(port=redis_port)
        monitor = Monitor(client, keys, feeds)
        crashes: list[Crash] = []
        started = time.monotonic()
        warm = False
        next_tick = started
        while True:
            now = time.monotonic()
            at_s = now - started
            for service in services:
                crash = service.exited(at_s)
                if crash is None:
                    continue
                crashes.append(crash)
                log(f"soak: CRASH {service.name} exited {crash.exit_code} at {at_s:.0f} s; last lines:\n  "
                    + "\n  ".join(crash.stderr_tail[-8:]))
                if service.restartable and args.restart:
                    service.start()
            rss = {s.name: s.rss() for s in services}
            if not warm and at_s >= warmup_s:
                warm = True
                for service in services:
                    service.rss_start_mb = rss[service.name]
            try:
                monitor.sample(at_s)
                monitor.check_bars(rest_url, tapes)
            except (redis.RedisError, RuntimeError) as exc:  # Redis or the replay down: a crash, reported above
                log(f"soak: sample at {at_s:.0f} s failed: {exc!r}")
            if monitor.pending:
                log(progress_line(at_s, monitor, _read_json(stats_file), len(crashes), rss))
            if at_s >= run_s:
                break
            # A slow tick delays the next one rather than bunching samples up.
            next_tick = max(next_tick + args.sample_s, time.monotonic())
            time.sleep(max(0.0, min(next_tick, started + run_s) - time.monotonic()))

        for service in services:
            service.rss_end_mb = service.rss()
        health = monitor.health()
        events_written = monitor.events_written()
        dead_letters = monitor.dead_letters()
        model: Any = client.hgetall(keys.model())
        load_end = uptime()
        # Stop the producers first, so that what they flush on the way out is checked too.
        for name in ("stream", "forecast-a", "forecast-b", "refit", "subscriber", "replay"):
            service = next(s for s in services if s.name == name)
            code = service.stop(30.0)
            log(f"soak: {name} stopped, exit code {code}")
        monitor.check_bars(rest_url, tapes, final=True)
        subscriber = _read_json(stats_file)
        client.close()

    bars = monitor.bars_summary()
    pending_values = [p for _, p in monitor.pending]
    after_warmup = [p for t, p in monitor.pending if t >= warmup_s] or [0]
    memory_after = [m for t, m in monitor.memory if t >= warmup_s]
    results = dict.fromkeys(("promoted", "kept", "skipped", "failed"), 0)
    for result, _message in monitor.refits.values():
        results[result] = results.get(result, 0) + 1
    out: dict[str, Any] = {
        "minutes": args.minutes,
        "run_s": round(run_s, 1),
        "warmup_s": round(warmup_s, 1),
        "speed": args.speed,
        "faults": args.faults,
        "symbols": [s for _, s in TRADE_FILES],
        "replay_loops": replay_loops(next(s for s in services if s.name == "replay").log),
        "uptime_start": load_start,
        "uptime_end": load_end,
        "crashes": len(crashes),
        "crash_details": [c.to_json() for c in crashes],
        "unclean_shutdowns": {s.name: s.shutdown_code for s in services if s.shutdown_code not in (0, None)},
        "processes": {s.name: s.summary() for s in services},
        "rss_growth_max_pct": max((v for s in services if s.name in ("stream", "forecast-a", "forecast-b")
                                   for v in [s.summary()["rss_growth_pct"]] if v is not None), default=None),
        "redis_used_memory_mb": monitor.memory,
        "redis_used_memory_mb_after_warmup": [memory_after[0], memory_after[-1]] if memory_after else None,
        "pending": monitor.pending,
        "pending_max": max(pending_values, default=0),
        "pending_max_after_warmup": max(after_warmup),
        "pending_end": pending_values[-1] if pending_values else 0,
        "pending_end_by_consumer": monitor.by_consumer,
        "pending_oldest_s": monitor.pending_idle,
        "pending_oldest_max_s_after_warmup": max((i for t, i in monitor.pending_idle if t >= warmup_s), default=0.0),
        "events_claimed": {s.name: events_claimed(s) for s in services if s.name.startswith("forecast")},
        "lag_max": max((lag for _, lag in monitor.lag), default=0),
        "lag_max_after_warmup": max((lag for t, lag in monitor.lag if t >= warmup_s), default=0),
        "lag_end": monitor.lag[-1][1] if monitor.lag else 0,
        "events_written": events_written,
        "bars": bars,
        "inexact_bars": bars["inexact"],
        "dead_letters": dead_letters,
        "predictions": subscriber.get("messages", 0),
        "predictions_distinct": subscriber.get("distinct", 0),
        "predictions_repeated": subscriber.get("repeats", 0),
        "predictions_bad_payload": subscriber.get("bad_payloads", 0),
        "predictions_by_model": subscriber.get("by_model", {}),
        "first_model_s": monitor.first_model_s,
        "model_served": {k.decode(): v.decode() for k, v in model.items() if k in (b"name", b"version")},
        "refits": results,
        "refit_messages": sorted({m for _r, m in monitor.refits.values()})[-3:],
        "feeds_health": health,
        "logs": str(logs),
    }
    if not args.keep_logs and not crashes:
        shutil.rmtree(work, ignore_errors=True)
        out["logs"] = None
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run (default 30)")
    parser.add_argument("--speed", type=float, default=1800.0, help="replay speed (default 1800)")
    parser.add_argument("--faults", default=DEFAULT_FAULTS, help=f"the replay's faults (default {DEFAULT_FAULTS})")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault injection")
    parser.add_argument("--retention", default="2d", help="bars.retention of the services (default 2d)")
    parser.add_argument("--refit-every", default="30s", help="refit.every (default 30s)")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="seconds before RSS 'start' is read (default 20%% of the run, 60..run/2)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--no-restart", dest="restart", action="store_false",
                        help="leave a crashed service down instead of starting it again")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs (always kept after a crash)")
    args = parser.parse_args()
    if not (args.minutes > 0 and math.isfinite(args.minutes)):
        parser.error("--minutes must be > 0")
    if not Path(REDIS_SERVER).exists():
        parser.error("needs redis-server (apt-get install redis-server)")
    result = run(args)
    print_result(result, args.json, 32)
    return 0


if __name__ == "__main__":
    sys.exit(main())
