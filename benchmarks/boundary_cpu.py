"""CPU time per boundary of the forecaster worker, by phase: a measure that a loaded machine does
not distort (``benchmarks/latency.py`` measures wall time, which it does).

The worker runs in this process against real Redis (``--redis``, its own key prefix) and a
private Mosquitto on a free port, serving the same LSTM as ``benchmarks/latency.py`` (the default
60 horizons, or ``--one-step``: the next bar only). Each boundary closes the bars of every symbol
as the streamer does (``BarStore``: bars and events in MULTI/EXEC batches); the run waits until
the worker has recorded it. Over the measured boundaries the event loop's thread is profiled
with a CPU-time clock (cProfile, ``time.thread_time``): per boundary, the CPU seconds of the
critical path (``BoundaryPass._boundary``: events read to the last PUBLISH written, forward passes
included when they run on the loop), of its parts, and of the bookkeeping after it; and the
whole process's CPU (``time.process_time``, every thread). Unprofiled (the default), the loop
thread's CPU inside ``_boundary`` (``boundary_cpu_ms``) and inside the bookkeeping's
``Recorder.writes`` / ``apply`` (``record_cpu_ms``), and the worker's own wall-clock timings.

``--root`` runs another checkout's code (e.g. main's worktree) with the same harness, so two
branches compare by CPU seconds of the same work.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/boundary_cpu.py --json [--symbols 1000] [--boundaries 10]
        [--one-step] [--root /work/main] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HISTORY = 1500  # bars per feed before the run: the LSTM reads look_back bars plus HAR's day (as latency.py)
WARM_UP = 3  # boundaries before measuring: first reads, the first prepare

# Functions whose CPU (cumulative, on the loop thread) is reported per boundary: (label, file, name).
PHASES: tuple[tuple[str, str, str], ...] = (
    ("critical_path", "boundary_pass.py", "_boundary"),
    ("read_bars", "bar_reader.py", "at"),
    ("forward", "predictor.py", "predict_batch"),
    ("hand_over", "boundary_pass.py", "_hand_over"),
    ("calibrated_bands", "calibration_store.py", "bands"),
    ("horizon_bands", "calibration_store.py", "horizon_bands"),
    ("encode", "payload.py", "encode_all"),
    ("submit", "publisher.py", "submit"),
    ("record_writes", "recorder.py", "writes"),
    ("record_apply", "recorder.py", "apply"),
    ("prepare_batch", "preparation.py", "_prepare_batch"),
)


def _cumulative(stats: pstats.Stats) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for (filename, _, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        key = (Path(filename).name, name)
        out[key] = out.get(key, 0.0) + cumulative
    return out


def _writer(root: str, raw: dict[str, Any], n: int, conn: Any) -> None:
    """The streamer's side, in a process of its own (its CPU is not the worker's): on each step
    number received, close that bar of every feed with ``BarStore``; answer once written."""
    sys.path.insert(0, root)
    asyncio.run(_write_steps(raw, n, conn))


async def _write_steps(raw: dict[str, Any], n: int, conn: Any) -> None:
    from benchmarks.latency import MINUTE, real_bars
    from streamer.store import BarStore
    from volcast.backoff import Backoff
    from volcast.connections import redis_client
    from volcast.keys import Feed, RedisKeys
    from volcast.settings import settings_from_mapping

    settings = settings_from_mapping(raw, env={})
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = [Feed("binance", s, MINUTE) for _, s in settings.feeds()]
    bars = real_bars()
    series = [bars[(i * 37) % 1000:] for i in range(n)]
    times = [b.open_time_ms for b in bars]
    loop = asyncio.get_running_loop()
    async with redis_client(settings.redis, socket_timeout=120) as redis:
        store = BarStore(redis, keys, retention_bars=settings.bars.retention_bars, buffer_bars=10 * n,
                         backoff=Backoff(0.1, 1.0))
        while True:
            j = await loop.run_in_executor(None, conn.recv)
            if j is None:
                return
            for i, feed in enumerate(feeds):
                store.put(feed, replace(series[i][j], open_time_ms=times[j]))
            await store.write_pending()
            conn.send(j)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import redis.asyncio as aioredis  # noqa: F401  # imported after --root is on the path

    from benchmarks.latency import MINUTE, ONE_STEP, free_port, mosquitto, raw_settings, real_bars, train_artifact
    from forecaster.calibration import WARM_UP as CALIBRATION_WARM_UP
    from forecaster.model_store import ModelRecord, promote
    from forecaster.publisher import Publisher
    from forecaster.worker import Worker
    from volcast.connections import redis_client
    from volcast.keys import Feed, RedisKeys
    from volcast.settings import settings_from_mapping

    cache = Path(args.cache) / ("one-step" if args.one_step else "horizons")
    model_settings = ONE_STEP if args.one_step else None
    if not (cache / "trained").exists():
        cache.mkdir(parents=True, exist_ok=True)
        train_artifact(cache, model_settings, "1")
    artifact = next((cache / "trained").iterdir())
    n = args.symbols
    with tempfile.TemporaryDirectory(prefix="volcast-cpu-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        with mosquitto(port, workdir):
            raw = raw_settings(port, workdir / "models", args.redis, n, True, model_settings)
            settings = settings_from_mapping(raw, env={})
            import shutil
            shutil.copytree(artifact, settings.refit.model_dir / "1")
            keys = RedisKeys(settings.redis.key_prefix)
            feeds = [Feed("binance", s, MINUTE) for _, s in settings.feeds()]
            bars = real_bars()
            series = [bars[(i * 37) % 1000:] for i in range(n)]
            times = [b.open_time_ms for b in bars]
            async with redis_client(settings.redis, socket_timeout=120) as redis:
                try:
                    await promote(redis, keys, ModelRecord("lstm", "1", {}, 0))
                    pipe = redis.pipeline(transaction=False)
                    for feed in feeds:  # every band past its warm-up, as in latency.py
                        pipe.hset(keys.calibration(feed), mapping={
                            "horizons": "1", "c_low": "0.125", "c_high": "0.25", "n": str(CALIBRATION_WARM_UP),
                            "to_ms": "-1", "step": "0.02", "warm_up": str(CALIBRATION_WARM_UP)})
                    await pipe.execute()
                    for lo in range(0, HISTORY, 100):
                        pipe = redis.pipeline(transaction=False)
                        for i, feed in enumerate(feeds):
                            for j in range(lo, min(lo + 100, HISTORY)):
                                b = replace(series[i][j], open_time_ms=times[j])
                                pipe.xadd(keys.bars(feed), b.to_fields(), id=f"{times[j]}-0")  # type: ignore[arg-type]
                        await pipe.execute()
                    import multiprocessing
                    ours, theirs = multiprocessing.Pipe()
                    writer = multiprocessing.get_context("spawn").Process(
                        target=_writer, args=(str(args.root.resolve()), raw, n, theirs), daemon=True)
                    writer.start()
                    try:
                        return await _measure(args, settings, redis, n, ours, Publisher, Worker)
                    finally:
                        ours.send(None)
                        writer.join(10)
                finally:
                    found = [k async for k in redis.scan_iter(match=f"{settings.redis.key_prefix}:*", count=1000)]
                    for lo in range(0, len(found), 500):
                        await redis.delete(*found[lo:lo + 500])


async def _measure(args: argparse.Namespace, settings: Any, redis: Any, n: int, writer: Any,
                   publisher_type: Any, worker_type: Any) -> dict[str, Any]:
    publisher = publisher_type(settings.mqtt, client_id=None)
    worker = worker_type(settings, redis, publisher)
    recorded = {"predictions": 0}
    progress = asyncio.Event()

    def on_recorded(predictions: Any, timings: Any) -> None:
        recorded["predictions"] += len(predictions)
        progress.set()

    worker.recorded.append(on_recorded)
    # CPU of the loop's thread inside the critical path and inside the bookkeeping, unprofiled:
    # from each call's start to its end (what other tasks run at its awaits counts too; the
    # bookkeeping and the preparation wait while a boundary is predicted, so that is little).
    spent = {"boundary": 0.0, "record": 0.0}
    measuring = [False]

    def timed(name: str, method: Any) -> Any:
        async def run(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return await method(*args, **kwargs)
            finally:
                if measuring[0]:
                    spent[name] += time.thread_time() - started
        return run

    # The boundary pass is worker.boundaries since worker.py was split; a --root checkout from
    # before the split has it on the worker itself (and its acks queue as worker._acks).
    boundaries = getattr(worker, "boundaries", worker)
    boundaries._boundary = timed("boundary", boundaries._boundary)
    acks = worker.handoffs.acks if hasattr(worker, "handoffs") else worker._acks
    worker.recorder.writes = timed("record", worker.recorder.writes)
    worker.recorder.apply = timed("record", worker.recorder.apply)
    profile = cProfile.Profile(time.thread_time) if args.profile else None
    cpu = 0.0
    loop_cpu = 0.0
    redis_cpu = 0.0
    redis_usec: dict[str, int] = {}
    timings: list[dict[str, float]] = []
    async with asyncio.TaskGroup() as tasks:
        running = [tasks.create_task(coro) for coro in (
            publisher.run(), worker.consume(), worker.record(), worker.prepare(), worker.acknowledge())]
        while not publisher.connected:  # noqa: ASYNC110 - a flag, no event to wait on
            await asyncio.sleep(0.05)
        await worker.poll_model(force=True)
        for step in range(args.boundaries + WARM_UP):
            j = HISTORY + step
            target = recorded["predictions"] + n
            measured = step >= WARM_UP
            measuring[0] = measured
            if measured:
                # Redis read first: its round trips are not the worker's CPU.
                started_redis, started_commands = await _redis_cpu(redis), await _redis_commands(redis)
                started_cpu, started_loop = time.process_time(), time.thread_time()
                if profile is not None:
                    profile.enable()
            writer.send(j)
            await asyncio.get_running_loop().run_in_executor(None, writer.recv)
            while recorded["predictions"] < target:
                progress.clear()
                await progress.wait()
            while acks.qsize():  # noqa: ASYNC110 - and acknowledged
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)  # prepare (the next boundary's head start) runs meanwhile
            if measured:
                if profile is not None:
                    profile.disable()
                cpu += time.process_time() - started_cpu
                loop_cpu += time.thread_time() - started_loop
                redis_cpu += await _redis_cpu(redis) - started_redis
                for name, usec in (await _redis_commands(redis)).items():
                    redis_usec[name] = redis_usec.get(name, 0) + usec - started_commands.get(name, 0)
                timings.append(dict(worker.timings))
        status = worker.status()
        for task in running:
            task.cancel()
    cumulative: dict[tuple[str, str], float] = {}
    if profile is not None:
        stats = pstats.Stats(profile)
        stats.dump_stats(args.profile)
        cumulative = _cumulative(stats)
    per = args.boundaries
    out: dict[str, Any] = {"symbols": n, "boundaries": per, "one_step": args.one_step,
                           "profiled": args.profile is not None,
                           **{k: status.get(k) for k in ("model_name", "model_version", "baseline",
                                                         "prepared_forecasts", "window_forecasts", "calibrated_bands",
                                                         "guarded")},
                           "process_cpu_ms": round(cpu / per * 1000, 2), "loop_cpu_ms": round(loop_cpu / per * 1000, 2),
                           "boundary_cpu_ms": round(spent["boundary"] / per * 1000, 2),
                           "record_cpu_ms": round(spent["record"] / per * 1000, 2),
                           # The Redis server's CPU over the same spans (the streamer's bar writes
                           # included): the worker's writes cost it too, on the same cores.
                           "redis_cpu_ms": round(redis_cpu / per * 1000, 2),
                           # ... and what took it: the five costliest commands (a script's calls
                           # count in their own entries too), ms of the server's time per boundary.
                           "redis_commands_ms": {name: round(usec / per / 1000, 2) for name, usec in sorted(
                               redis_usec.items(), key=lambda item: -item[1])[:5]}}
    for label, filename, name in PHASES if profile is not None else ():
        # Before worker.py was split (a --root checkout), every worker phase was in worker.py.
        seconds = cumulative.get((filename, name), cumulative.get(("worker.py", name)))
        out[f"{label}_cpu_ms"] = None if seconds is None else round(seconds / per * 1000, 2)
    # The worker's own wall-clock timings (ms, its last batch of each boundary): medians.
    for name in sorted({k for t in timings for k in t}):
        values = sorted(t[name] for t in timings if name in t)
        out[f"worker_{name}"] = round(values[len(values) // 2], 2)
    return out


async def _redis_cpu(redis: Any) -> float:
    """CPU seconds the Redis server has used (every thread), from INFO."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _redis_commands(redis: Any) -> dict[str, int]:
    """Microseconds the Redis server has spent in each command, from INFO commandstats."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(fields["usec"]) for name, fields in stats.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--boundaries", type=int, default=10)
    parser.add_argument("--one-step", action="store_true", help="a model of the next bar only (no horizons)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout whose forecaster is measured")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "volcast-cpu-models"),
                        help="trained artifacts kept between runs")
    parser.add_argument("--profile", default=None, help="also write the cProfile stats (CPU time) here")
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    import logging
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(run(args))
    import orjson
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
