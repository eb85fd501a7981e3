"""The forecaster worker's Prometheus metrics agree with its status hash and Redis: a real scrape
over HTTP of a worker forecasting real bars (real Redis and Mosquitto)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from metrics_scrape import Samples, dashboard_names, scrape, served_names, value
from worker_harness import (
    MINUTE,
    clear_retained,
    close_bars,
    delete_prefix,
    feeds_of,
    listening,
    settings_for,
    symbol_bars,
    worker,
    write_bars,
)

from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import Settings

HISTORY = 300
STEPS = 3


@pytest.fixture
async def settings(tmp_path: Path, redis_mode: str, redis_config: dict[str, Any]) -> AsyncIterator[Settings]:
    # Event shards: the pending events are read (XPENDING) from each.
    redis = {**redis_config, "event_shards": 3 if redis_mode == "cluster" else 2}
    s = settings_for(tmp_path / "models", redis=redis, metrics={"enabled": True, "forecast_port": 0})
    yield s
    await delete_prefix(s)
    await clear_retained(s)


def logged_port(caplog: pytest.LogCaptureFixture) -> int:
    for record in caplog.records:
        found = re.search(r"forecast metrics on http://127\.0\.0\.1:(\d+)/metrics", record.getMessage())
        if found:
            return int(found.group(1))
    raise AssertionError("the worker logged no metrics address")


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def test_forecaster_metrics_agree_with_redis(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="volcast.metrics_server")
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    shards = settings.redis.event_shards
    streams = keys.event_streams(MINUTE, shards)
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        async with worker(settings), listening(settings) as listener:
            port = logged_port(caplog)
            # Not a bar-closed event: dead-lettered.
            await redis.xadd(keys.bar_events(MINUTE, shards - 1, shards), {"exchange": "binance"})
            for step in range(STEPS):
                await close_bars(redis, keys, [(feed, series[feed][HISTORY + step]) for feed in feeds], shards)
                await listener.wait_for(len(feeds) * (step + 1))
            deadline = time.monotonic() + 60
            wrong: list[str] = ["not compared yet"]
            while wrong and time.monotonic() < deadline:
                status = {k.decode(): v.decode()
                          for k, v in cast(dict[bytes, bytes], await redis.hgetall(keys.forecaster())).items()}
                pending = sum([(await redis.xpending(stream, settings.forecaster.group))["pending"]
                               for stream in streams])
                dead = sum([await redis.xlen(keys.dead_events(MINUTE, k, shards)) for k in range(shards)])
                samples = await asyncio.to_thread(scrape, port)
                wrong = [f"{what}: metrics {got}, redis {want}" for what, got, want in (
                    ("forecasts", total(samples, "volcast_forecast_forecasts_total"),
                     int(status.get("predictions", 0))),
                    ("batches", value(samples, "volcast_forecast_batches_total"), int(status.get("batches", 0))),
                    ("dead letters", value(samples, "volcast_forecast_dead_letters_total"), dead),
                    ("dead letters (status)", value(samples, "volcast_forecast_dead_letters_total"),
                     int(status.get("dead_letters", -1))),
                    ("invalid events", value(samples, "volcast_forecast_invalid_events_total"),
                     int(status.get("invalid_events", -1))),
                    ("pending", samples.get(("volcast_forecast_pending_events", frozenset()), -1), pending),
                    ("latency count", value(samples, "volcast_forecast_latency_seconds_count"),
                     int(status.get("predictions", 0))),
                ) if got != want]
                if wrong:
                    await asyncio.sleep(0.1)
            assert not wrong, wrong
    # Before any model: HAR served every forecast as the baseline, none guarded; one dead letter.
    assert value(samples, "volcast_forecast_forecasts_total", model="har", baseline="true",
                 guarded="false") == STEPS * len(feeds)
    # A boundary is one batch, or more where the shards are read one by one (the cluster).
    batches = value(samples, "volcast_forecast_batches_total")
    assert batches >= STEPS
    assert value(samples, "volcast_forecast_dead_letters_total") == 1
    assert value(samples, "volcast_forecast_model_info", name="har", version="baseline") == 1
    assert value(samples, "volcast_forecast_mqtt_connected") == 1
    for phase in ("read", "predict", "submit"):
        assert value(samples, "volcast_forecast_boundary_phase_seconds_count", phase=phase) == batches
    # The bars are from 2023: every forecast came more than a minute after its bar's end.
    assert value(samples, "volcast_forecast_latency_seconds_bucket", le="60.0") == 0
    assert value(samples, "volcast_forecast_latency_seconds_bucket", le="+Inf") == STEPS * len(feeds)
    # Every forecaster metric the Grafana dashboard reads is served.
    assert dashboard_names("volcast_forecast_") - served_names(samples) == set()
    assert dashboard_names("volcast_forecast_")
