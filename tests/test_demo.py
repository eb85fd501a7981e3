"""`volcast demo`: the whole pipeline end to end (simulator -> ccxt -> streamer -> Redis ->
forecaster -> MQTT), on the shipped real trades."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def test_demo_seconds_json_shows_the_lstm_with_its_band(tmp_path: Path) -> None:
    # The demo's contract (README): within its first 90 seconds the LSTM serves, with its band.
    process = demo(tmp_path, "--seconds", "90", "--json")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    summary = json.loads(out)  # standard output is only the summary; the table went to stderr
    assert "binance:XRP/ETH" in err
    assert summary["bars"] > 2 * 1440  # the history the streamer loaded, and live bars
    assert summary["predictions"] > 5
    assert summary["scored"] > 0 and summary["live_rmse_log"] is not None
    assert "lstm" in summary["serving_models"], err[-3000:]
    lstm = summary["by_model"]["lstm"]
    assert lstm["predictions"] > 0 and lstm["with_band"] == lstm["predictions"]
    assert lstm["scored"] > 0
    assert lstm["live_rmse_log"] is not None and lstm["naive_rmse_log"] is not None
    # The table shows the LSTM's forecasts with their 80% band (a baseline's row shows "-").
    rows = [line.split() for line in err.splitlines() if line.startswith("binance:XRP/ETH") and " lstm v" in line]
    assert rows and all("-" in row[4] and row[4] != "-" for row in rows), err[-3000:]
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


def _read_until(stream: Any, predicate: Callable[[list[str]], bool], timeout_s: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not predicate(lines):
        line = stream.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
    return lines


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err


def _retained(host: str, port: int, topic_filter: str) -> list[str]:
    """Topics with a retained message under ``topic_filter``: retained messages arrive on
    subscribing, before a message published after the subscription (the sentinel)."""
    import asyncio

    import aiomqtt

    async def read() -> list[str]:
        sentinel = f"{topic_filter.rstrip('#')}sentinel-{time.time_ns()}"
        seen: list[str] = []
        async with aiomqtt.Client(host, port) as client:
            await client.subscribe(topic_filter, qos=1)
            await client.publish(sentinel, b"x", qos=1)
            async with asyncio.timeout(30):
                async for message in client.messages:
                    if str(message.topic) == sentinel:
                        return seen
                    if message.retain:
                        seen.append(str(message.topic))
        return seen

    return asyncio.run(read())


def test_one_demo_per_machine_watch_lines_work_and_retained_topics_are_cleared(tmp_path: Path) -> None:
    first = demo(tmp_path)
    assert first.stdout is not None
    try:
        lines = _read_until(first.stdout, lambda seen: sum("binance:XRP/ETH" in s for s in seen) >= 2, 120)
        assert sum("binance:XRP/ETH" in line for line in lines) >= 2, "\n".join(lines)
        # A second demo refuses to start, in one line, instead of clobbering the first one's keys.
        second = demo(tmp_path, "--seconds", "30")
        _, err = second.communicate(timeout=60)
        assert second.returncode == 1
        assert [line for line in err.splitlines() if line.strip()] == [
            next(line for line in err.splitlines() if "another volcast demo is running" in line)]
        # The banner's watch lines work as printed.
        status_line = next(line.strip() for line in lines if line.strip().startswith("volcast status "))
        argv = status_line.split()[1:]
        assert argv[-1] == "--watch"
        status = subprocess.run([sys.executable, "-m", "volcast.cli", *argv[:-1], "--json"], capture_output=True,
                                text=True, timeout=60, check=False)
        assert status.returncode == 0, status.stderr
        feed = json.loads(status.stdout)["feeds"][0]
        assert feed["symbol"] == "XRP/ETH" and feed["bars"]["count"] > 0 and feed["prediction"] is not None
        sub_line = next(line.strip() for line in lines if line.strip().startswith("mosquitto_sub "))
        host = sub_line.split(" -h ")[1].split()[0]
        port = int(sub_line.split(" -p ")[1].split()[0])
        if port == 1883 and tempfile.gettempdir() == "/tmp":  # the case the README shows
            readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
            for line in (sub_line, status_line):
                assert f"    {line.replace('volcast status', '.venv/bin/volcast status')}\n" in readme, line
        if shutil.which("mosquitto_sub"):
            got = subprocess.run(["bash", "-c", sub_line + " -C 1 -W 30"], capture_output=True, text=True,
                                 timeout=60, check=False)
            assert got.returncode == 0 and "volcast-demo/binance/XRP-ETH/1m/forecast" in got.stdout, got.stderr
    finally:
        err = _stop(first)
    assert first.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    if not shutil.which("mosquitto_sub") or port != 1883:
        return  # an embedded broker has gone with the demo, and its retained messages with it
    assert _retained(host, port, "volcast-demo/#") == []
