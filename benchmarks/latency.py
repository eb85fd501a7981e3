"""Bar close -> prediction received by an MQTT subscriber, for 100 and 1000 symbols.

Runs everything real on this machine: Redis (``--redis``), a private Mosquitto on a free port
(TCP_NODELAY, no QoS 1 queue limit), the forecaster as a subprocess (``volcast forecast``)
serving an LSTM of the default shape (hidden 50, look_back 60, trained for one epoch on the real
bars in tests/data: the weights do not matter for speed), and a subscriber in this process.

For each boundary, the bars and bar-closed events of all N symbols are written in one pipeline,
as the streamer does; latency is measured from the moment that pipeline returned (the events
are written) to each prediction's arrival. ``from_write_start`` measures from just before the
pipeline was sent. The baseline, measured in the same run on the same broker, is a bare burst of
N QoS 1 publishes of the same size from one client to the subscriber.

    .venv/bin/python benchmarks/latency.py --json [--symbols 100 1000] [--boundaries 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gzip
import io
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forecaster.estimator import quiet  # noqa: E402
from forecaster.frame import BarFrame  # noqa: E402
from forecaster.model_store import ModelRecord, ModelStore, promote  # noqa: E402
from forecaster.training import train_model  # noqa: E402
from volcast.bar import Bar, BarStatus  # noqa: E402
from volcast.connections import mqtt_client, redis_client  # noqa: E402
from volcast.keys import Feed, RedisKeys, forecast_topic_filter  # noqa: E402
from volcast.settings import Settings, settings_from_mapping  # noqa: E402

DATA = ROOT / "tests" / "data" / "binance-usdm_NEARUSDT_1m_2023-02-01_03.csv.gz"
MINUTE = 60_000
HISTORY = 1500  # the LSTM reads look_back bars plus HAR's day of 1-minute bars


def real_bars() -> list[Bar]:
    text = gzip.decompress(DATA.read_bytes()).decode()
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        close, volume = Decimal(row["close"]), Decimal(row["volume"])
        out.append(Bar(int(row["timestamp_ms"]), Decimal(row["open"]), Decimal(row["high"]), Decimal(row["low"]),
                       close, volume, volume * close, 0, Decimal(0), Decimal(0), close, None, None,
                       BarStatus.COMPLETE))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mosquitto(port: int, workdir: Path) -> Iterator[None]:
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                    "max_queued_messages 1000000\nmax_inflight_messages 0\npersistence false\n")
    process = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            time.sleep(0.01)
        yield
    finally:
        process.terminate()
        process.wait(5)


def raw_settings(port: int, model_dir: Path, redis_url: str, n: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    return {
        "exchanges": [{"id": "binance", "symbols": [f"S{i:04d}/USDT" for i in range(n)]}],
        "redis": {"url": redis_url, "key_prefix": f"bench-{tag}"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "topic_prefix": f"bench-{tag}"},
        "model": {},  # the default shape: hidden 50, look_back 60, all features
        "training": {"epochs": 1, "batch_size": 256, "patience": 0, "max_bars": 3000},
        "refit": {"model_dir": str(model_dir)},
        "forecaster": {"threads": 1},
    }


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.array(values)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 2), "p99_ms": round(float(np.percentile(arr, 99)), 2),
            "max_ms": round(float(arr.max()), 2), "samples": len(values)}


class Subscriber:
    def __init__(self) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self.changed = asyncio.Event()

    async def run(self, client: aiomqtt.Client, topic: str) -> None:
        await client.subscribe(topic, qos=1)
        async for message in client.messages:
            self.arrivals.append((time.perf_counter(), message.payload if isinstance(message.payload, bytes) else b""))
            self.changed.set()

    async def wait(self, count: int, timeout: float = 120.0) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < count:
            self.changed.clear()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.arrivals)} of {count} messages")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)


async def baseline(settings: Settings, n: int, bursts: int, payload: bytes) -> dict[str, float]:
    """A bare burst of n QoS 1 publishes -> subscriber arrival, on the same broker."""
    sub = Subscriber()
    topic = f"{settings.mqtt.topic_prefix}/baseline"
    quiet_log = logging.getLogger("latency.mqtt")
    quiet_log.setLevel(logging.ERROR)
    async with (mqtt_client(settings.mqtt, logger=quiet_log) as listener,
                mqtt_client(settings.mqtt, max_inflight_messages=0, logger=quiet_log) as pub):
        task = asyncio.create_task(sub.run(listener, f"{topic}/#"))
        await asyncio.sleep(0.2)
        latencies: list[float] = []
        for _ in range(bursts):
            start = len(sub.arrivals)
            sent = time.perf_counter()
            await asyncio.gather(*(pub.publish(f"{topic}/{i}", payload, qos=1) for i in range(n)))
            await sub.wait(start + n)
            latencies += [(t - sent) * 1000 for t, _ in sub.arrivals[start:start + n]]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task
    return percentiles(latencies)


async def measure(n: int, boundaries: int, port: int, workdir: Path, redis_url: str, model: Path,
                  log_dir: Path) -> dict[str, Any]:
    raw = raw_settings(port, workdir / f"models-{n}", redis_url, n)
    settings = settings_from_mapping(raw, env={})
    config = workdir / f"config-{n}.yml"
    config.write_text(yaml.safe_dump(raw))
    shutil.copytree(model, settings.refit.model_dir / "1")
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = [Feed("binance", s, MINUTE) for _, s in settings.feeds()]
    bars = real_bars()
    series = [bars[(i * 37) % 1000:] for i in range(n)]  # a different real stretch per symbol
    times = [b.open_time_ms for b in bars]
    log = (log_dir / f"worker-{n}.log").open("wb")
    worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
        [sys.executable, "-m", "volcast.cli", "-v", "forecast", "--config", str(config)],
                              stdout=log, stderr=log, cwd=ROOT)
    sub = Subscriber()
    latency: list[float] = []
    from_start: list[float] = []
    try:
        async with redis_client(settings.redis) as redis:
            await promote(redis, keys, ModelRecord("lstm", "1", {}, 0))
            for lo in range(0, HISTORY, 250):
                pipe = redis.pipeline(transaction=False)
                for i, feed in enumerate(feeds):
                    for j in range(lo, min(lo + 250, HISTORY)):
                        b = series[i][j]
                        pipe.xadd(keys.bars(feed), b.to_fields(), id=f"{times[j]}-0")  # type: ignore[arg-type]
                await pipe.execute()
            async with mqtt_client(settings.mqtt) as client:
                task = asyncio.create_task(sub.run(client, forecast_topic_filter(settings.mqtt.topic_prefix)))
                for step in range(boundaries + 2):  # two warm-up boundaries: model load, first history read
                    j = HISTORY + step
                    pipe = redis.pipeline(transaction=False)
                    for i, feed in enumerate(feeds):
                        b = series[i][j]
                        pipe.xadd(keys.bars(feed), b.to_fields(), id=f"{times[j]}-0")  # type: ignore[arg-type]
                        pipe.xadd(keys.bar_events(MINUTE), {"exchange": feed.exchange, "symbol": feed.symbol,
                                                            "interval": "1m", "open_time_ms": str(times[j]),
                                                            "status": "complete"})
                    before = len(sub.arrivals)
                    started = time.perf_counter()
                    await pipe.execute()
                    written = time.perf_counter()
                    await sub.wait(before + n, timeout=600 if step < 2 else 120)
                    got = sub.arrivals[before:before + n]
                    if step >= 2:
                        assert all(orjson.loads(p)["last_bar_ms"] == times[j] for _, p in got)
                        assert all(orjson.loads(p)["model"]["version"] == "1" for _, p in got)
                        latency += [(t - written) * 1000 for t, _ in got]
                        from_start += [(t - started) * 1000 for t, _ in got]
                    await asyncio.sleep(0.2)
                payload = sub.arrivals[-1][1]
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task
            base = await baseline(settings, n, boundaries, payload)
            prefix_keys = [k async for k in redis.scan_iter(match=f"{settings.redis.key_prefix}:*", count=1000)]
            for lo in range(0, len(prefix_keys), 500):
                await redis.delete(*prefix_keys[lo:lo + 500])
    finally:
        worker.terminate()
        worker.wait(10)
    result = percentiles(latency)
    result["from_write_start"] = percentiles(from_start)
    result["baseline_mqtt_burst"] = base
    result["ratio_p99"] = round(result["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None
    return result


def train_artifact(workdir: Path) -> Path:
    settings = settings_from_mapping(raw_settings(1883, workdir, "redis://127.0.0.1:6379/0", 1), env={})
    frame = BarFrame.from_csv(DATA)
    trained = train_model([("binance:S0000/USDT", frame)], settings.model, settings.training, progress=quiet)
    store = ModelStore(workdir / "trained")
    return store.write("1", lambda d: trained.save(d, "1"), {"name": "lstm"})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--symbols", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--boundaries", type=int, default=20)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the worker logs (debug timings) here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="volcast-latency-") as tmp:
        workdir = Path(tmp)
        model = await asyncio.to_thread(train_artifact, workdir)
        port = free_port()
        results: dict[str, Any] = {}
        with mosquitto(port, workdir):
            for n in args.symbols:
                log_dir = args.log_dir or workdir
                log_dir.mkdir(parents=True, exist_ok=True)
                results[str(n)] = await measure(n, args.boundaries, port, workdir, args.redis, model, log_dir)
                if not args.json:
                    print(n, results[str(n)], file=sys.stderr)
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    asyncio.run(main())
