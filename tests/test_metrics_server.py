"""The metrics endpoint itself (port 0, a port in use, off) and the refit worker's metrics, scraped
over real HTTP."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from metrics_scrape import dashboard_names, scrape, served_names, value

from forecaster.refit import RefitOutcome
from forecaster.refit_metrics import RefitMetrics
from volcast.metrics_server import MetricsPortProblem, new_registry, serving_metrics
from volcast.settings import MetricsSettings

ROOT = Path(__file__).resolve().parent.parent


async def test_refit_runs_by_result_and_last_scores_are_served() -> None:
    metrics = RefitMetrics()
    metrics.observe(RefitOutcome("skipped", "no feed has refit.min_bars"), 0.2)
    metrics.observe(RefitOutcome("promoted", "version 3 promoted", "3", {"rmse_log": 0.81, "mase": 0.77},
                                 {"rmse_log": 0.9, "mase": float("nan")}), 42.0)
    settings = MetricsSettings(enabled=True, refit_port=0)
    async with serving_metrics(settings, "refit", new_registry([metrics])) as port:
        assert port
        samples = await asyncio.to_thread(scrape, port)
    assert value(samples, "volcast_refit_runs_total", result="promoted") == 1
    assert value(samples, "volcast_refit_runs_total", result="skipped") == 1
    assert value(samples, "volcast_refit_runs_total", result="failed") == 0
    assert value(samples, "volcast_refit_run_seconds_count") == 2
    assert value(samples, "volcast_refit_run_seconds_sum") == pytest.approx(42.2)
    assert value(samples, "volcast_refit_run_seconds_bucket", le="1.0") == 1
    assert value(samples, "volcast_refit_run_seconds_bucket", le="60.0") == 2
    assert value(samples, "volcast_refit_last_scores", role="challenger", score="rmse_log") == 0.81
    assert ("volcast_refit_last_scores", frozenset({("role", "champion"), ("score", "mase")})) not in samples
    assert value(samples, "volcast_refit_promoted_version") == 3
    assert value(samples, "volcast_refit_last_run_seconds") == 42.0
    # Every refit metric the Grafana dashboard reads is served.
    assert dashboard_names("volcast_refit_") - served_names(samples) == set()
    assert dashboard_names("volcast_refit_")


async def test_a_port_in_use_is_one_message_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = MetricsSettings(enabled=True, stream_port=port)
        with pytest.raises(MetricsPortProblem, match=rf"127\.0\.0\.1:{port}.*metrics\.stream_port"):
            async with serving_metrics(settings, "stream", new_registry([])):
                pass


async def test_off_serves_nothing() -> None:
    async with serving_metrics(MetricsSettings(), "forecast", new_registry([])) as port:
        assert port is None


def test_ports_must_differ_when_on() -> None:
    with pytest.raises(ValueError, match="must differ"):
        MetricsSettings(enabled=True, stream_port=9000, forecast_port=9000)
    MetricsSettings(enabled=True, stream_port=0, forecast_port=0, refit_port=0)  # each a free port


def test_the_cli_says_which_setting_when_the_port_is_taken(tmp_path: Path) -> None:
    """`volcast stream --metrics-port N` with N in use: one line on stderr, exit code 1, nothing
    started (the endpoint is bound before the first Redis key is touched)."""
    config = tmp_path / "config.yml"
    config.write_text("exchanges: [{id: binance, symbols: [BTC/USDT]}]\n"
                      f"redis: {{key_prefix: test-metrics-{uuid.uuid4().hex[:8]}}}\n", encoding="utf-8")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "volcast.cli", "stream", "--config", str(config), "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"volcast stream: stream metrics cannot listen on 127.0.0.1:{port} (Address already in use): "
                    "set metrics.stream_port (or --metrics-port) to a free port, or 0 for any")
    assert "Traceback" not in result.stderr
