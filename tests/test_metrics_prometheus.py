"""A real Prometheus (Debian's ``prometheus``) scrapes a real `volcast stream` streaming the
simulator, and every streamer query of the Grafana dashboard evaluates on what it stored."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from metrics_scrape import DASHBOARD
from servers import free_port, wait_for_port
from stream_harness import PATIENCE_S, delete_prefix, stream_settings, unique_prefix, write_windows
from test_metrics_stream import drain, port_from_log

from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = shutil.which("prometheus")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(PROMETHEUS is None, reason="prometheus (Debian's package) is not installed")]


def query(port: int, expr: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result


def ready(port: int) -> bool:
    """Prometheus answers queries only once its storage is open (503 before, with the port open)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=10) as answer:
            return bool(answer.status == 200)
    except OSError:  # URLError, HTTPError 503
        return False


def stream_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "volcast_stream_" in t["expr"]]


async def test_prometheus_scrapes_the_streamer_and_the_dashboard_queries_evaluate(tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    files = write_windows(tmp_path, 20)
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    redis = aioredis.Redis()
    lines: list[str] = []
    env = {**os.environ, "VOLCAST_BINANCE_API_KEY": "simulator"}
    try:
        async with ReplayServer(tapes, speed=1, start_on_subscribe=True) as server:
            settings = stream_settings(server, [t.symbol for t in tapes], prefix, history={"days": 0})
            raw = settings.model_dump(mode="json", include={"exchanges", "bars", "streamer", "redis", "history"})
            (tmp_path / "config.yml").write_text(yaml.safe_dump(raw), encoding="utf-8")
            stream = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "volcast.cli", "stream", "--config", str(tmp_path / "config.yml"),
                "--metrics-port", "0", cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert stream.stderr is not None
            prometheus: subprocess.Popen[bytes] | None = None
            drained: asyncio.Task[None] | None = None
            try:
                metrics_port = await asyncio.wait_for(port_from_log(stream.stderr, lines), PATIENCE_S)
                drained = asyncio.create_task(drain(stream.stderr, lines))
                # deploy/prometheus.yml's stream job, pointed at this streamer, scraped every second.
                scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text(encoding="utf-8"))
                job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "volcast-stream")
                job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
                scrape["scrape_configs"] = [job]
                scrape["global"]["scrape_interval"] = "1s"
                (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape), encoding="utf-8")
                api = free_port()
                prometheus = subprocess.Popen(  # noqa: ASYNC220 - started once
                    [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                     f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{api}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                await asyncio.to_thread(wait_for_port, api, prometheus, 60.0)
                deadline = time.monotonic() + PATIENCE_S
                while not await asyncio.to_thread(ready, api):
                    assert time.monotonic() < deadline and prometheus.poll() is None, "prometheus never got ready"
                    await asyncio.sleep(0.2)
                # Until a rate of trades can be computed: two scrapes of a stream with trades.
                rate: dict[str, Any] = {}
                while time.monotonic() < deadline:
                    rate = await asyncio.to_thread(query, api, "sum(rate(volcast_stream_trades_total[1m]))")
                    if rate["data"]["result"] and float(rate["data"]["result"][0]["value"][1]) > 0:
                        break
                    await asyncio.sleep(0.5)
                assert rate["data"]["result"], rate
                results = {expr: await asyncio.to_thread(query, api, expr) for expr in stream_queries()}
                up = await asyncio.to_thread(query, api, 'up{job="volcast-stream"}')
            finally:
                if prometheus is not None:
                    prometheus.terminate()
                    await asyncio.to_thread(prometheus.wait, 30)
                stream.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(stream.wait(), PATIENCE_S)
                if drained is not None:
                    await asyncio.wait_for(drained, PATIENCE_S)
        assert code == 0, "".join(lines)
        assert float(up["data"]["result"][0]["value"][1]) == 1
        assert len(results) >= 8
        for expr, result in results.items():
            assert result["status"] == "success", (expr, result)
        # The panels that have data from the first minute on do.
        for expr in results:
            if "trades_total[1m]" in expr or "volcast_stream_feeds" in expr or "lag_seconds" in expr:
                assert results[expr]["data"]["result"], expr
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
