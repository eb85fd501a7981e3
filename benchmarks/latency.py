"""Bar close -> prediction received by an MQTT subscriber, for 100 and 1000 symbols.

Runs everything real on this machine: Redis (``--redis``), a private Mosquitto on a free port
(TCP_NODELAY, no QoS 1 queue limit), the forecaster as a subprocess (``volcast forecast``)
serving an LSTM of the default shape (hidden 50, look_back 60, trained for one epoch on the real
bars in tests/data: the weights do not matter for speed), and a subscriber in its own process.

For each boundary the bars of all N symbols are closed the way the streamer closes them: its
``BarStore`` writes each bar and its bar-closed event in MULTI/EXEC batches of 500 bars. Latency
is measured from the moment that write returned (every event is in Redis) to each prediction's
arrival at the subscriber; ``from_write_start`` measures from just before the write began.

The subscriber is a minimal MQTT 3.1.1 client on a plain socket, in a process of its own: it
reads whatever the socket holds, takes the clock once per read, splits the packets and answers
each QoS 1 PUBLISH with its PUBACK. So an arrival time is when the bytes reached the subscriber,
not when a client library got round to dispatching the message (aiomqtt's per-message machinery
in the writer's process added up to a few hundred ms per 1000 messages). Both processes read
CLOCK_MONOTONIC, which is one clock for the whole machine.

The baseline, in the same run on the same broker and subscriber: a bare burst of N QoS 1
publishes of the same payload from one paho client (the engine of aiomqtt, the usual Python MQTT
client; the worker publishes on its own connection, forecaster/mqtt_wire.py), measured from
before the first publish to each arrival.

``worker_ms`` is the median, over the measured boundaries, of the worker's own timings per
batch (its debug log): ``read_ms`` events to histories, ``predict_ms`` the forward passes,
``submit_ms`` payloads handed to MQTT, ``record_ms`` the Redis bookkeeping (after the hand-over).
``worker_cpu_ms`` is the median CPU time of the worker process per boundary (every thread,
/proc schedstat), which a loaded machine hardly moves: from the write to the last arrival
(``to_last_arrival``: the critical path, with the PUBACKs read), and the whole boundary with its
bookkeeping and the next one's preparation (``whole_boundary``).

Bands are calibrated (``forecaster.calibrate_bands``, the default): every feed starts with a
calibrator state past its warm-up in Redis, so each payload carries a calibrated band and each
realised bar updates and writes the state, as in a steady live run. ``--calibration-ratio``
measures each size twice in the same run, without and with calibration, and gives the ratios
(``calibration``: p99 and the worker's timings, with / without). ``--metrics-ratio`` measures each
size again with the worker's Prometheus metrics on and scraped every second (``metrics``: p50
and p99 with / without).

    .venv/bin/python benchmarks/latency.py --json [--symbols 100 1000] [--boundaries 20] [--calibration-ratio]
                                          [--metrics-ratio]

The model has the default horizons (60 bars and three cumulative windows at 1m: every payload
carries ``horizons``). ``--horizons-ratio`` also measures, in the same run, the same model shape
trained with ``model.horizons: 1`` and no sums (what the worker did before horizons), and gives
the ratios (``horizons``: with / without, as ``calibration``). ``--market`` likewise measures the
default model with the market-wide inputs added (forecaster/market.py: one reduction over every
feed's day of bars per boundary), trained on two feeds so that the inputs are live, and gives
the ratios (``market``: with / without). ``--horizons-calibration-ratio`` measures each size again
with ``forecaster.calibrate_horizons`` off (only the next bar's band calibrated) and gives the
ratios (``horizons_calibration``: with / without); with it on (the default), every feed starts
with every target past its warm-up, and a target learns once this worker's forecast of it is
realised (its window closed): run ``--boundaries 80`` or more for the hour's targets to learn too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import functools
import gc
import gzip
import io
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

# -- the subscriber (its own process; standard library only, so it starts in a blink) ----------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _varint(len(body)) + body


def _packets(buf: bytearray) -> Iterator[tuple[int, bytes]]:
    """Complete packets at the front of ``buf`` (consumed from it): (first byte, body)."""
    pos = 0
    while len(buf) - pos >= 2:
        length, shift, i = 0, 0, pos + 1
        while True:
            if i >= len(buf):
                del buf[:pos]
                return
            byte = buf[i]
            length += (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        if len(buf) - i < length:
            break
        yield buf[pos], bytes(buf[i:i + length])
        pos = i + length
    del buf[:pos]


def run_subscriber(port: int, topic_filter: str) -> None:
    """stdin ``expect N`` -> stdout ``armed``, then one JSON line of N arrival times and payloads."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_id = f"latency-sub-{uuid.uuid4().hex[:8]}"
    # CONNECT: MQTT 3.1.1, clean session, no keep-alive (the run is short and the link is loopback).
    sock.sendall(_packet(0x10, _string("MQTT") + bytes([4, 0x02, 0, 0]) + _string(client_id)))
    sock.sendall(_packet(0x82, (1).to_bytes(2, "big") + _string(topic_filter) + bytes([1])))
    buf = bytearray()
    subscribed = False
    while not subscribed:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("broker closed the connection")
        buf += data
        subscribed = any(first >> 4 == 9 for first, _ in _packets(buf))  # SUBACK
    print("ready", flush=True)
    for line in sys.stdin:
        expected = int(line.split()[1])
        times: list[int] = []
        walls: list[int] = []
        payloads: list[str] = []
        print("armed", flush=True)
        while len(payloads) < expected:
            data = sock.recv(1 << 20)
            now = time.monotonic_ns()
            wall = time.time_ns()
            if not data:
                raise ConnectionError("broker closed the connection")
            buf += data
            acks = []
            for first, body in _packets(buf):
                if first >> 4 != 3:  # PUBLISH only
                    continue
                qos = (first >> 1) & 3
                at = 2 + int.from_bytes(body[:2], "big")
                if qos:
                    acks.append(_packet(0x40, body[at:at + 2]))
                    at += 2
                times.append(now)
                walls.append(wall)
                payloads.append(body[at:].decode())
            if acks:
                sock.sendall(b"".join(acks))
        print(orjson.dumps({"t": times, "w": walls, "p": payloads}).decode(), flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--subscriber"]:
    run_subscriber(int(sys.argv[2]), sys.argv[3])
    sys.exit(0)

# -- the benchmark --------------------------------------------------------------------------------

import numpy as np  # noqa: E402
import paho.mqtt.client as paho  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forecaster.calibration import WARM_UP as CALIBRATION_WARM_UP  # noqa: E402
from forecaster.calibration import BandCalibrator  # noqa: E402
from forecaster.frame import BarFrame  # noqa: E402
from forecaster.horizons import resolve as resolve_horizons  # noqa: E402
from forecaster.market import MARKET_FEATURES, attach  # noqa: E402
from forecaster.model_store import ModelRecord, ModelStore, promote  # noqa: E402
from forecaster.training import train_model  # noqa: E402
from forecaster.training_loop import quiet  # noqa: E402
from streamer.store import BarStore  # noqa: E402
from volcast.backoff import Backoff  # noqa: E402
from volcast.bar import Bar, BarStatus  # noqa: E402
from volcast.connections import redis_client  # noqa: E402
from volcast.keys import Feed, RedisKeys, forecast_topic_filter  # noqa: E402
from volcast.settings import ModelSettings, Settings, settings_from_mapping  # noqa: E402

DATA = ROOT / "tests" / "data" / "binance-usdm_NEARUSDT_1m_2023-02-01_03.csv.gz"
MINUTE = 60_000
HISTORY = 1500  # the LSTM reads look_back bars plus HAR's day of 1-minute bars
WARM_UP = 2  # boundaries not measured: model load, first history read, the first fallback fit
_TIMINGS = re.compile(r": (\d+) predictions; read_ms ([\d.]+), predict_ms ([\d.]+), submit_ms ([\d.]+), "
                      r"record_ms ([\d.]+)")


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


ONE_STEP: dict[str, Any] = {"horizons": 1, "horizon_sums": []}
MARKET: dict[str, Any] = {"features": [*ModelSettings().features, *MARKET_FEATURES]}


def raw_settings(port: int, model_dir: Path, redis_url: str, n: int, calibrate: bool = True,
                 model: dict[str, Any] | None = None, calibrate_horizons: bool | None = None) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    return {
        "exchanges": [{"id": "binance", "symbols": [f"S{i:04d}/USDT" for i in range(n)]}],
        "redis": {"url": redis_url, "key_prefix": f"bench-{tag}"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "topic_prefix": f"bench-{tag}"},
        "model": model or {},  # the default shape: hidden 50, look_back 60, all features
        "training": {"epochs": 1, "batch_size": 256, "patience": 0, "max_bars": 3000},
        "refit": {"model_dir": str(model_dir)},
        "forecaster": {"threads": 1, "calibrate_bands": calibrate,
                       **({} if calibrate_horizons is None else {"calibrate_horizons": calibrate_horizons})},
    }


def steady_calibration(targets: int) -> dict[str, str]:
    """A calibrator state past its warm-up at every one of ``targets``, as the worker writes it."""
    calibrator = BandCalibrator(targets)
    row = int(calibrator.rows(["feed"])[0])
    calibrator.c_low[row], calibrator.c_high[row], calibrator.n[row] = 0.125, 0.25, CALIBRATION_WARM_UP
    return calibrator.fields(row)


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.array(values)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 2), "p99_ms": round(float(np.percentile(arr, 99)), 2),
            "max_ms": round(float(arr.max()), 2), "samples": len(values)}


