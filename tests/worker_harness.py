"""Helpers of the forecaster worker and refit tests: real bars into real Redis, an MQTT listener,
a private Mosquitto, and tiny models trained on real data."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import io
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import redis.asyncio as aioredis

from forecaster.payload import Prediction
from forecaster.worker import run as run_worker
from streamer.announce import event_fields
from volcast.bar import Bar, BarStatus
from volcast.connections import mqtt_client, redis_client
from volcast.keys import Feed, RedisKeys, forecast_topic_filter
from volcast.settings import Settings, settings_from_mapping

DATA = Path(__file__).parent / "data"
NEAR = DATA / "binance-usdm_NEARUSDT_1m_2023-02-01_03.csv.gz"
MINUTE = 60_000
SYMBOLS = ("NEAR/USDT", "ALGO/USDT", "FIL/USDT")


def real_bars() -> list[Bar]:
    """The 4320 real 1-minute NEAR/USDT bars of the test file, as exact bars."""
    text = gzip.decompress(NEAR.read_bytes()).decode()
    bars = []
    for row in csv.DictReader(io.StringIO(text)):
        close, volume = Decimal(row["close"]), Decimal(row["volume"])
        bars.append(Bar(
            open_time_ms=int(row["timestamp_ms"]), open=Decimal(row["open"]), high=Decimal(row["high"]),
            low=Decimal(row["low"]), close=close, volume=volume, quote_volume=volume * close, trades=0,
            buy_volume=Decimal(0), sell_volume=Decimal(0), vwap=close, first_trade_id=None,
            last_trade_id=None, status=BarStatus.COMPLETE,
        ))
    return bars


def symbol_bars(index: int) -> list[Bar]:
    """Bars for the index-th test symbol: the real series shifted by a few hours, re-timed to align.

    The symbols then have different (real) volume paths over the same open times.
    """
    bars = real_bars()
    shift = index * 180
    shifted = bars[shift:] + bars[:shift]
    return [replace(b, open_time_ms=bars[i].open_time_ms) for i, b in enumerate(shifted)]


def settings_for(model_dir: Path, *, mqtt_url: str = "mqtt://127.0.0.1:1883", symbols: Sequence[str] = SYMBOLS,
                 **sections: Any) -> Settings:
    """Settings with a random Redis key prefix and MQTT topic prefix, and a tiny model."""
    return settings_from_mapping(raw_settings_for(model_dir, mqtt_url=mqtt_url, symbols=symbols, **sections),
                                 env={})


def raw_settings_for(model_dir: Path, *, mqtt_url: str = "mqtt://127.0.0.1:1883",
                     symbols: Sequence[str] = SYMBOLS, **sections: Any) -> dict[str, Any]:
    """The config.yml mapping of ``settings_for`` (for workers run as subprocesses)."""
    tag = uuid.uuid4().hex[:10]
    raw: dict[str, Any] = {
        "exchanges": [{"id": "binance", "symbols": list(symbols)}],
        "redis": {"key_prefix": f"test-fc-{tag}"},
        "mqtt": {"url": mqtt_url, "topic_prefix": f"test-fc-{tag}"},
        "model": {"look_back": 8, "hidden": 4, "features": ["log_volume", "time_of_day"]},
        "training": {"epochs": 1, "batch_size": 512, "patience": 0, "max_bars": 2500},
        "refit": {"model_dir": str(model_dir), "holdout_bars": 120, "min_bars": 2000, "keep": 2},
        "forecaster": {"claim_idle": "1s", "score_window": 50},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def feeds_of(settings: Settings) -> list[Feed]:
    return [Feed(ex, sym, settings.bars.interval) for ex, sym in settings.feeds()]


async def write_bars(redis: aioredis.Redis, keys: RedisKeys, feed: Feed, bars: Sequence[Bar]) -> None:
    """History without events: bars the worker must find when the next event arrives."""
    for start in range(0, len(bars), 1000):
        pipe = redis.pipeline(transaction=False)
        for bar in bars[start:start + 1000]:
            pipe.xadd(keys.bars(feed), bar.to_fields(), id=f"{bar.open_time_ms}-0")  # type: ignore[arg-type]
        await pipe.execute()


async def close_bars(redis: aioredis.Redis, keys: RedisKeys, closing: Sequence[tuple[Feed, Bar]],
                     shards: int = 1, *, carry: bool = True) -> None:
    """What the streamer does when bars close: the bars, then their events (to ``shards`` event
    streams; on a cluster the bar and its event are in different slots, written in this order).
    ``carry``: the events carry the bars' values, as the streamer's do (False: as an older
    streamer's, and a restored bar's or a recovered event, which the worker reads the bar of)."""
    pipe = redis.pipeline(transaction=False)
    written = [bar.to_fields() for _, bar in closing]
    for (feed, bar), fields in zip(closing, written, strict=True):
        pipe.xadd(keys.bars(feed), fields, id=f"{bar.open_time_ms}-0")  # type: ignore[arg-type]
    await pipe.execute()
    pipe = redis.pipeline(transaction=False)
    for (feed, bar), fields in zip(closing, written, strict=True):
        event = event_fields(feed, bar.open_time_ms, bar.status.value, bar=fields if carry else None)
        pipe.xadd(keys.feed_events(feed, shards), event, maxlen=100_000, approximate=True)  # type: ignore[arg-type]
    await pipe.execute()


async def delete_prefix(settings: Settings) -> None:
    async with redis_client(settings.redis) as redis:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis.key_prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)


class Listener:
    """Every forecast under the settings' topic prefix, parsed, in arrival order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.received: list[Prediction] = []
        self.retained: list[bool] = []
        self._changed = asyncio.Event()

    async def run(self, client: aiomqtt.Client) -> None:
        await client.subscribe(forecast_topic_filter(self.settings.mqtt.topic_prefix), qos=1)
        async for message in client.messages:
            if isinstance(message.payload, bytes) and message.payload:
                self.received.append(Prediction.from_json(message.payload))
                self.retained.append(bool(message.retain))
                self._changed.set()

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Prediction]:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"got {len(self.received)} of {count} predictions")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return self.received


