"""Cold start: from a fresh `volcast run` to the first LSTM forecast at an MQTT subscriber.

`volcast replay` serves 10 symbols: 30 days of real 1-minute bars each as klines (distinct
30-day windows of the shared Binance USD-M bar files: AVAX 2023-09, FIL 2023-04..06 and
2023-08..11, NEAR 2023-04..05), and live trades at real speed (the real XRP/ETH recording of
tests/data, one copy per symbol) starting where each history ends. `volcast run` (streamer,
forecaster, refit child) starts on an empty Redis key prefix and an empty model store; a
subscriber in this process waits for the first forecast whose model is not a baseline.

Prints one JSON object: ``symbols``, ``history_bars`` (loaded, all feeds), ``seconds_to_history``
(every feed's history in Redis), ``seconds_to_first_model`` (a version promoted),
``seconds_to_first_lstm_forecast``, each from the launch of `volcast run`; the goal (300 s on 2
cores), the training settings used, and the load average. Uses the Redis and Mosquitto of
config.yml's defaults (127.0.0.1), under a key and topic prefix of its own, removed afterwards.

    PYTHONPATH=. .venv/bin/python benchmarks/coldstart.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from report import print_result

ROOT = Path(__file__).resolve().parent.parent
SHARED_BARS = ROOT.parent / "shared" / "data" / "bars"
TRADES = ROOT / "tests" / "data" / "binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz"
DAY_BARS = 1440
# Files of the shared data with at least 30 days of 1-minute bars, each starting at 00:00 UTC.
SOURCES = (
    ("AVAX", "binance-usdm_AVAXUSDT_1m_2023-09.csv.gz"),
    ("FIL", "binance-usdm_FILUSDT_1m_2023-04_2023-06.csv.gz"),
    ("FIL", "binance-usdm_FILUSDT_1m_2023-08_2023-11.csv.gz"),
    ("NEAR", "binance-usdm_NEARUSDT_1m_2023-04_2023-05.csv.gz"),
    ("NEAR", "binance-usdm_NEARUSDT_1m_2023-08_2023-10.csv.gz"),
)
GOAL_S = 300.0


def log(message: str) -> None:
    print(f"[coldstart {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_windows(out: Path, symbols: int, days: int) -> list[tuple[str, Path]]:
    """Distinct ``days``-day windows (00:00 to 23:59 UTC) of the shared files, one file per symbol."""
    made: list[tuple[str, Path]] = []
    counts: dict[str, int] = {}
    size = days * DAY_BARS
    for base, name in SOURCES:
        with gzip.open(SHARED_BARS / name, "rt") as handle:
            header, *rows = handle.read().splitlines()
        for start in range(0, len(rows) - size + 1, size):
            if len(made) == symbols:
                return made
            counts[base] = counts.get(base, 0) + 1
            symbol = f"{base}{counts[base]}/USDT"
            path = out / f"binance_{base}{counts[base]}USDT_1m_window.csv.gz"
            with gzip.open(path, "wt") as handle:
                handle.write("\n".join([header, *rows[start:start + size]]) + "\n")
            made.append((symbol, path))
    if len(made) < symbols:
        raise SystemExit(f"only {len(made)} windows of {days} days in {SHARED_BARS}")
    return made


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config(args: argparse.Namespace, port: int, symbols: list[str], tag: str, model_dir: Path) -> dict[str, Any]:
    return {
        "exchanges": [{
            "id": "binance",
            "symbols": symbols,
            "options": {"tradesLimit": 1_000_000, "fetchMarkets": {"types": ["spot"]}},
            "urls": {"api": {"public": f"http://127.0.0.1:{port}/api/v3",
                             "ws": {"spot": f"ws://127.0.0.1:{port}/stream/ws"}}},
        }],
        # Redis must keep the month that history loads (the default keeps 7 days).
        "bars": {"interval": "1m", "retention": f"{args.days + 1}d"},
        "history": {"days": args.days},
        "redis": {"key_prefix": f"coldstart-{tag}"},
        "mqtt": {"topic_prefix": f"coldstart-{tag}"},
        "training": {"epochs": args.epochs, "max_bars": args.max_bars, "threads": 1},
        "refit": {"model_dir": str(model_dir), "threads": 1},
        "forecaster": {"threads": 1},
    }


async def watch(settings: Any, started: float, timeout_s: float) -> dict[str, Any]:
    """Poll Redis and listen to MQTT until the first non-baseline forecast (or the timeout)."""
    import aiomqtt

    from volcast.connections import mqtt_client, redis_client
    from volcast.keys import Feed, RedisKeys, forecast_topic_filter

    keys = RedisKeys(settings.redis.key_prefix)
    feeds = [Feed(ex, sym, settings.bars.interval) for ex, sym in settings.feeds()]
    out: dict[str, Any] = {"seconds_to_history": None, "seconds_to_first_model": None,
                           "seconds_to_first_forecast": None, "seconds_to_first_lstm_forecast": None}
    done = asyncio.Event()

    async def listen(client: aiomqtt.Client) -> None:
        await client.subscribe(forecast_topic_filter(settings.mqtt.topic_prefix), qos=1)
        async for message in client.messages:
            if not isinstance(message.payload, bytes) or not message.payload:
                continue
            payload = json.loads(message.payload)
            elapsed = round(time.monotonic() - started, 1)
            if out["seconds_to_first_forecast"] is None:
                out["seconds_to_first_forecast"] = elapsed
            if not payload["model"]["baseline"]:
                out["seconds_to_first_lstm_forecast"] = elapsed
                out["first_lstm_forecast"] = {k: payload[k] for k in ("symbol", "open_time_ms", "volume", "model")}
                done.set()
                return

    client_id = f"cs-{uuid.uuid4().hex[:8]}"
    async with redis_client(settings.redis) as redis, mqtt_client(settings.mqtt, client_id=client_id) as mq:
        listener = asyncio.create_task(listen(mq))
        try:
            deadline = started + timeout_s
            while not done.is_set() and time.monotonic() < deadline:
                pipe = redis.pipeline(transaction=False)
                for feed in feeds:
                    pipe.hmget(keys.health(feed), "history_state", "history_bars")
                pipe.hgetall(keys.model())
                pipe.hgetall(keys.refit())
                *states, model, refit = await pipe.execute()
                elapsed = round(time.monotonic() - started, 1)
                finished = [s for s in states if s[0] in (b"loaded", b"failed", b"kept", b"unsupported")]
                if out["seconds_to_history"] is None and len(finished) == len(feeds):
                    out["seconds_to_history"] = elapsed
                    out["history_bars"] = sum(int(s[1] or 0) for s in states)
                    out["history_states"] = sorted({s[0].decode() for s in states})
                    log(f"history in: {out['history_bars']} bars at {elapsed} s")
                if out["seconds_to_first_model"] is None and model:
                    out["seconds_to_first_model"] = elapsed
                    out["model_version"] = model[b"version"].decode()
                    log(f"model {out['model_version']} promoted at {elapsed} s")
                if refit:
                    out["refit_message"] = refit.get(b"message", b"").decode()
                    if refit.get(b"finished_ms") and refit.get(b"last_run_ms"):
                        out["refit_seconds"] = (int(refit[b"finished_ms"]) - int(refit[b"last_run_ms"])) / 1000
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.25)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await listener
    return out


async def clean(settings: Any) -> None:
    """The prefix's keys and retained forecasts go."""
    from volcast.connections import mqtt_client, redis_client
    from volcast.keys import Feed, forecast_topic

    async with redis_client(settings.redis) as redis:
        found = [k async for k in redis.scan_iter(match=f"{settings.redis.key_prefix}:*", count=1000)]
        if found:
            await redis.delete(*found)
    async with mqtt_client(settings.mqtt, client_id=f"cs-clean-{uuid.uuid4().hex[:8]}") as client:
        for exchange, symbol in settings.feeds():
            topic = forecast_topic(settings.mqtt.topic_prefix, Feed(exchange, symbol, settings.bars.interval))
            await client.publish(topic, b"", qos=1, retain=True)


