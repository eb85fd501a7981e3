"""`volcast bars` reproduces independent golden bars from real trades, exactly."""

from __future__ import annotations

import csv
import gzip
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import cast

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
    assert sum(cast(int, b.trades) for b in bars) == len(trades) == 2001  # built from trades: never None
    assert aggregator.duplicates == 0


def test_bad_interval_and_bad_file(tmp_path: Path) -> None:
    result = run_cli("bars", "--trades", str(XRP_TRADES), "--interval", "7m")
    assert result.returncode == 2 and "does not divide a day" in result.stderr
    broken = tmp_path / "broken.csv"
    broken.write_text("timestamp_ms,trade_id,price,amount,side\n1610064000278,2,abc,1,buy\n", encoding="utf-8")
    with pytest.raises(TradesFileError, match=r"broken.csv:2: bad trade row: price 'abc' is not a number"):
        list(read_trades(broken))
    result = run_cli("bars", "--trades", str(broken))
    assert result.returncode == 1 and "bad trade row" in result.stderr


def _edited(tmp_path: Path, edits: dict[int, tuple[int, str]]) -> Path:
    """The XRP/ETH trades with some fields replaced: {line: (column, text)}."""
    with gzip.open(XRP_TRADES, "rt", newline="") as handle:
        lines = handle.read().splitlines()
    for line, (column, text) in edits.items():
        fields = lines[line - 1].split(",")
        fields[column] = text
        lines[line - 1] = ",".join(fields)
    path = tmp_path / "edited.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("value", ["-23", "NaN", "Infinity", "0", "1e400"])
def test_a_bad_value_is_refused_naming_file_and_line(tmp_path: Path, value: str) -> None:
    path = _edited(tmp_path, {40: (3, value)})
    result = run_cli("bars", "--trades", str(path))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"edited.csv:40: bad trade row: amount '{value}'" in result.stderr
    assert result.stdout == ""


def test_skipped_bad_rows_are_counted_and_their_bars_say_gap(tmp_path: Path) -> None:
    edits = {6: (3, "-23"), 10: (3, "NaN"), 13: (3, "Infinity"), 500: (2, "-1"), 900: (4, "BUY")}
    path = _edited(tmp_path, edits)
    out = tmp_path / "bars.csv"
    result = run_cli("bars", "--trades", str(path), "--skip-bad-rows", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "5 bad rows skipped" in result.stderr and "edited.csv:500: bad trade row: price '-1'" in result.stderr
    with out.open(newline="") as handle:
        ours = list(csv.DictReader(handle))
    with gzip.open(XRP_TRADES, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    bad = [rows[line - 2] for line in edits]
    bad_bars = {int(r["timestamp_ms"]) - int(r["timestamp_ms"]) % 60_000 for r in bad}
    assert {int(b["timestamp_ms"]) for b in ours if b["status"] == "gap"} == bad_bars
    assert all(b["status"] == "complete" for b in ours if int(b["timestamp_ms"]) not in bad_bars)
    # Exact over the good rows: the bad rows' amounts are missing from the volume, nothing else is.
    good = sum((Decimal(r["amount"]) for i, r in enumerate(rows, start=2) if i not in edits), Decimal(0))
    assert sum((Decimal(b["volume"]) for b in ours), Decimal(0)) == good
    assert sum(int(b["trades"]) for b in ours) == 12_477 - len(edits)


def test_unreadable_files_give_one_line_and_exit_1(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.csv.gz"
    truncated.write_bytes(XRP_TRADES.read_bytes()[:4000])
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"timestamp_ms,trade_id,price,amount,side\n1\x00,2,3,4,buy\n")
    for path, message in (
        (truncated, "truncated or corrupt gzip"),
        (binary, "binary.csv:1: not UTF-8 text"),
        (nul, "nul.csv:2: bad trade row: timestamp"),
        (tmp_path / "missing.csv", "cannot open"),
    ):
        result = run_cli("bars", "--trades", str(path))
        assert result.returncode == 1, (path, result.stderr)
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_an_output_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    result = run_cli("bars", "--trades", str(XRP_TRADES), "--out", "/nonexistent/dir/x.csv")
    assert result.returncode == 1
    assert result.stderr == "volcast bars: cannot write /nonexistent/dir/x.csv: No such file or directory\n"
    # A failed run leaves no half-written file behind.
    broken = _edited(tmp_path, {3000: (3, "NaN")})
    out = tmp_path / "bars.csv"
    assert run_cli("bars", "--trades", str(broken), "--out", str(out)).returncode == 1
    assert list(tmp_path.iterdir()) == [broken]


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "volcast.cli", "bars", "--trades", str(XRP_TRADES)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    head = [process.stdout.readline() for _ in range(3)]
    process.stdout.close()  # what `| head -3` does
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert head[0].startswith(b"timestamp_ms,open") and stderr == ""
