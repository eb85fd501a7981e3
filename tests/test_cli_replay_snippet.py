"""What ``volcast replay`` prints runs as printed: its config.yml block, written to a file, and its
environment line, set as printed, stream the replay into bars with the real ccxt client, and the
backfills that dropped connections need go through (no futures host, no missing API key)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from servers import HAS_REDIS, free_port, start_server, stop_server

from volcast.keys import Feed, RedisKeys

DATA = Path(__file__).parent / "data"
XRP = DATA / "binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz"
EXPORT = re.compile(r"^\s*export (\w+)=(\S*)\s*$")
PATIENCE_S = 150.0


def printed_snippet(lines: list[str]) -> tuple[str, dict[str, str]]:
    """The YAML block under the ``config.yml`` line, and the ``export NAME=VALUE`` lines."""
    start = next(i for i, line in enumerate(lines) if line.startswith("config.yml"))
    block: list[str] = []
    for line in lines[start + 1 :]:
        if not (line.startswith(("exchanges:", " ", "#")) and line.strip()):
            break
        block.append(line)
    env = {m.group(1): m.group(2) for line in lines if (m := EXPORT.match(line))}
    return "\n".join(block) + "\n", env


def read_until_snippet(process: subprocess.Popen[str]) -> list[str]:
    """Everything the replay prints before its first progress line (which comes after the snippet)."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line or "published" in line:
            break
        lines.append(line.rstrip("\n"))
    return lines


@pytest.mark.skipif(not HAS_REDIS, reason="needs redis-server")
def test_printed_snippet_streams_the_replay_with_backfill(tmp_path: Path) -> None:
    port = free_port()
    redis_server = start_server(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], port)
    replay = subprocess.Popen(
        [sys.executable, "-m", "volcast.cli", "replay", "--trades", str(XRP), "--speed", "600", "--port", "0",
         "--loop", "--faults", "drop_every_trades=25"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    stream: subprocess.Popen[str] | None = None
    try:
        lines = read_until_snippet(replay)
        yaml_text, exported = printed_snippet(lines)
        config = tmp_path / "config.yml"
        config.write_text(yaml_text, encoding="utf-8")
        # Only what the snippet says, plus where this test's private Redis is.
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOLCAST_")}
        env.update(exported)
        env["VOLCAST_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        stream = subprocess.Popen(
            [sys.executable, "-m", "volcast.cli", "stream", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        )
        client = redis.Redis(port=port)
        keys = RedisKeys("volcast")
        feed = Feed("binance", "XRP/ETH", 60_000)
        deadline = time.monotonic() + PATIENCE_S
        bars = backfilled = 0
        while time.monotonic() < deadline and stream.poll() is None:
            bars = int(client.xlen(keys.bars(feed)))
            backfilled = int(client.hget(keys.health(feed), "backfilled_trades") or 0)
            if bars >= 3 and backfilled > 0:
                break
            time.sleep(0.2)
        stream.send_signal(signal.SIGINT)
        _, err = stream.communicate(timeout=60)
        assert "ExchangeNotAvailable" not in err, err[-2000:]
        assert "AuthenticationError" not in err and "backfill impossible" not in err, err[-2000:]
        assert bars >= 3, f"{bars} bars within {PATIENCE_S:.0f} s:\n{err[-2000:]}"
        assert backfilled > 0, f"no trade was backfilled:\n{err[-2000:]}"
    finally:
        for process in (stream, replay):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
        stop_server(redis_server)