def stop(process: subprocess.Popen[bytes], name: str) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop on SIGINT: killed")
            process.kill()
            process.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from volcast.settings import settings_from_mapping

    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp_name:
        tmp = Path(tmp_name)
        windows = write_windows(tmp, args.symbols, args.days)
        symbols = [s for s, _ in windows]
        port = free_port()
        replay_cmd = [sys.executable, "-m", "volcast.cli", "replay", "--port", str(port), "--speed", "1"]
        for symbol, path in windows:
            replay_cmd += ["--trades", str(TRADES), "--symbol", symbol, "--history", f"{symbol}={path}"]
        raw = config(args, port, symbols, tag, tmp / "models")
        settings = settings_from_mapping(raw)
        config_path = tmp / "config.yml"
        config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        env = {**os.environ, "VOLCAST_BINANCE_API_KEY": "replay", "PYTHONPATH": str(ROOT)}
        logs = {name: (tmp / f"{name}.log").open("wb") for name in ("replay", "run")}
        replay = subprocess.Popen(replay_cmd, stdout=logs["replay"], stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        run_process: subprocess.Popen[bytes] | None = None
        load_before = os.getloadavg()
        try:
            deadline = time.monotonic() + 120
            while b"history" not in (tmp / "replay.log").read_bytes():  # it prints its URLs once serving
                if replay.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"volcast replay did not start:\n{(tmp / 'replay.log').read_text()[-2000:]}")
                time.sleep(0.1)
            log(f"replay serving {len(symbols)} symbols with {args.days} days of bars each; starting volcast run")
            started = time.monotonic()
            run_process = subprocess.Popen(
                [sys.executable, "-m", "volcast.cli", "run", "--config", str(config_path)],
                stdout=logs["run"], stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )
            result = asyncio.run(watch(settings, started, args.timeout))
            load_after = os.getloadavg()
        finally:
            if run_process is not None:
                stop(run_process, "volcast run")
            stop(replay, "volcast replay")
            for handle in logs.values():
                handle.close()
            if args.keep_logs:
                for name in ("replay", "run"):
                    (Path(args.keep_logs) / f"coldstart-{name}.log").write_bytes((tmp / f"{name}.log").read_bytes())
            asyncio.run(clean(settings))
    lstm = result.get("seconds_to_first_lstm_forecast")
    return {
        "symbols": len(symbols),
        "history_bars": result.get("history_bars"),
        "seconds_to_history": result["seconds_to_history"],
        "seconds_to_first_model": result["seconds_to_first_model"],
        "seconds_to_first_lstm_forecast": lstm,
        "seconds_to_first_forecast": result["seconds_to_first_forecast"],
        "goal_seconds": GOAL_S,
        "met": lstm is not None and lstm <= GOAL_S,
        "history_states": result.get("history_states"),
        "model_version": result.get("model_version"),
        "refit_message": result.get("refit_message"),
        "refit_seconds": result.get("refit_seconds"),
        "first_lstm_forecast": result.get("first_lstm_forecast"),
        "training": raw["training"],
        "days": args.days,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--days", type=int, default=30, help="days of history per symbol (default 30)")
    parser.add_argument("--epochs", type=int, default=2, help="training.epochs of the run (default 2)")
    parser.add_argument("--max-bars", type=int, default=4 * DAY_BARS,
                        help="training.max_bars: recent bars per symbol trained on (default 4 days)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the services' logs here")
    args = parser.parse_args()
    result = run(args)
    print_result(result, args.json, 32)
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
