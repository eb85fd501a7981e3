"""`volcast demo`: the whole pipeline end to end (simulator -> ccxt -> streamer -> Redis ->
forecaster -> MQTT), on the shipped real trades."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import HAS_MOSQUITTO, MOSQUITTO, free_port, start_server, stop_server

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    # No config.yml in the working directory: the demo's defaults (local Redis/MQTT or embedded).
    return subprocess.Popen(
        [sys.executable, "-m", "volcast.cli", "demo", *args],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
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


@pytest.mark.skipif(not (HAS_MOSQUITTO and Path(MOSQUITTO_PASSWD).exists()), reason="needs mosquitto")
def test_demo_with_a_wrong_mqtt_password_says_so_and_fails(tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(passwords), "volcast", "right"], check=True,
                   capture_output=True)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    user = ["user root"] if os.geteuid() == 0 else []
    conf.write_text("\n".join([*user, "persistence false", f"listener {port} 127.0.0.1", "allow_anonymous false",
                               f"password_file {passwords}"]) + "\n", encoding="utf-8")
    broker = start_server([MOSQUITTO, "-c", str(conf)], port)
    try:
        (tmp_path / "config.yml").write_text(
            f"exchanges: [{{id: binance, symbols: [XRP/ETH]}}]\nmqtt: {{url: 'mqtt://127.0.0.1:{port}'}}\n",
            encoding="utf-8")
        process = demo(tmp_path, "--seconds", "30",
                       env={"VOLCAST_MQTT_USERNAME": "volcast", "VOLCAST_MQTT_PASSWORD": "wrong"})
        _, err = process.communicate(timeout=120)
    finally:
        stop_server(broker)
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 1, err[-3000:]
    assert len(lines) == 1 and "refused the user name or password" in lines[0], err[-3000:]
    assert "VOLCAST_MQTT_PASSWORD" in lines[0] and "wrong" not in lines[0]