class Subscriber:
    """The subscriber process: ``arm(n)`` before a burst, ``arrivals()`` after it."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, port: int, topic_filter: str) -> Any:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--subscriber", str(port), topic_filter,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 28)
        subscriber = cls(process)
        try:
            await subscriber._expect_line("ready")
            yield subscriber
        finally:
            assert process.stdin is not None
            process.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            await process.wait()

    async def _line(self, timeout: float = 120.0) -> bytes:  # noqa: ASYNC109
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("the subscriber process ended")
        return line

    async def _expect_line(self, word: str) -> None:
        line = await self._line(30)
        if line.strip() != word.encode():
            raise RuntimeError(f"subscriber said {line!r}, expected {word}")

    async def arm(self, n: int) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(f"expect {n}\n".encode())
        await self._process.stdin.drain()
        await self._expect_line("armed")

    async def arrivals(self, timeout: float = 120.0) -> list[tuple[int, int, bytes]]:  # noqa: ASYNC109
        """(CLOCK_MONOTONIC ns, wall clock ns, payload) of each message, in arrival order."""
        got = orjson.loads(await self._line(timeout))
        return [(t, w, p.encode()) for t, w, p in zip(got["t"], got["w"], got["p"], strict=True)]


def paho_publisher(port: int) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"latency-pub-{uuid.uuid4().hex[:8]}",
                         protocol=paho.MQTTv311)
    client.max_inflight_messages_set(0)  # 0 = no limit, as the worker's publisher
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while not client.is_connected():
        client.loop(0.05)
    return client


async def baseline(settings: Settings, n: int, bursts: int, payload: bytes) -> dict[str, float]:
    """A bare burst of n QoS 1 publishes from one paho client -> arrival at the same subscriber."""
    topic = f"{settings.mqtt.topic_prefix}/baseline"
    latencies: list[float] = []
    async with Subscriber.running(settings.mqtt.port, f"{topic}/#") as sub:
        client = paho_publisher(settings.mqtt.port)
        acked: set[int] = set()
        client.on_publish = lambda c, u, mid, rc, p: acked.add(mid)
        try:
            for burst in range(bursts + WARM_UP):  # warm-up bursts, as for the worker
                await sub.arm(n)
                acked.clear()
                sent = time.monotonic_ns()
                mids = [client.publish(f"{topic}/{i}", payload, qos=1).mid for i in range(n)]
                while not acked.issuperset(mids):  # read the PUBACKs, as a publisher must
                    client.loop(0.01)
                got = await sub.arrivals()
                if burst >= WARM_UP:
                    latencies += [(t - sent) / 1e6 for t, _, _ in got]
                await asyncio.sleep(0.2)
        finally:
            client.disconnect()
    return percentiles(latencies)


def worker_cpu_ns(pid: int) -> int:
    """CPU time of every thread of process ``pid`` so far (ns; Linux /proc schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total


def worker_timings(log: Path, boundaries: int, n: int) -> dict[str, Any]:
    """Medians of the worker's per-batch timings over the measured boundaries (its debug log)."""
    rows = [m.groups() for m in _TIMINGS.finditer(log.read_text(errors="replace"))]
    parsed = [(int(size), *(float(v) for v in rest)) for size, *rest in rows]
    # The last batches cover the measured boundaries; count back until they hold boundaries * n.
    measured: list[tuple[float, ...]] = []
    total = 0
    for row in reversed(parsed):
        if total >= boundaries * n:
            break
        measured.append(row)
        total += int(row[0])
    names = ("read_ms", "predict_ms", "submit_ms", "record_ms")
    out: dict[str, Any] = {name: round(statistics.median(r[i + 1] for r in measured), 2) if measured else None
                           for i, name in enumerate(names)}
    out["batches"] = len(measured)
    return out


async def measure(n: int, boundaries: int, port: int, workdir: Path, redis_url: str, model: Path,
                  log_dir: Path, calibrate: bool = True,
                  model_settings: dict[str, Any] | None = None, metrics: bool = False,
                  calibrate_horizons: bool | None = None, gap_s: float = 0.2) -> dict[str, Any]:
    tag = "" if model_settings is None else "-market" if model_settings is MARKET else "-one-step"
    tag += "-metrics" if metrics else ""
    tag += "" if calibrate_horizons is None else f"-horizons-calibrated-{calibrate_horizons}"
    raw = raw_settings(port, workdir / f"models-{n}-{calibrate}{tag}", redis_url, n, calibrate, model_settings,
                       calibrate_horizons)
    if metrics:  # Prometheus metrics on a free port, scraped every second (scraper below)
        raw["metrics"] = {"enabled": True, "forecast_port": 0}
    settings = settings_from_mapping(raw, env={})
    config = workdir / f"config-{n}.yml"
    config.write_text(yaml.safe_dump(raw))
    shutil.copytree(model, settings.refit.model_dir / "1")
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = [Feed("binance", s, MINUTE) for _, s in settings.feeds()]
    bars = real_bars()
    series = [bars[(i * 37) % 1000:] for i in range(n)]  # a different real stretch per symbol
    times = [b.open_time_ms for b in bars]
    # This process holds millions of Decimals: keep the cycle collector from pausing the writes
    # and the baseline's publisher for 100+ ms at a time (it did).
    gc.collect()
    gc.freeze()
    log_path = log_dir / f"worker-{n}{'' if calibrate else '-uncalibrated'}{tag}.log"
    log = log_path.open("wb")
    worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
        [sys.executable, "-m", "volcast.cli", "-v", "forecast", "--config", str(config)],
                              stdout=log, stderr=log, cwd=ROOT)
    scraper = Scraper(log_path) if metrics else None
    latency: list[float] = []
    from_start: list[float] = []
    to_payload: list[float] = []
    transit: list[float] = []
    per_boundary: list[float] = []
    cpu_to_out: list[float] = []
    cpu_whole: list[float] = []
    try:
        # redis-py 8 times a command out after 5 s: writing 1000 feeds' history in pipelines of
        # 250,000 commands took longer than that on a loaded machine.
        async with redis_client(settings.redis, socket_timeout=120) as redis:
            await promote(redis, keys, ModelRecord("lstm", "1", {}, 0))
            spec = resolve_horizons(settings.model, MINUTE)
            every = calibrate and settings.forecaster.calibrate_horizons and spec.multi
            if calibrate:  # steady state: every feed's band (every target's, when calibrated) is past its warm-up
                state = steady_calibration(len(spec.targets) if every else 1)
                pipe = redis.pipeline(transaction=False)
                for feed in feeds:
                    pipe.hset(keys.calibration(feed), mapping=state)  # type: ignore[arg-type]
                await pipe.execute()
            for lo in range(0, HISTORY, 250):
                pipe = redis.pipeline(transaction=False)
                for i, feed in enumerate(feeds):
                    for j in range(lo, min(lo + 250, HISTORY)):
                        b = replace(series[i][j], open_time_ms=times[j])
                        pipe.xadd(keys.bars(feed), b.to_fields(), id=f"{times[j]}-0")  # type: ignore[arg-type]
                await pipe.execute()
            store = BarStore(redis, keys, retention_bars=settings.bars.retention_bars, buffer_bars=10 * n,
                             backoff=Backoff(0.1, 1.0))
            async with Subscriber.running(port, forecast_topic_filter(settings.mqtt.topic_prefix)) as sub:
                for step in range(boundaries + WARM_UP):
                    j = HISTORY + step
                    await sub.arm(n)
                    for i, feed in enumerate(feeds):
                        store.put(feed, replace(series[i][j], open_time_ms=times[j]))
                    cpu_before = worker_cpu_ns(worker.pid)
                    started = time.monotonic_ns()
                    await store.write_pending()
                    written = time.monotonic_ns()
                    written_wall = time.time_ns()
                    got = await sub.arrivals(timeout=600 if step < WARM_UP else 120)
                    cpu_out = worker_cpu_ns(worker.pid)
                    if step >= WARM_UP:
                        parsed = [orjson.loads(p) for _, _, p in got]
                        assert all(p["last_bar_ms"] == times[j] for p in parsed)
                        assert all(p["model"]["version"] == "1" for p in parsed)
                        assert all(p["calibrated"] is calibrate for p in parsed)
                        assert all(p.get("horizons_calibrated", False) is every for p in parsed)
                        assert len({p["symbol"] for p in parsed}) == n
                        ms = [(t - written) / 1e6 for t, _, _ in got]
                        latency += ms
                        from_start += [(t - started) / 1e6 for t, _, _ in got]
                        # created_ms: when the worker built the payload (wall clock, ms resolution).
                        to_payload += [p["created_ms"] - written_wall / 1e6 for p in parsed]
                        transit += [w / 1e6 - p["created_ms"] for (_, w, _), p in zip(got, parsed, strict=True)]
                        per_boundary.append(round(max(ms), 1))
                    await asyncio.sleep(gap_s)
                    if step >= WARM_UP:  # the bookkeeping and the next boundary's preparation ran meanwhile
                        cpu_to_out.append((cpu_out - cpu_before) / 1e6)
                        cpu_whole.append((worker_cpu_ns(worker.pid) - cpu_before) / 1e6)
                payload = got[-1][2]
            base = await baseline(settings, n, boundaries, payload)
            stop_worker(worker)  # first: a worker reading the events stream would create it again
            prefix_keys = [k async for k in redis.scan_iter(match=f"{settings.redis.key_prefix}:*", count=1000)]
            for lo in range(0, len(prefix_keys), 500):
                await redis.delete(*prefix_keys[lo:lo + 500])
    finally:
        if scraper is not None:
            scraper.stop()
        stop_worker(worker)
        log.close()
    result: dict[str, Any] = percentiles(latency)
    if scraper is not None:
        result["scrapes"] = scraper.scrapes
    result["from_write_start"] = percentiles(from_start)
    # Where the time goes, split at the payload's created_ms (+-1 ms): bars written -> payload
    # built in the worker, and payload built -> arrival (written to the broker, broker, subscriber).
    result["written_to_payload"] = percentiles(to_payload)
    result["payload_to_arrival"] = percentiles(transit)
    result["boundary_max_ms"] = per_boundary
    result["baseline_mqtt_burst"] = base
    result["ratio_p99"] = round(result["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None
    result["worker_ms"] = worker_timings(log_path, boundaries, n)
    # CPU time (every thread of the worker process), a measure a loaded machine hardly moves:
    # until the last prediction arrived, and for the whole boundary (bookkeeping, preparation).
    result["worker_cpu_ms"] = {"to_last_arrival": round(statistics.median(cpu_to_out), 2) if cpu_to_out else None,
                               "whole_boundary": round(statistics.median(cpu_whole), 2) if cpu_whole else None}
    return result


def calibration_ratio(on: dict[str, Any], off: dict[str, Any]) -> dict[str, Any]:
    """With calibration / without, measured in the same run: p50 and p99, and the worker's own
    per-batch timings (the band is made in submit_ms, learnt and written in record_ms)."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    out: dict[str, Any] = {"without": {k: off[k] for k in ("p50_ms", "p99_ms")}, "without_worker_ms": off["worker_ms"]}
    out["ratio_p50"] = ratio(on["p50_ms"], off["p50_ms"])
    out["ratio_p99"] = ratio(on["p99_ms"], off["p99_ms"])
    for name in ("read_ms", "predict_ms", "submit_ms", "record_ms"):
        out[f"ratio_{name}"] = ratio(on["worker_ms"][name], off["worker_ms"][name])
    out["without_worker_cpu_ms"] = off.get("worker_cpu_ms")
    for name in ("to_last_arrival", "whole_boundary"):
        out[f"ratio_cpu_{name}"] = ratio(on.get("worker_cpu_ms", {}).get(name), off.get("worker_cpu_ms", {}).get(name))
    return out


class Scraper:
    """Scrapes the worker's /metrics every second from a thread, once its log names the port."""

    def __init__(self, log_path: Path) -> None:
        self.scrapes = 0
        self._stop = threading.Event()
        self._log = log_path
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        port = None
        while port is None and not self._stop.wait(0.2):
            found = re.search(rb"forecast metrics on http://[^:]+:(\d+)/metrics", self._log.read_bytes())
            port = int(found.group(1)) if found else None
        while not self._stop.wait(1.0):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                    answer.read()
            except OSError:  # the worker is being stopped at the end of the measurement
                continue
            self.scrapes += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def metrics_ratio(on: dict[str, Any], off: dict[str, Any]) -> dict[str, Any]:
    """Latency with metrics on (scraped every second) over off, in the same run."""
    return {"p50": round(on["p50_ms"] / off["p50_ms"], 2) if off["p50_ms"] else None,
            "p99": round(on["p99_ms"] / off["p99_ms"], 2) if off["p99_ms"] else None,
            "on_p50_ms": on["p50_ms"], "on_p99_ms": on["p99_ms"], "scrapes": on.get("scrapes")}


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.terminate()
        worker.wait(10)


def train_artifact(workdir: Path, model: dict[str, Any] | None = None, version: str = "1") -> Path:
    settings = settings_from_mapping(raw_settings(1883, workdir, "redis://127.0.0.1:6379/0", 1, model=model), env={})
    frame = BarFrame.from_csv(DATA)
    frames = [("binance:S0000/USDT", frame)]
    if model is MARKET:
        # A second feed over the same times (the real bars 3 hours on), so the inputs are not constant.
        other = replace(frame, volume=np.roll(frame.volume, -180), close=np.roll(frame.close, -180))
        frames, _ = attach([*frames, ("binance:S0001/USDT", other)], MARKET_FEATURES)
    trained = train_model(frames, settings.model, settings.training, progress=quiet)
    store = ModelStore(workdir / "trained")
    return store.write(version, lambda d: trained.save(d, "1"), {"name": "lstm"})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--symbols", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--boundaries", type=int, default=20)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the worker logs (debug timings) here")
    parser.add_argument("--calibration-ratio", action="store_true",
                        help="also measure each size without band calibration, and give the ratios")
    parser.add_argument("--horizons-ratio", action="store_true",
                        help="also measure each size with a model of the next bar only, and give the ratios")
    parser.add_argument("--horizons-calibration-ratio", action="store_true",
                        help="also measure each size with forecaster.calibrate_horizons off (the next bar's band "
                             "calibrated only), and give the ratios")
    parser.add_argument("--gap", type=float, default=0.2, metavar="S",
                        help="seconds from a boundary's last arrival to the next boundary's bars (default 0.2; live: "
                             "the interval); the bookkeeping runs meanwhile, and when it takes longer than the gap it "
                             "delays the next boundary, which a live worker's minute never does")
    parser.add_argument("--market", action="store_true",
                        help="also measure each size with the market-wide inputs, and give the ratios")
    parser.add_argument("--metrics-ratio", action="store_true",
                        help="also measure each size with Prometheus metrics on (scraped every second), and give "
                        "the ratios")
    args = parser.parse_args()
    measure_at = functools.partial(measure, gap_s=args.gap)
    with tempfile.TemporaryDirectory(prefix="volcast-latency-") as tmp:
        workdir = Path(tmp)
        model = await asyncio.to_thread(train_artifact, workdir)
        one_step = await asyncio.to_thread(train_artifact, workdir, ONE_STEP, "2") if args.horizons_ratio else None
        market = await asyncio.to_thread(train_artifact, workdir, MARKET, "3") if args.market else None
        port = free_port()
        results: dict[str, Any] = {}
        with mosquitto(port, workdir):
            for n in args.symbols:
                log_dir = args.log_dir or workdir
                log_dir.mkdir(parents=True, exist_ok=True)
                off = None
                if args.calibration_ratio:
                    off = await measure_at(n, args.boundaries, port, workdir, args.redis, model, log_dir,
                                           calibrate=False)
                results[str(n)] = await measure_at(n, args.boundaries, port, workdir, args.redis, model, log_dir)
                if off is not None:
                    results[str(n)]["calibration"] = calibration_ratio(results[str(n)], off)
                if one_step is not None:
                    single = await measure_at(n, args.boundaries, port, workdir, args.redis, one_step, log_dir,
                                           model_settings=ONE_STEP)
                    results[str(n)]["horizons"] = calibration_ratio(results[str(n)], single)
                if market is not None:
                    with_market = await measure_at(n, args.boundaries, port, workdir, args.redis, market, log_dir,
                                                model_settings=MARKET)
                    results[str(n)]["market"] = calibration_ratio(with_market, results[str(n)])
                    results[str(n)]["market"]["with"] = {k: with_market[k] for k in ("p50_ms", "p99_ms", "worker_ms")}
                if args.horizons_calibration_ratio:
                    own = await measure_at(n, args.boundaries, port, workdir, args.redis, model, log_dir,
                                        calibrate_horizons=False)
                    results[str(n)]["horizons_calibration"] = calibration_ratio(results[str(n)], own)
                if args.metrics_ratio:
                    on = await measure_at(n, args.boundaries, port, workdir, args.redis, model, log_dir, metrics=True)
                    results[str(n)]["metrics"] = metrics_ratio(on, results[str(n)])
                if not args.json:
                    print(n, results[str(n)], file=sys.stderr)
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    asyncio.run(main())
