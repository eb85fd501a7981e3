"""`volcast run` serves the same three metrics endpoints as `stream`, `forecast` and `refit` would:
the real command (streaming the simulator, its refit child a process of its own), each endpoint
scraped over HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import yaml
from metrics_scrape import scrape, served_names
from stream_harness import PATIENCE_S, delete_prefix, stream_settings, unique_prefix, write_windows
from worker_harness import clear_retained

from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from volcast.settings import Settings, settings_from_mapping

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

_SERVING = re.compile(r"(stream|forecast|refit) metrics on http://127\.0\.0\.1:(\d+)/metrics")


async def ports_from_log(stderr: asyncio.StreamReader, lines: list[str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(ports) < 3:
        line = (await stderr.readline()).decode(errors="replace")
        if not line:
            raise AssertionError("volcast run exited before serving its metrics:\n" + "".join(lines))
        lines.append(line)
        found = _SERVING.search(line)
        if found:
            ports[found.group(1)] = int(found.group(2))
    return ports


async def test_run_serves_stream_forecast_and_refit_metrics(tmp_path: Path) -> None:
    files = write_windows(tmp_path, 10)
    tapes = [load_tape(f) for f in files[:1]]
    prefix = unique_prefix()
    lines: list[str] = []
    redis = aioredis.Redis()
    run_settings: Settings | None = None
    try:
        async with ReplayServer(tapes, speed=1, start_on_subscribe=True) as server:
            settings = stream_settings(server, [t.symbol for t in tapes], prefix, history={"days": 0})
            raw = settings.model_dump(mode="json", include={"exchanges", "bars", "streamer", "redis", "history"})
            raw["mqtt"] = {"topic_prefix": f"test-run-{uuid.uuid4().hex[:8]}"}
            raw["model"] = {"look_back": 8, "hidden": 4, "features": ["log_volume", "time_of_day"]}
            raw["refit"] = {"model_dir": str(tmp_path / "models"), "holdout_bars": 120, "min_bars": 2000}
            raw["metrics"] = {"enabled": True, "stream_port": 0, "forecast_port": 0, "refit_port": 0}
            (tmp_path / "config.yml").write_text(yaml.safe_dump(raw), encoding="utf-8")
            run_settings = settings_from_mapping(raw, env={})
            env = {**os.environ, "VOLCAST_BINANCE_API_KEY": "simulator"}
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "volcast.cli", "run", "--config", str(tmp_path / "config.yml"),
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert process.stderr is not None
            drained: asyncio.Task[bytes] | None = None
            try:
                ports = await asyncio.wait_for(ports_from_log(process.stderr, lines), PATIENCE_S)
                drained = asyncio.create_task(process.stderr.read())
                served = {service: served_names(await asyncio.to_thread(scrape, port))
                          for service, port in ports.items()}
            finally:
                process.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(process.wait(), PATIENCE_S)
            if drained is not None:
                await asyncio.wait_for(drained, PATIENCE_S)
        assert code == 0, "".join(lines)
        assert len(set(ports.values())) == 3
        # Each endpoint holds its own service's metrics and no other's.
        for service, names in served.items():
            own = {n for n in names if n.startswith("volcast_")}
            assert own and all(n.startswith(f"volcast_{service}_") for n in own), (service, sorted(own))
        assert "volcast_stream_trades_total" in served["stream"]
        assert "volcast_forecast_batches_total" in served["forecast"]
        assert "volcast_refit_runs_total" in served["refit"]
        assert all("process_cpu_seconds_total" in names for names in served.values())
    finally:
        if run_settings is not None:
            await clear_retained(run_settings)  # forecasts it may have published on the shared broker
        await delete_prefix(redis, prefix)
        await redis.aclose()
