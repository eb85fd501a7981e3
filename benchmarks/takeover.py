"""Takeover of a dead streamer's feeds (``streamer.leases``): seconds from kill -9 to the survivor
holding every lease, and to each taken feed streaming live again, with the bars checked exact.

    .venv/bin/python benchmarks/takeover.py --json [--runs 3]

Each run: the simulator replays 60 s of three real tapes (tests/data: BTC/USDT, ETH/USDT, XRP/ETH)
at 2x; two `volcast stream --leases` processes (default lease settings: ttl 6 s, renew 2 s) split
the three feeds; 3 s after the replay started the one holding BTC/USDT is killed with SIGKILL.
``takeover_s``: kill to every lease held by the survivor (polled every 50 ms); ``live_s``: kill to
the survivor's health hash of every taken feed saying ``live`` (its backfill done). At the end of
the replay every feed's bars are compared with `volcast bars` of the same trades: ``bars_exact``.
The goal (issue 14): takeover within 10 s, bars exact.

Needs Redis at 127.0.0.1:6379; every key is under a random prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import yaml
from report import print_result

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from stream_harness import (  # noqa: E402
    delete_prefix,
    redis_bars,
    same_bars,
    stream_settings,
    streamed_to_the_end,
    write_windows,
)

from streamer.leases import lease_holders  # noqa: E402
from streamer.simulator.server import ReplayServer  # noqa: E402
from streamer.simulator.tape import load_tape  # noqa: E402
from volcast.connections import redis_client  # noqa: E402
from volcast.keys import Feed, RedisKeys  # noqa: E402
from volcast.settings import RedisSettings  # noqa: E402

_WAIT_S = 180.0


async def _owners(redis: aioredis.Redis, keys: RedisKeys, feeds: list[Feed]) -> dict[Feed, str]:
    return {feed: holder.owner for feed, holder in (await lease_holders(redis, keys, feeds)).items()}


async def _poll(check: Any, what: str) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {_WAIT_S:.0f}s: {what}")
        await asyncio.sleep(0.05)


async def one_run(directory: Path, redis_section: dict[str, Any] | None = None) -> dict[str, Any]:
    """One kill -9; ``redis_section`` (the settings' ``redis`` without key_prefix) points it at
    another Redis, e.g. a cluster (benchmarks/scale.py)."""
    files = write_windows(directory, 60)
    tapes = [load_tape(f) for f in files]
    prefix = f"bench-takeover-{uuid.uuid4().hex[:8]}"
    keys = RedisKeys(prefix)
    feeds = [Feed("binance", t.symbol, 1000) for t in tapes]
    redis = redis_client(RedisSettings(**(redis_section or {}), key_prefix=prefix))
    processes: dict[str, asyncio.subprocess.Process] = {}
    env = {**os.environ, "VOLCAST_BINANCE_API_KEY": "simulator"}
    try:
        async with ReplayServer(tapes, speed=2, start_on_subscribe=True) as server:
            raw = stream_settings(server, [t.symbol for t in tapes], prefix, redis=redis_section or {}).model_dump(
                mode="json", include={"exchanges", "bars", "streamer", "redis"})
            config = directory / "stream.yml"
            config.write_text(yaml.safe_dump(raw), encoding="utf-8")
            for name in ("s1", "s2"):
                log = (directory / f"{name}.log").open("wb")
                processes[name] = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "volcast.cli", "stream", "--config", str(config), "--leases",
                    "--name", name, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

            async def split() -> bool:
                owners = await _owners(redis, keys, feeds)
                return len(owners) == len(feeds) and len(set(owners.values())) == 2

            await _poll(split, "the two streamers split the feeds")
            await asyncio.wait_for(server.started.wait(), _WAIT_S)
            await asyncio.sleep(3.0)
            owners = await _owners(redis, keys, feeds)
            victim = owners[feeds[0]]
            survivor = "s2" if victim == "s1" else "s1"
            taken = [f for f, owner in owners.items() if owner == victim]
            killed_ms = int(time.time() * 1000)
            killed = time.monotonic()
            processes[victim].kill()
            await processes[victim].wait()

            async def all_taken() -> bool:
                now = await _owners(redis, keys, feeds)
                return len(now) == len(feeds) and set(now.values()) == {survivor}

            await _poll(all_taken, "the survivor holds every lease")
            takeover_s = time.monotonic() - killed

            async def all_live() -> bool:
                for feed in taken:
                    health = await redis.hgetall(keys.health(feed))
                    if health.get(b"state") != b"live" or int(health.get(b"updated_ms", 0)) <= killed_ms:
                        return False
                return True

            await _poll(all_live, "the taken feeds stream live again")
            live_s = time.monotonic() - killed
            expected = await streamed_to_the_end(redis, keys, server, tapes, files)
            processes[survivor].send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(processes[survivor].wait(), _WAIT_S)
        exact = True
        for feed, bars in expected.items():
            try:
                same_bars(await redis_bars(redis, keys, feed), bars, statuses=False)
            except AssertionError as error:
                print(f"{feed.symbol}: bars differ: {error}", file=sys.stderr)
                exact = False
        return {"takeover_s": round(takeover_s, 2), "live_s": round(live_s, 2), "feeds_taken": len(taken),
                "bars_exact": exact, "survivor_exit": code}
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.kill()
                await process.wait()
        await delete_prefix(redis, prefix)
        await redis.aclose()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    runs = []
    for index in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="volcast-takeover-") as directory:
            runs.append(await one_run(Path(directory)))
        print(f"run {index + 1}/{args.runs}: {runs[-1]}", file=sys.stderr)
    return {
        "runs": runs,
        "lease_ttl_s": 6.0,
        "lease_renew_s": 2.0,
        "takeover_s_max": max(r["takeover_s"] for r in runs),
        "live_s_max": max(r["live_s"] for r in runs),
        "bars_exact": all(r["bars_exact"] for r in runs),
        "goal_s": 10.0,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=3, help="kill -9 runs (default 3, ~40 s each)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print_result(result, args.json, 16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
