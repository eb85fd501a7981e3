"""``volcast replay`` as a user runs it: a real process, stopped with Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from volcast.cli import main

DATA = Path(__file__).parent / "data"
ETH = DATA / "unknown-exchange_ETHUSDT_trades_2023-02-02_0920.csv.gz"


def test_replay_serves_until_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "volcast.cli", "replay", "--trades", str(ETH), "--speed", "20", "--port", "0", "--loop"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "api: {public:" in line or not line:
                break
        rest = next(line.split()[1] for line in lines if line.startswith("REST"))
        assert any(line.startswith("websocket ws://127.0.0.1:") for line in lines)
        with urllib.request.urlopen(f"{rest}/exchangeInfo", timeout=5) as response:
            info = json.load(response)
        assert [s["symbol"] for s in info["symbols"]] == ["ETHUSDT"]
        time.sleep(0.5)
        with urllib.request.urlopen(f"{rest}/aggTrades?symbol=ETHUSDT&limit=5", timeout=5) as response:
            trades = json.load(response)
        assert trades and all(t["a"] == t["f"] == t["l"] for t in trades)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "api: {public:" in lines[-1]
        assert "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "--trades", str(ETH), "--faults", "drop_every_trades=x"], "bad --faults"),
        (["replay"], "give at least one --trades"),
        (["replay", "--flood", "10", "--trades", str(ETH)], "--flood generates its own trades"),
        (["replay", "--trades", str(ETH), "--symbol", "A/B", "--symbol", "C/D"], "one per file"),
    ],
)
def test_replay_refuses_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
