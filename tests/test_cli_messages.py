"""Messages a user reads: each says what is wrong once, without noise, and what to do."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import free_port

DATA = Path(__file__).parent / "data"
NEAR = DATA / "binance-usdm_NEARUSDT_1m_2023-02-01_03.csv.gz"


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("VOLCAST_")}, "PYTHONUNBUFFERED": "1"}


def test_unknown_exchange_id_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("exchanges: [{id: binanse, symbols: [BTC/USDT]}]\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "volcast.cli", "status", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False, env=env())
    assert done.returncode == 2
    assert "unknown exchange id 'binanse'" in done.stderr
    assert "Tuple should have" not in done.stderr and "at least 1 item" not in done.stderr, done.stderr


def test_an_empty_exchange_list_is_still_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("exchanges: []\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "volcast.cli", "status", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False, env=env())
    assert done.returncode == 2 and "exchanges:" in done.stderr


@pytest.mark.parametrize("verb", ["stream", "forecast"])
def test_retry_warning_says_it_keeps_retrying_and_how_to_stop(verb: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        "exchanges: [{id: binance, symbols: [BTC/USDT]}]\n"
        f"redis: {{url: 'redis://127.0.0.1:{free_port()}/0', key_prefix: test-cli-messages}}\n",
        encoding="utf-8")
    process = subprocess.Popen([sys.executable, "-m", "volcast.cli", verb, "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(), cwd=tmp_path)
    assert process.stderr is not None
    warning = ""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line or "cannot reach Redis" in line:
                warning = line
                break
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, rest = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _, rest = process.communicate()
    assert "keep retrying" in warning and "Ctrl-C" in warning, warning
    # 0 once the service runs; 130 when Ctrl-C comes while it is still starting.
    assert process.returncode in (0, 130) and "Traceback" not in rest, rest[-2000:]


def bars_file(tmp_path: Path, n: int) -> Path:
    with gzip.open(NEAR, "rt", encoding="utf-8") as source:
        lines = [next(source) for _ in range(n + 1)]
    path = tmp_path / f"binance-usdm_NEARUSDT_{n}.csv"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_train_refuses_below_the_minimum_it_names_and_trains_at_it(tmp_path: Path) -> None:
    """The minimum in the refusal is the number of bars that then trains (it once said 1440 and
    trained on 300)."""
    config = tmp_path / "config.yml"
    config.write_text("exchanges: [{id: binance, symbols: [NEAR/USDT]}]\n"
                      "model: {look_back: 16, hidden: 8}\ntraining: {epochs: 1, batch_size: 256, patience: 0}\n",
                      encoding="utf-8")

    def train(n: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "volcast.cli", "train", "--bars", str(bars_file(tmp_path, n)), "--config",
             str(config), "--out", str(tmp_path / f"m{n}")], capture_output=True, text=True, timeout=280,
            check=False, env=env())

    short = train(300)
    assert short.returncode == 1
    minimum = int(short.stderr.split("at least ")[1].split()[0])
    assert "the longest has 300" in short.stderr
    assert train(minimum - 1).returncode == 1
    assert train(minimum).returncode == 0
