"""`volcast demo`: the whole pipeline end to end (simulator -> ccxt -> streamer -> Redis ->
forecaster -> MQTT), on the shipped real trades."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    # No config.yml in the working directory: the demo's defaults (local Redis/MQTT or embedded).
    return subprocess.Popen(
        [sys.executable, "-m", "volcast.cli", "demo", *args],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_demo_seconds_json(tmp_path: Path) -> None:
    process = demo(tmp_path, "--seconds", "40", "--json")
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["bars"] > 5
    assert summary["predictions"] > 5
    assert summary["scored"] > 0 and summary["live_rmse_log"] is not None
    assert "Traceback" not in err


@pytest.mark.parametrize("stop", [signal.SIGINT])
def test_demo_stops_cleanly_on_ctrl_c(tmp_path: Path, stop: signal.Signals) -> None:
    process = demo(tmp_path)
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    rows = 0
    while rows < 3 and time.monotonic() < deadline:  # wait for live predictions to show up
        line = process.stdout.readline()
        rows += "binance:XRP/ETH" in line
    assert rows >= 3, "no predictions shown within 120 s"
    process.send_signal(stop)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"the demo did not stop within 60 s of {stop.name}:\n{err[-3000:]}") from None
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err