@contextlib.asynccontextmanager
async def listening(settings: Settings) -> AsyncIterator[Listener]:
    listener = Listener(settings)
    async with mqtt_client(settings.mqtt, client_id=f"listener-{uuid.uuid4().hex[:8]}") as client:
        task = asyncio.create_task(listener.run(client))
        await asyncio.sleep(0.05)
        try:
            yield listener
        finally:
            await stop(task, "the MQTT listener")


async def stop(task: asyncio.Task[Any], what: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Cancel ``task`` and wait for it; a task that does not end fails the test with every stack."""
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=timeout)
    if not done:
        stacks = io.StringIO()
        for other in asyncio.all_tasks():
            other.print_stack(limit=8, file=stacks)
            coro: Any = other.get_coro()
            while coro is not None:  # the awaited chain, which print_stack does not show
                frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
                if frame is not None:
                    stacks.write(f"    awaits {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}\n")
                coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        raise AssertionError(f"{what} did not stop within {timeout:.0f}s of its cancellation:\n{stacks.getvalue()}")
    if not task.cancelled() and not isinstance(task.exception(), aiomqtt.MqttError | asyncio.CancelledError):
        task.result()


@contextlib.asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(run_worker(settings, consumer="w1"))
    keys = RedisKeys(settings.redis.key_prefix)
    async with redis_client(settings.redis) as redis:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the group exists once the worker is reading
            with contextlib.suppress(Exception):
                streams = keys.event_streams(settings.bars.interval, settings.redis.event_shards)
                if all([await redis.xinfo_groups(stream) for stream in streams]):
                    break
            await asyncio.sleep(0.02)
    try:
        yield task
    finally:
        await stop(task, "the forecaster worker")


async def clear_retained(settings: Settings) -> None:
    """An empty retained payload removes a topic's retained message from the shared broker."""
    from volcast.keys import forecast_topic

    async with mqtt_client(settings.mqtt) as client:
        for feed in feeds_of(settings):
            await client.publish(forecast_topic(settings.mqtt.topic_prefix, feed), b"", qos=1, retain=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mosquitto(port: int, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A private broker (for tests that stop it): TCP_NODELAY, no queue limit that drops QoS 1."""
    conf = workdir / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                    "max_queued_messages 1000000\nmax_inflight_messages 0\npersistence false\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.02)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(5)
