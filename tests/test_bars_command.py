"""`volcast bars` reproduces independent golden bars from real trades, exactly."""

from __future__ import annotations

import csv
import gzip
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from streamer.offline import aggregate_trades
from streamer.trades_csv import TradesFileError, read_trades

DATA = Path(__file__).parent / "data"
XRP_TRADES = DATA / "binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz"
XRP_BARS = DATA / "binance_XRPETH_1m_2019-10-11_2019-10-13.csv.gz"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "volcast.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_golden_xrpeth_1m(tmp_path: Path) -> None:
    out = tmp_path / "bars.csv"
    result = run_cli("bars", "--trades", str(XRP_TRADES), "--interval", "1m", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with out.open(newline="") as handle:
        ours = list(csv.DictReader(handle))
    with gzip.open(XRP_BARS, "rt", newline="") as handle:
        golden = list(csv.DictReader(handle))
    assert list(ours[0])[:6] == ["timestamp_ms", "open", "high", "low", "close", "volume"]
    # freqtrade's file lists only minutes with trades; ours has every minute, empty ones at zero.
    traded = [row for row in ours if int(row["trades"]) > 0]
    assert len(traded) == len(golden) == 2469
    for mine, theirs in zip(traded, golden, strict=True):
        for column in ("timestamp_ms", "open", "high", "low", "close", "volume"):
            assert Decimal(mine[column]) == Decimal(theirs[column]), (column, mine, theirs)
    empty = [row for row in ours if int(row["trades"]) == 0]
    assert all(Decimal(row["volume"]) == 0 for row in empty)
    stamps = [int(row["timestamp_ms"]) for row in ours]
    assert stamps == list(range(stamps[0], stamps[-1] + 60_000, 60_000))
    assert sum(int(row["trades"]) for row in ours) == 12_477


def test_seconds_bars_sum_to_trades() -> None:
    path = DATA / "binance_BTCUSDT_trades_2021-01-08_000000-000046.csv.gz"
    trades = list(read_trades(path))
    bars, aggregator = aggregate_trades(trades, 1_000)
    assert sum((b.volume for b in bars), Decimal(0)) == sum((t.amount for t in trades), Decimal(0))
    assert sum(b.trades for b in bars) == len(trades) == 2001
    assert aggregator.duplicates == 0


def test_bad_interval_and_bad_file(tmp_path: Path) -> None:
    result = run_cli("bars", "--trades", str(XRP_TRADES), "--interval", "7m")
    assert result.returncode == 2 and "does not divide a day" in result.stderr
    broken = tmp_path / "broken.csv"
    broken.write_text("timestamp_ms,trade_id,price,amount,side\n1,2,abc,1,buy\n", encoding="utf-8")
    with pytest.raises(TradesFileError, match=r"broken.csv:2: malformed trade row"):
        list(read_trades(broken))
    result = run_cli("bars", "--trades", str(broken))
    assert result.returncode == 1 and "malformed trade row" in result.stderr
