"""The soak benchmark in short (benchmarks/soak.py), and the reference its bar check relies on.

The soak runs every service as a real process against a looping replay of real trades with
faults on; what it must show (issue 10): no crash, no inexact bar, a pending list that stays
bounded, predictions published. "Bounded" here, after the warm-up:

- the pending list (delivered, not acknowledged) never holds more than ``PENDING_CAP`` events:
  one full read of a worker (forecaster/event_reads.py READ_COUNT). The largest honest burst is a
  loop of the replay, whose jump over the idle hours closes at most a day of empty 1-minute bars
  per feed at once (3 x 1440 events); the failure this guards against grew it to 20,000;
- no event stays pending longer than ``PENDING_AGE_S`` (120 s), and, with both workers alive,
  none is claimed (counted from their logs): a worker claims only the events of one that is gone
  or cannot publish (its alive key). Before that rule the two claimed each other's backlog after
  ``claim_idle`` (30 s), handled it twice while new events waited, and the pending list grew to
  20,000. A healthy worker's oldest pending event peaked at 59.5 s in a 30-minute run (model
  swaps every 30 s on a machine at load 4.5): the bound catches a backlog that grows, not a peak;
- events not yet delivered (lag) stay under the same cap: a worker that stops reading shows
  there, not in the pending list.

The run lasts 3 minutes, not 2: at 1800x one pass of the three files takes 110 to 155 s
(depending on the time of day the replay re-bases them to), and the first loop, with its burst
of bars, is where the forecaster crashed (IndexError in forecaster/bar_matrix.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from servers import HAS_REDIS

from streamer.offline import aggregate_trades
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from streamer.simulator.timeline import DAY_MS, Timeline
from streamer.trades_csv import read_trades
from volcast.bar import Trade

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from soak_reference import ReferenceBars, replay_timeline  # noqa: E402

DATA = ROOT / "tests" / "data"
ETH = DATA / "unknown-exchange_ETHUSDT_trades_2023-02-02_0920.csv.gz"
BTC = DATA / "binance_BTCUSDT_trades_2021-01-08_000000-000046.csv.gz"
MINUTE_MS = 60_000
PENDING_CAP = 10_000
PENDING_AGE_S = 120.0
SOAK_MINUTES = 3


def _looped(path: Path, shift_ms: int, period_ms: int, loops: int) -> list[Trade]:
    """The file's trades as a looping replay sends them, built from the CSV, not the simulator."""
    trades = list(read_trades(path))
    span = trades[-1].trade_id - trades[0].trade_id + 1
    return [replace(t, timestamp_ms=t.timestamp_ms + shift_ms + loop * period_ms, trade_id=t.trade_id + loop * span)
            for loop in range(loops) for t in trades]


def test_reference_accepts_exact_bars_across_a_loop_and_flags_the_rest() -> None:
    tape = load_tape(ETH)
    shift = 1_000 * DAY_MS
    timeline = Timeline.build([tape], [shift])
    expected, _ = aggregate_trades(_looped(ETH, shift, timeline.period_ms, 2), MINUTE_MS)
    assert len(expected) > timeline.period_ms // MINUTE_MS  # the empty bars between the passes too

    exact = ReferenceBars(tape, timeline, 0, MINUTE_MS)
    exact.compare(expected[:100])
    exact.compare(expected[100:])  # in two reads, as the soak reads them
    assert (exact.check.complete, exact.check.inexact_complete, exact.check.missing) == (len(expected), 0, 0)

    wrong = ReferenceBars(tape, timeline, 0, MINUTE_MS)
    bad = list(expected)
    bad[3] = replace(bad[3], volume=bad[3].volume + Decimal("0.001"))
    del bad[10:12]
    wrong.compare(bad)
    assert (wrong.check.inexact_complete, wrong.check.missing) == (1, 2)
    assert wrong.check.examples[0].fields["volume"][1] == expected[3].to_fields()["volume"]


async def test_the_timeline_is_read_back_from_a_running_replay() -> None:
    tapes = [load_tape(BTC), load_tape(ETH)]
    async with ReplayServer(tapes, speed=100_000, loop=True) as server:
        await server.started.wait()
        timeline = None
        for _ in range(100):
            timeline = await asyncio.to_thread(replay_timeline, server.rest_url, tapes)
            if timeline is not None:
                break
            await asyncio.sleep(0.05)
    assert timeline is not None
    assert timeline.shifts_ms == server.timeline.shifts_ms
    assert timeline.period_ms == server.timeline.period_ms


def _fail(result: dict[str, Any], what: str) -> str:
    keys = ("crash_details", "bars", "pending", "pending_oldest_s", "pending_end_by_consumer", "events_claimed",
            "lag_max_after_warmup", "predictions", "replay_loops", "uptime_start", "uptime_end", "logs")
    return what + "".join(f"\n{k}: {json.dumps(result.get(k))[:1500]}" for k in keys)


@pytest.mark.slow
@pytest.mark.timeout(SOAK_MINUTES * 60 + 240)
@pytest.mark.skipif(not HAS_REDIS, reason="needs redis-server")
def test_soak_short() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--json", "--minutes", str(SOAK_MINUTES), "--keep-logs"],
        cwd=ROOT, capture_output=True, text=True, timeout=SOAK_MINUTES * 60 + 200, check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    _check(result)
    shutil.rmtree(Path(result["logs"]).parent)  # kept (and named in the message) only when a check fails


def _check(result: dict[str, Any]) -> None:
    assert result["crashes"] == 0, _fail(result, "a service exited during the soak")
    assert result["replay_loops"] >= 1, _fail(result, "the replay never looped: the burst of a loop was not covered")
    bars = result["bars"]
    assert bars["complete"] > 1000, _fail(result, "too few bars checked for the check to mean anything")
    assert bars["inexact"] == 0, _fail(result, "bars in Redis differ from the trades the replay sent")
    assert bars["missing"] == 0, _fail(result, "bars are missing between bars in Redis")
    assert result["pending_max_after_warmup"] <= PENDING_CAP, _fail(result, "the pending list grew past the cap")
    assert result["pending_oldest_max_s_after_warmup"] < PENDING_AGE_S, _fail(result, "an event stayed pending")
    assert sum(result["events_claimed"].values()) == 0, _fail(result, "a live worker's events were claimed")
    assert result["lag_max_after_warmup"] <= PENDING_CAP, _fail(result, "the workers stopped keeping up")
    assert result["predictions"] > 0, _fail(result, "no prediction reached the subscriber")
    assert not result["unclean_shutdowns"], _fail(result, "a service did not stop cleanly on SIGTERM")
