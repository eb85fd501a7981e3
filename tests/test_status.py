"""``volcast status`` against the real Redis on 127.0.0.1:6379, under a key prefix of its own."""

from __future__ import annotations

import argparse
import asyncio
import socket
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from forecaster.calibration import BandCalibrator
from forecaster.model_store import ModelRecord
from forecaster.payload import Prediction
from streamer.health import FeedHealth, FeedState
from volcast.bar import Bar, BarStatus
from volcast.commands import status
from volcast.keys import Feed, RedisKeys
from volcast.settings import Settings, settings_from_mapping

REDIS_URL = "redis://127.0.0.1:6379/0"
MINUTE = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % MINUTE


def _settings(prefix: str, url: str = REDIS_URL) -> Settings:
    return settings_from_mapping(
        {
            "exchanges": [{"id": "binance", "symbols": ["BTC/USDT", "ETH/USDT"]}],
            "bars": {"interval": "1m"},
            "redis": {"url": url, "key_prefix": prefix},
        },
        env={},
    )


def _config_file(tmp_path: Path, settings: Settings) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(
        "exchanges: [{id: binance, symbols: [BTC/USDT, ETH/USDT]}]\n"
        "bars: {interval: 1m}\n"
        f"redis: {{url: '{settings.redis.url}', key_prefix: '{settings.redis.key_prefix}'}}\n",
        encoding="utf-8",
    )
    return path


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    status.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def prefix(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("VOLCAST_REDIS_URL", "VOLCAST_REDIS_PASSWORD", "VOLCAST_REDIS_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    prefix = f"test-status-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _bar(open_time_ms: int, volume: str, trades: int, status_: BarStatus = BarStatus.COMPLETE) -> Bar:
    price = Decimal("60000.5")
    return Bar(
        open_time_ms=open_time_ms, open=price, high=price, low=price, close=price, volume=Decimal(volume),
        quote_volume=Decimal(volume) * price, trades=trades, buy_volume=Decimal(volume), sell_volume=Decimal(0),
        vwap=price, first_trade_id=1, last_trade_id=trades, status=status_,
    )


# The scores and forecaster hashes as the worker writes them (text; copied from a running stack).
SCORES = {"n": "1440", "rmse_log": "0.4125", "mae": "12.5", "naive_mae": "14.25", "mase": "0.875",
          "from_ms": str(T0 - 1440 * MINUTE), "to_ms": str(T0), "guarded": "2", "last_guard_reason": "overflow",
          "last_guard_ms": str(T0 - MINUTE), "banded": "1000", "covered": "801", "coverage_80": "0.801"}
# The default model: 60 coming bars and the 5m, 15m and 1h windows, 63 horizons; the next bar
# (index 0) counts its coverage in the scores hash, the others here.
TARGETS = 63
CALIBRATION = {"horizons": str(TARGETS), "c_low": "0.125" + ",0.0" * (TARGETS - 1),
               "c_high": "-0.25" + ",0.0" * (TARGETS - 1), "n": "75" + ",70" * (TARGETS - 1),
               "to_ms": str(T0) + f",{T0}" * (TARGETS - 1), "step": "0.02", "warm_up": "60",
               "banded": "0" + ",100" * (TARGETS - 1), "covered": "0" + ",80" * (TARGETS - 2) + ",75"}


def packed_calibration() -> dict[str, str]:
    """``CALIBRATION`` as the worker writes it now: horizon 0 as text, every horizon packed."""
    calibrator = BandCalibrator(TARGETS)
    row = int(calibrator.rows(["BTC/USDT"])[0])
    calibrator.c_low[row], calibrator.c_high[row] = [0.125] + [0.0] * (TARGETS - 1), [-0.25] + [0.0] * (TARGETS - 1)
    calibrator.n[row], calibrator.to_ms[row] = [75] + [70] * (TARGETS - 1), T0
    calibrator.banded[row] = [0] + [100] * (TARGETS - 1)
    calibrator.covered[row] = [0] + [80] * (TARGETS - 2) + [75]
    return calibrator.fields(row)
FORECASTER = {
    "consumer": "host-1", "model_name": "lstm", "model_version": "7", "baseline": "0", "fallback_fits": "1",
    "mqtt_connected": "1", "unpublished": "0", "record_errors": "0", "prepared_forecasts": "12",
    "window_forecasts": "3", "last_read_ms": "0.52", "last_predict_ms": "3.46", "last_submit_ms": "0.54",
    "last_prepare_ms": "1.25", "last_record_ms": "0.75", "last_bar_ms": str(T0), "last_batch_size": "1",
    "predictions": "41", "batches": "41", "guarded": "0", "last_guard_reason": "", "last_guard_ms": "",
}


def _populate(settings: Settings, now: int, calibration: dict[str, str] | None = None) -> Feed:
    """The keys a running stack writes, for BTC/USDT only (ETH/USDT stays as a starting feed);
    ``calibration``: the calibrator's state (default: as the worker writes it)."""
    keys = RedisKeys(settings.redis.key_prefix)
    feed = Feed("binance", "BTC/USDT", MINUTE)
    client = redis.Redis.from_url(REDIS_URL)
    health = FeedHealth(
        state=FeedState.LIVE, last_trade_ms=now - 1_500, last_message_ms=now - 1_400, trades=1234,
        duplicates=3, late=2, gaps=1, reconnects=4, backfilled_trades=56, lag_ms=500,  # at its heartbeat, now - 1 s
    )
    client.hset(keys.health(feed), mapping=health.to_fields(now - 1_000))  # type: ignore[arg-type]
    client.pexpire(keys.health(feed), 90_000)
    for i, (volume, trades) in enumerate([("1.5", 30), ("2.25", 45), ("0.125", 120)]):
        status_ = BarStatus.BACKFILLED if i == 2 else BarStatus.COMPLETE
        client.xadd(keys.bars(feed), _bar(T0 + i * MINUTE, volume, trades, status_).to_fields(),  # type: ignore[arg-type]
                    id=f"{T0 + i * MINUTE}-0")
    open_fields = {**_bar(T0 + 3 * MINUTE, "0.5", 7).to_fields(), "updated_ms": str(now)}
    client.hset(keys.open_bar(feed), mapping=open_fields)  # type: ignore[arg-type]
    prediction = Prediction(
        feed=feed, open_time_ms=T0 + 3 * MINUTE, last_bar_ms=T0 + 2 * MINUTE, last_volume=0.125, volume=0.75,
        quantiles={0.1: 0.2, 0.5: 0.7, 0.9: 1.9}, model_name="lstm", model_version="7", baseline=False,
        created_ms=now - 5_000,
    )
    client.hset(keys.prediction(feed), mapping=prediction.to_fields())  # type: ignore[arg-type]
    client.hset(keys.scores(feed), mapping=SCORES)  # type: ignore[arg-type]
    client.hset(keys.calibration(feed), mapping=calibration or packed_calibration())  # type: ignore[arg-type]
    client.hset(keys.model(), mapping=ModelRecord("lstm", "7", {"rmse_log": 0.4}, now - 3_600_000).to_fields())  # type: ignore[arg-type]
    client.hset(keys.refit(), mapping={"last_run_ms": str(now - 3_600_000), "result": "promoted",
                                       "next_run_ms": str(now + 7_200_000), "message": "challenger 7 beat 6"})
    client.hset(keys.forecaster(), mapping={**FORECASTER, "updated_ms": str(now - 2_000)})  # type: ignore[dict-item]
    client.hset(keys.lease(feed), mapping={"owner": "host-1:42:ab12", "token": "3", "since_ms": str(now - 9_000)})
    client.pexpire(keys.lease(feed), 6_000)
    client.zadd(keys.streamers(), {"host-1:42:ab12": now + 60_000, "gone:1:0000": now - 60_000})
    client.hset(keys.streamer("host-1:42:ab12"), mapping={"feeds": "1", "stale_writes": "2", "acquired": "3",
                                                          "lost": "1", "released": "0", "host": "host-1", "pid": "42"})
    client.close()
    return feed


@pytest.mark.parametrize("calibration", ["packed", "text"])
def test_json_shows_every_field_from_the_contract_keys(prefix: str, tmp_path: Path, calibration: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``calibration``: the calibrator's state as the worker writes it, or as it wrote it before
    the packed form (comma-separated text), which a store may still hold."""
    settings = _settings(prefix)
    now = status_now()
    _populate(settings, now, packed_calibration() if calibration == "packed" else CALIBRATION)
    assert status.main(_args("--config", str(_config_file(tmp_path, settings)), "--json")) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["schema"] == 1
    assert report["redis"] == {"url": REDIS_URL, "key_prefix": prefix}
    btc, eth = report["feeds"]
    assert (btc["exchange"], btc["symbol"], btc["interval"]) == ("binance", "BTC/USDT", "1m")
    assert btc["state"] == "live"
    assert 1.4 <= btc["last_trade_age_s"] < 60
    assert {k: btc[k] for k in ("trades", "duplicates", "late", "gaps", "reconnects", "backfilled_trades")} == {
        "trades": 1234, "duplicates": 3, "late": 2, "gaps": 1, "reconnects": 4, "backfilled_trades": 56}
    # One read: the rate comes from the last closed bar, 120 trades in a minute.
    assert (btc["trades_per_s"], btc["trades_per_s_from"]) == (2.0, "bar")
    assert btc["bars"] == {
        "count": 3, "first_open_ms": T0, "last_open_ms": T0 + 2 * MINUTE,
        "last": {"open_time_ms": T0 + 2 * MINUTE, "close_time_ms": T0 + 3 * MINUTE, "volume": "0.125",
                 "trades": 120, "status": "backfilled"},
    }
    assert btc["open_bar"]["volume"] == "0.5" and btc["open_bar"]["trades"] == 7
    assert btc["prediction"]["open_time_ms"] == T0 + 3 * MINUTE
    assert (btc["prediction"]["volume"], btc["prediction"]["model_name"], btc["prediction"]["model_version"]) == (
        0.75, "lstm", "7")
    assert (btc["scores"]["rmse_log"], btc["scores"]["mase"], btc["scores"]["n"]) == (0.4125, 0.875, 1440)
    assert isinstance(btc["scores"]["n"], int) and btc["scores"]["from_ms"] == T0 - 1440 * MINUTE
    # Live coverage of the published band, per feed and over all feeds; the calibrator's state.
    assert (btc["scores"]["coverage_80"], btc["scores"]["banded"], btc["scores"]["covered"]) == (0.801, 1000, 801)
    calibrator = btc["calibration"]  # not ``calibration``: the parameter (a str) would type it
    assert {k: calibrator[k] for k in ("calibrated", "n", "warm_up", "c_low", "c_high", "to_ms")} == {
        "calibrated": True, "n": 75, "warm_up": 60, "c_low": 0.125, "c_high": -0.25, "to_ms": T0}
    assert calibrator["banded"] == [0] + [100] * (TARGETS - 1) and calibrator["covered"][-1] == 75
    assert eth["calibration"] is None and eth["scores"] is None
    by_horizon = report["coverage"].pop("by_horizon")
    assert report["coverage"] == {"coverage_80": 0.801, "banded": 1000, "covered": 801, "feeds": 1, "nominal": 0.8}
    assert by_horizon["labels"][:2] == ["+1", "+2"] and by_horizon["labels"][59:] == ["+60", "5m", "15m", "1h"]
    assert by_horizon["coverage_80"] == [None] + [0.8] * (TARGETS - 2) + [0.75]
    assert by_horizon["banded"] == [0] + [100] * (TARGETS - 1)
    assert report["model"] == {"name": "lstm", "version": "7", "promoted_ms": now - 3_600_000,
                               "scores": {"rmse_log": 0.4}}
    assert report["refit"] == {"last_run_ms": now - 3_600_000, "result": "promoted",
                               "next_run_ms": now + 7_200_000, "message": "challenger 7 beat 6"}
    forecaster = report["forecaster"]
    assert forecaster["updated_ms"] == now - 2_000 and forecaster["consumer"] == "host-1"
    # Timings are float milliseconds (they once read as null), counters integers, flags booleans.
    assert (forecaster["last_read_ms"], forecaster["last_predict_ms"]) == (0.52, 3.46)
    assert forecaster["predictions"] == 41 and isinstance(forecaster["predictions"], int)
    assert forecaster["baseline"] is False and forecaster["mqtt_connected"] is True
    assert forecaster["last_bar_ms"] == T0 and forecaster["last_guard_ms"] is None
    # The second feed has written nothing yet: nulls, not a crash.
    assert eth["state"] is None and eth["trades"] is None and eth["trades_per_s"] is None
    assert eth["bars"] == {"count": None, "first_open_ms": None, "last_open_ms": None, "last": None}
    assert eth["prediction"] is None and eth["scores"] is None and eth["open_bar"] is None
    # Leases (streamer.leases): BTC's owner and token; nobody holds ETH; one live streamer.
    assert (btc["lease"]["owner"], btc["lease"]["token"]) == ("host-1:42:ab12", 3)
    assert 0 < btc["lease"]["expires_in_ms"] <= 6_000 and eth["lease"] is None
    assert report["streamers"] == [{"name": "host-1:42:ab12", "feeds": 1, "stale_writes": 2, "acquired": 3,
                                    "lost": 1, "released": 0, "host": "host-1", "pid": 42}]


def status_now() -> int:
    from volcast.status_report import now_ms

    return now_ms()


def test_table_lines_up_the_same_facts(prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(prefix)
    _populate(settings, status_now())
    assert status.main(_args("--config", str(_config_file(tmp_path, settings)))) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    feed_header = next(i for i, line in enumerate(lines) if line.startswith("FEED"))
    header, btc, eth = lines[feed_header : feed_header + 3]
    assert btc.split()[:3] == ["binance", "BTC/USDT", "live"]
    # Columns are aligned: each value starts under its header.
    for column, value in (("TRADES/S", "2.00"), ("TRADES", "1234"), ("DUPLICATES", "3"), ("RECONNECTS", "4"),
                          ("BACKFILLED", "56")):
        start = header.index(column + " ") if column != "BACKFILLED" else header.index(column)
        assert btc[start:].startswith(value), (column, btc)
    assert eth.split()[2:] == ["-"] * 11 or set(eth.split()[2:]) == {"-"}
    bars_line = next(line for line in lines if line.startswith("binance BTC/USDT") and "backfilled" in line)
    assert "0.125" in bars_line and "120" in bars_line
    forecast_line = next(line for line in lines if line.startswith("binance BTC/USDT") and "lstm 7" in line)
    assert "0.750" in forecast_line and "0.412" in forecast_line and "0.875" in forecast_line
    assert forecast_line.rstrip().endswith("0.801 of 1000  calibrated"), forecast_line
    assert "80% band coverage, all feeds: 0.801 of 1000 bars of 1 feed(s) (nominal 0.80)" in lines
    assert ("80% band coverage by horizon, all feeds: +2 0.800, +5 0.800, +15 0.800, +30 0.800, +60 0.800, "
            "5m 0.800, 15m 0.800, 1h 0.750 (min 0.750, max 0.800 over 62 horizons)") in lines
    lease_header = next(i for i, line in enumerate(lines) if line.startswith("LEASE"))
    assert lines[lease_header + 1].split()[:4] == ["binance", "BTC/USDT", "host-1:42:ab12", "3"]
    assert lines[lease_header + 2].split()[2:4] == ["-", "(nobody)"]
    assert "streamer host-1:42:ab12: 1 feeds, 2 stale writes refused, pid 42 on host-1" in lines
    assert any(line.startswith("model") and "lstm version 7" in line for line in lines)
    assert any(line.startswith("refit") and "promoted" in line and "next run in" in line for line in lines)


def test_bars_lost_in_a_failover_show_and_missing_ones_stand_out(prefix: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The streamer's bars_restored / bars_not_restored (streamer/lost_bars.py): always in JSON; in
    the table a column only once a feed has one, and a DATA LOSS line for bars that stay missing."""
    settings = _settings(prefix)
    now = status_now()
    feed = _populate(settings, now)
    config = str(_config_file(tmp_path, settings))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        # No loss (the health hash holds both at 0): JSON says 0, the table has no column, no line.
        assert status.main(_args("--config", config, "--json")) == 0
        btc, eth = orjson.loads(capsys.readouterr().out)["feeds"]
        assert (btc["bars_restored"], btc["bars_not_restored"]) == (0, 0)
        assert (eth["bars_restored"], eth["bars_not_restored"]) == (None, None)
        assert status.main(_args("--config", config)) == 0
        out = capsys.readouterr().out
        assert "LOST BARS" not in out and "DATA LOSS" not in out
        for restored, missing in ((3, 0), (3, 2), (0, 1)):
            health = FeedHealth(state=FeedState.LIVE, last_trade_ms=now - 1_500, trades=1234, lag_ms=500,
                                bars_restored=restored, bars_not_restored=missing)
            client.hset(RedisKeys(prefix).health(feed), mapping=health.to_fields(now - 1_000))  # type: ignore[arg-type]
            assert status.main(_args("--config", config, "--json")) == 0
            btc, eth = orjson.loads(capsys.readouterr().out)["feeds"]
            assert (btc["bars_restored"], btc["bars_not_restored"]) == (restored, missing)
            assert status.main(_args("--config", config)) == 0
            lines = capsys.readouterr().out.splitlines()
            feed_header = next(i for i, line in enumerate(lines) if line.startswith("FEED"))
            header, btc_row, eth_row = lines[feed_header : feed_header + 3]
            assert header.endswith("LOST BARS RESTORED/MISSING"), header
            column = header.index("LOST BARS RESTORED/MISSING")
            assert btc_row[column:] == f"{restored}/{missing}" and eth_row[column:] == "-"
            losses = [line for line in lines if "DATA LOSS" in line]
            if not missing:
                assert losses == []
                continue
            bars = "bar" if missing == 1 else "bars"
            assert losses == [
                f"binance BTC/USDT: DATA LOSS: {missing} closed {bars} missing from Redis (lost in a failover, "
                "older than the streamer keeps to write back); they stay missing and are read as empty bars. "
                'What to do: docs/operations.md, "Failover: a master dies"']
            # Right under the feeds, before the bars table.
            assert lines.index(losses[0]) == feed_header + 3
    finally:
        client.close()


def test_empty_redis_gives_dashes_and_nulls(prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config_file(tmp_path, _settings(prefix))
    assert status.main(_args("--config", str(config))) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("binance ")]
    assert len(rows) == 6  # two feeds in each of the three tables
    for row in rows:
        assert set(row.split()[2:]) == {"-"}, row
    assert "model       -" in out and "refit       -" in out and "forecaster  -" in out
    assert status.main(_args("--config", str(config), "--json")) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["model"] is None and report["refit"] is None and report["forecaster"] is None
    assert all(feed["state"] is None and feed["bars"]["count"] is None for feed in report["feeds"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_unreachable_redis_exits_1_saying_what_to_check(prefix: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://:hunter2@127.0.0.1:{_free_port()}/0"
    config = _config_file(tmp_path, _settings(prefix, url))
    assert status.main(_args("--config", str(config))) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in captured.err
    assert "VOLCAST_REDIS_URL" in captured.err
    assert "hunter2" not in captured.err


def test_password_in_url_is_never_printed(prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The shared Redis has no password; Redis accepts AUTH for its default user then, so this connects.
    config = _config_file(tmp_path, _settings(prefix, "redis://:hunter2@127.0.0.1:6379/0"))
    assert status.main(_args("--config", str(config))) == 0
    assert status.main(_args("--config", str(config), "--json")) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "redis://:***@127.0.0.1:6379/0" in out


async def test_watch_redraws_and_takes_the_rate_from_the_counter(prefix: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(prefix)
    now = status_now()
    feed = _populate(settings, now)
    keys = RedisKeys(prefix)
    client = redis.Redis.from_url(REDIS_URL)
    task = asyncio.create_task(status._run(settings, json_out=True, watch=0.05, check=None))
    reports: list[dict[str, Any]] = []
    try:
        for _ in range(200):
            await asyncio.sleep(0.02)
            lines = capsys.readouterr().out.splitlines()
            reports += [orjson.loads(line) for line in lines]
            if len(reports) == 1:
                # The streamer's next heartbeat: 500 more trades in 2 s of its clock.
                client.hset(keys.health(feed), mapping={"trades": "1734", "updated_ms": str(now + 1_000)})
            if len(reports) >= 3:
                break
    finally:
        task.cancel()
        client.close()
    assert len(reports) >= 3
    assert reports[0]["feeds"][0]["trades_per_s_from"] == "bar"
    rates = [(r["feeds"][0]["trades_per_s"], r["feeds"][0]["trades_per_s_from"]) for r in reports[1:]]
    assert (250.0, "counter") in rates


async def test_watch_table_clears_the_screen(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    task = asyncio.create_task(status._run(_settings(prefix), json_out=False, watch=0.05, check=None))
    out = ""
    try:
        for _ in range(200):
            await asyncio.sleep(0.02)
            out += capsys.readouterr().out
            if out.count(status.CLEAR) >= 2:
                break
    finally:
        task.cancel()
    assert out.count(status.CLEAR) >= 2
    assert out.count("volcast status at") == out.count(status.CLEAR)


def test_check_reports_missing_heartbeats(prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(prefix)
    config = str(_config_file(tmp_path, settings))
    assert status.main(_args("--config", config, "--check", "redis")) == 0
    assert status.main(_args("--config", config, "--check", "stream")) == 3
    assert "no heartbeat for binance BTC/USDT, binance ETH/USDT" in capsys.readouterr().out
    assert status.main(_args("--config", config, "--check", "forecast")) == 3
    _populate(settings, status_now())
    assert status.main(_args("--config", config, "--check", "forecast")) == 0
    assert status.main(_args("--config", config, "--check", "stream")) == 3  # ETH/USDT still silent
    assert "ETH/USDT" in capsys.readouterr().out


# -- the documented JSON schema (docs/operations.md) ------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,), "float": (float,), "string": (str,), "boolean": (bool,), "object": (dict,), "list": (list,),
}


def documented_schema() -> list[tuple[str, str, bool]]:
    """(path or pattern, type, nullable) from the schema table: ``feeds[].bars.count``,
    ``forecaster.<other>_ms`` ..."""
    text = DOCS.read_text(encoding="utf-8")
    table = text[text.index("### JSON schema"):]
    rows: list[tuple[str, str, bool]] = []
    for line in table.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        names = [part.split("`")[1] for part in cells[0].split(",") if "`" in part]
        first = names[0]
        parent = first.rpartition(".")[0]
        kind = cells[1].split()[0]
        nullable = "or null" in cells[1]
        for name in [first, *[f"{parent}.{n}" if parent else n for n in names[1:]]]:
            if "(" in cells[0].split(",")[0] and name != first:
                continue  # examples in parentheses, not fields of their own
            rows.append((name, kind, nullable))
    return rows


def _matches(path: str, pattern: str) -> bool:
    if "<other>" not in pattern:
        return path == pattern
    prefix, _, suffix = pattern.partition("<other>")
    return path.startswith(prefix) and path.endswith(suffix) and "." not in path[len(prefix):]


def _leaves(value: Any, path: str, schema: list[tuple[str, str, bool]]) -> Iterator[tuple[str, Any]]:
    """Every (path, value) of the report down to the fields the schema lists; a list's items are
    described by their fields (``feeds[].state``), an object the schema does not open is a leaf."""
    if path and not path.endswith("[]"):
        yield path, value
    opened = not path or any(p.startswith((path + ".", path + "[]")) for p, _, _ in schema)
    if isinstance(value, dict) and opened:
        for key, inner in value.items():
            yield from _leaves(inner, f"{path}.{key}" if path else key, schema)
    elif isinstance(value, list) and opened:
        for item in value:
            yield from _leaves(item, f"{path}[]", schema)


def test_every_json_field_has_its_documented_type(prefix: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(prefix)
    _populate(settings, status_now())
    assert status.main(_args("--config", str(_config_file(tmp_path, settings)), "--json")) == 0
    report = orjson.loads(capsys.readouterr().out)
    schema = documented_schema()
    exact = {p: (k, n) for p, k, n in schema if "<other>" not in p}
    patterns = [(p, k, n) for p, k, n in schema if "<other>" in p]
    checked = 0
    for path, value in _leaves(report, "", schema):
        rule = exact.get(path) or next(((k, n) for p, k, n in patterns if _matches(path, p)), None)
        assert rule is not None, f"{path} is not in the schema of docs/operations.md"
        kind, nullable = rule
        if value is None:
            assert nullable, f"{path} is null but documented as {kind}"
            continue
        wanted = JSON_TYPES[kind]
        assert isinstance(value, wanted) and not (kind in ("integer", "float") and isinstance(value, bool)), (
            f"{path} = {value!r} is not {kind}")
        checked += 1
    assert checked > 80


def test_check_redis_with_redis_down_exits_3(prefix: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = str(_config_file(tmp_path, _settings(prefix, f"redis://127.0.0.1:{_free_port()}/0")))
    for part in ("redis", "stream", "forecast"):
        assert status.main(_args("--config", config, "--check", part)) == 3
        out = capsys.readouterr().out
        assert f"{part}: unhealthy: cannot reach Redis" in out


def test_each_feed_says_why_a_baseline_serves_it_after_a_promotion(
    prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lstm version 7 is promoted and loaded, yet BTC/USDT (3 bars) is forecast by HAR: say why."""
    settings = _settings(prefix)
    now = status_now()
    feed = _populate(settings, now)
    keys = RedisKeys(prefix)
    client = redis.Redis.from_url(REDIS_URL)
    baseline = Prediction(
        feed=feed, open_time_ms=T0 + 3 * MINUTE, last_bar_ms=T0 + 2 * MINUTE, last_volume=0.125, volume=0.5,
        quantiles={}, model_name="har", model_version="baseline", baseline=True, created_ms=now - 1_000,
    )
    client.hset(keys.prediction(feed), mapping=baseline.to_fields())  # type: ignore[arg-type]
    client.close()
    config = str(_config_file(tmp_path, settings))
    assert status.main(_args("--config", config, "--json")) == 0
    btc, eth = orjson.loads(capsys.readouterr().out)["feeds"]
    assert btc["baseline_reason"] == ("history too short: 3 bars in Redis, lstm version 7 needs 1440 (the bars "
                                      "its HAR part reads, a day of 1-minute bars; its look_back is 60)")
    assert eth["baseline_reason"] is None
    assert status.main(_args("--config", config)) == 0
    table = capsys.readouterr().out
    assert "binance BTC/USDT: baseline because history too short: 3 bars in Redis" in table


def test_no_reason_when_the_model_made_the_forecast(prefix: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(prefix)
    _populate(settings, status_now())
    assert status.main(_args("--config", str(_config_file(tmp_path, settings)), "--json")) == 0
    btc, _ = orjson.loads(capsys.readouterr().out)["feeds"]
    assert btc["prediction"]["baseline"] is False and btc["baseline_reason"] is None


def test_refit_line_says_the_result_once(prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(prefix)
    now = status_now()
    _populate(settings, now)
    client = redis.Redis.from_url(REDIS_URL)
    client.hset(RedisKeys(prefix).refit(), mapping={
        "result": "promoted", "message": "version 8 promoted: challenger rmse_log 0.41 vs lstm version 7 0.45"})
    client.close()
    assert status.main(_args("--config", str(_config_file(tmp_path, settings)))) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("refit"))
    assert line.count("promoted") == 1 and "version 8 promoted: challenger" in line, line


def test_refit_outcome_phrases() -> None:
    from volcast.status_render import refit_outcome

    assert refit_outcome("promoted", "version 1 promoted: challenger 0.4 vs har baseline 0.5") == (
        "version 1 promoted: challenger 0.4 vs har baseline 0.5")
    assert refit_outcome("kept", "challenger 0.6 vs lstm version 2 0.5") == "kept: challenger 0.6 vs lstm version 2 0.5"
    assert refit_outcome("skipped", "") == "skipped"
    assert refit_outcome(None, None) == ""


def test_last_trade_age_is_on_the_exchange_clock(prefix: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A replay at 60x (the demo) stamps trades hours away from our clock; the streamer's lag says
    how old the newest trade is on the replay's own clock."""
    settings = _settings(prefix)
    now = status_now()
    feed = _populate(settings, now)
    client = redis.Redis.from_url(REDIS_URL)
    for shift in (-14 * 3_600_000, 6 * 86_400_000):  # trades 14 h in our past, or days in our future (--loop)
        health = FeedHealth(state=FeedState.LIVE, last_trade_ms=now + shift, last_message_ms=now - 200, trades=9,
                            lag_ms=1_500)
        client.hset(RedisKeys(prefix).health(feed), mapping=health.to_fields(now - 1_000))  # type: ignore[arg-type]
        assert status.main(_args("--config", str(_config_file(tmp_path, settings)), "--json")) == 0
        age = orjson.loads(capsys.readouterr().out)["feeds"][0]["last_trade_age_s"]
        assert 2.5 <= age < 60, age
    client.close()
