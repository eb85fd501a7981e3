"""`volcast stream --metrics-port 0` serves Prometheus metrics that agree with Redis: a real
scrape over HTTP of the real command (a subprocess) streaming the simulator through ccxt."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from metrics_scrape import Samples, dashboard_names, scrape, served_names, value
from stream_harness import PATIENCE_S, delete_prefix, stream_settings, streamed_to_the_end, unique_prefix, write_windows

from streamer.simulator.faults import parse_faults
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from volcast.bar import Bar
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

async def port_from_log(stderr: asyncio.StreamReader, lines: list[str]) -> int:
    """The port the service logged ("stream metrics on http://127.0.0.1:N/metrics")."""
    while True:
        line = (await stderr.readline()).decode(errors="replace")
        if not line:
            raise AssertionError("the streamer exited before serving metrics:\n" + "".join(lines))
        lines.append(line)
        found = re.search(r"stream metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
        if found:
            return int(found.group(1))


async def drain(stderr: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stderr.readline():
        lines.append(line.decode(errors="replace"))


async def redis_view(redis: Any, keys: RedisKeys, feeds: list[Feed]) -> dict[Feed, dict[str, int]]:
    """Each feed's health counters and its bars' statuses, each feed read in one transaction (its
    keys share a hash slot, also on a cluster)."""
    view: dict[Feed, dict[str, int]] = {}
    for feed in feeds:
        pipe = redis.pipeline(transaction=True)
        pipe.hgetall(keys.health(feed))
        pipe.xrange(keys.bars(feed))
        health, entries = await pipe.execute()
        fields = {k.decode(): v.decode() for k, v in health.items()}
        numbers = {k: int(v) for k, v in fields.items() if v.lstrip("-").isdigit()}
        for _, bar_fields in entries:
            status = Bar.from_fields(bar_fields).status.value
            numbers[f"stream_{status}"] = numbers.get(f"stream_{status}", 0) + 1
        view[feed] = numbers
    return view


def total(samples: Samples, name: str, /, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (over feeds, or exchanges)."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= got)


def disagreements(samples: Samples, view: Mapping[Feed, Mapping[str, int]], per_feed: bool) -> list[str]:
    """Where the scrape differs from the health hashes and bar streams (empty: they agree)."""
    wrong: list[str] = []

    def check(what: str, got: float, want: int) -> None:
        if got != want:
            wrong.append(f"{what}: metrics {got}, redis {want}")

    groups: dict[str, list[Mapping[str, int]]] = {}
    for feed, numbers in view.items():  # per feed, or all the feeds of the exchange together
        groups.setdefault(feed.symbol if per_feed else "", []).append(numbers)
    for symbol, group in groups.items():
        labels = {"exchange": "binance", "interval": "1s", **({"symbol": symbol} if per_feed else {})}

        def summed(field: str, feeds: list[Mapping[str, int]] = group) -> int:
            return sum(numbers.get(field, 0) for numbers in feeds)

        for metric, field in (("trades", "trades"), ("reconnects", "reconnects")):
            check(f"{symbol} {metric}", value(samples, f"volcast_stream_{metric}_total", **labels), summed(field))
        for proof in ("trade", "liveness", "rest"):
            check(f"{symbol} closes by {proof}", value(samples, "volcast_stream_closes_total", **labels, proof=proof),
                  summed(f"closed_by_{proof}"))
        for status in ("complete", "backfilled", "gap"):
            check(f"{symbol} {status} bars", value(samples, "volcast_stream_bars_total", **labels, status=status),
                  summed(f"stream_{status}"))
        check(f"{symbol} bars closed", total(samples, "volcast_stream_bars_total", **labels), summed("bars_closed"))
    every = list(view.values())
    for metric, field in (("duplicate_trades", "duplicates"), ("late_trades", "late"),
                          ("malformed_trades", "malformed"), ("backfilled_trades", "backfilled_trades"),
                          ("gaps", "gaps"), ("watchdog_timeouts", "watchdog_timeouts")):
        check(metric, value(samples, f"volcast_stream_{metric}_total", exchange="binance", interval="1s"),
              sum(numbers[field] for numbers in every))
    check("malformed by reason", total(samples, "volcast_stream_malformed_by_reason_total"),
          sum(numbers["malformed"] for numbers in every))
    check("bars written", value(samples, "volcast_stream_bars_written_total"),
          sum(numbers.get(f"stream_{s}", 0) for numbers in every for s in ("complete", "backfilled", "gap")))
    return wrong


@pytest.mark.parametrize("per_feed", [True, False], ids=["per-feed", "per-exchange"])
async def test_stream_metrics_agree_with_redis(tmp_path: Path, per_feed: bool, redis_mode: str,
                                               redis_config: dict[str, Any]) -> None:
    files = write_windows(tmp_path, 20)
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    keys = RedisKeys(prefix)
    redis = redis_client(RedisSettings(**redis_config))
    env = {**os.environ, "VOLCAST_BINANCE_API_KEY": "simulator"}
    lines: list[str] = []
    try:
        # Dropped connections (backfills, backfilled bars, reconnects), repeated and malformed frames:
        # counters that are not all zero to compare.
        faults = parse_faults("drop_every_trades=300,duplicate_rate=0.03,malformed_rate=0.02")
        async with ReplayServer(tapes, speed=4, faults=faults, seed=7, start_on_subscribe=True) as server:
            # On the cluster, the events in shards of their own slots.
            settings = stream_settings(server, [t.symbol for t in tapes], prefix, history={"days": 0},
                                       redis={**redis_config, "event_shards": 3 if redis_mode == "cluster" else 1})
            raw = settings.model_dump(mode="json", include={"exchanges", "bars", "streamer", "redis", "history"})
            raw["metrics"] = {"per_feed": per_feed}  # --metrics-port turns them on
            leases = [] if per_feed else ["--leases"]  # the lease metrics, with the other labels
            (tmp_path / "config.yml").write_text(yaml.safe_dump(raw), encoding="utf-8")
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "volcast.cli", "stream", "--config", str(tmp_path / "config.yml"),
                "--metrics-port", "0", *leases, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert process.stderr is not None
            drained: asyncio.Task[None] | None = None
            try:
                port = await asyncio.wait_for(port_from_log(process.stderr, lines), PATIENCE_S)
                drained = asyncio.create_task(drain(process.stderr, lines))
                expected = await streamed_to_the_end(redis, keys, server, tapes, files)
                feeds = list(expected)
                # Bars keep closing (quiet feeds on pongs): wait for a scrape between two equal reads.
                deadline = time.monotonic() + PATIENCE_S
                wrong: list[str] = ["not compared yet"]
                while wrong and time.monotonic() < deadline:
                    before = await redis_view(redis, keys, feeds)
                    samples = await asyncio.to_thread(scrape, port)
                    after = await redis_view(redis, keys, feeds)
                    moved = before != after
                    wrong = ["redis moved during the scrape"] if moved else disagreements(samples, after, per_feed)
                    if wrong:
                        await asyncio.sleep(0.05)
                assert not wrong, wrong
            finally:
                process.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(process.wait(), PATIENCE_S)
                if drained is not None:
                    await asyncio.wait_for(drained, PATIENCE_S)
        assert code == 0, "".join(lines)
        # Every trade of the tapes counted once; the quiet feed's bars closed on pongs; the whole
        # family set is served, with the feeds' states and the close-delay histogram.
        trades = {feed.symbol: sum(b.trades or 0 for b in bars) for feed, bars in expected.items()}
        for symbol, count in trades.items():
            if per_feed:
                assert value(samples, "volcast_stream_trades_total", exchange="binance", symbol=symbol,
                             interval="1s") == count
        assert total(samples, "volcast_stream_trades_total") == sum(trades.values())
        for metric in ("reconnects", "backfilled_trades", "duplicate_trades", "malformed_trades"):
            assert total(samples, f"volcast_stream_{metric}_total") > 0, metric
        assert total(samples, "volcast_stream_bars_total", status="backfilled") > 0
        xrp = {"exchange": "binance", "symbol": "XRP/ETH", "interval": "1s"} if per_feed else {
            "exchange": "binance", "interval": "1s"}
        assert value(samples, "volcast_stream_closes_total", **xrp, proof="liveness") > 0
        assert value(samples, "volcast_stream_feeds", exchange="binance", interval="1s", state="live") == len(expected)
        closes = total(samples, "volcast_stream_closes_total")
        timed = total(samples, "volcast_stream_close_delay_seconds_count", exchange="binance", interval="1s")
        assert 0 < timed <= closes
        assert ("volcast_stream_lag_seconds", frozenset(xrp.items())) in samples
        for quantile in ("p50", "p99"):  # the worst feed's, whatever its sign (clock offsets)
            assert (f"volcast_stream_delivery_delay_{quantile}_seconds",
                    frozenset({("exchange", "binance"), ("interval", "1s")})) in samples
        assert ("process_resident_memory_bytes", frozenset()) in samples
        assert value(samples, "volcast_stream_stale_writes_total") == 0
        if leases:
            assert value(samples, "volcast_stream_leases_held") == len(expected)
            assert value(samples, "volcast_stream_lease_changes_total", change="acquired") >= len(expected)
        else:
            assert ("volcast_stream_leases_held", frozenset()) not in samples
        # Every stream metric the Grafana dashboard reads is served.
        assert dashboard_names("volcast_stream_") - served_names(samples) == set()
        assert dashboard_names("volcast_stream_")
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()


def test_metrics_off_by_default_and_port_checked(capsys: pytest.CaptureFixture[str]) -> None:
    """No endpoint unless asked; a bad --metrics-port is a usage error naming the option."""
    from volcast.cli import build_parser
    from volcast.settings import settings_from_mapping

    settings = settings_from_mapping({"exchanges": [{"id": "binance", "symbols": ["BTC/USDT"]}]}, env={})
    assert settings.metrics.enabled is False
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["stream", "--metrics-port", "70000"])
    assert exit_info.value.code == 2
    assert "--metrics-port" in capsys.readouterr().err
