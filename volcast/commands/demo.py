"""``volcast demo``: the whole pipeline, offline, on real recorded trades.

It replays the shipped XRP/ETH trades (Binance, 2.5 days) through the exchange simulator at 60x,
so a 1-minute bar closes every second: the first 2 days as the exchange's candle history (the
streamer loads them over REST on start, the refit worker trains a small LSTM on them at once,
see volcast/demo_history.py), the rest as live trades; runs the streamer, the forecaster and the refit worker
against Redis and MQTT (the configured servers when they answer, embedded ones otherwise); and
prints each prediction received over MQTT, then the realised volume once its bar has closed.

One demo runs per machine (a second one would share its keys and topics): its lock and the
settings file that ``volcast status --config`` reads while it runs are in ``demo_directory()``.
On exit it clears the retained forecasts it published.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson
import yaml

from volcast.aio import raise_if_cancelled
from volcast.commands.common import add_config_argument
from volcast.demo_view import DemoTally
from volcast.settings import MqttSettings, RedisSettings, Settings, load_settings, settings_from_mapping

if TYPE_CHECKING:
    from streamer.simulator.server import ReplayServer

log = logging.getLogger(__name__)

DEMO_TRADES = Path(__file__).resolve().parents[1] / "demo_data" / "binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz"
# Where the shipped trades stop being history and start being replayed live (11 h 19 min of
# trades, 11 minutes at 60x, then again): 2 days of bars are a day for the LSTM's HAR-style
# regressors, look_back, the refit's held-out bars and a day of training windows.
DEMO_SPLIT_MS = 1_570_924_800_000  # 2019-10-13 00:00 UTC
KEY_PREFIX = "volcast-demo"
SHUTDOWN_S = 20.0


class _StopError(Exception):
    """``--seconds`` have passed, or Ctrl-C / SIGTERM: stop every part, then print the summary."""


class DemoBusyError(Exception):
    """Another demo runs on this machine; the message says which and how to stop it."""


def demo_directory() -> Path:
    """Where the running demo keeps its lock and its settings file (one demo per machine)."""
    return Path(tempfile.gettempdir()) / "volcast-demo"


@contextlib.contextmanager
def demo_lock(folder: Path) -> Iterator[None]:
    """Hold the machine's demo lock (released by the kernel if this process dies)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / "lock").open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            raise DemoBusyError(
                f"another volcast demo is running on this machine (pid {pid}) and would share its Redis keys "
                f"and MQTT topics ({KEY_PREFIX}); watch that one (its banner says how), or stop it first "
                f"(Ctrl-C in its terminal, or kill {pid})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--seconds", type=float, metavar="N", help="stop by itself after N seconds")
    parser.add_argument("--json", action="store_true", help="at the end, print one JSON summary object")
    parser.add_argument(
        "--speed", type=float, default=60.0, metavar="X",
        help="replay X seconds of recorded trading per real second (default 60: a 1m bar per second)",
    )
    parser.add_argument("--trades", type=Path, default=DEMO_TRADES, metavar="FILE", help="trades to replay")


def main(args: argparse.Namespace) -> int:
    if args.speed <= 0:
        print("volcast demo: --speed must be greater than 0", file=sys.stderr)
        return 2
    # The demo only borrows connection settings from config.yml (Redis, MQTT): a missing file
    # is fine, everything else is the demo's own.
    base = load_settings(args.config) if args.config.exists() else None
    # Backfill asks Binance's historicalTrades, which ccxt sends only with an API key; the
    # simulator takes any. This process and its refit child only ever talk to the simulator.
    os.environ.setdefault("VOLCAST_BINANCE_API_KEY", "volcast-demo")
    logging.getLogger().setLevel(logging.WARNING if not args.verbose else logging.DEBUG)
    # With --json, standard output carries only the summary: the banner and the table go to stderr.
    view = sys.stderr if args.json else sys.stdout
    # Not asyncio.run: at exit it waits for every task to finish, and a task that swallowed its
    # cancellation (bounded above) would hang Ctrl-C there instead.
    loop = asyncio.new_event_loop()
    try:
        with demo_lock(demo_directory()):
            summary = loop.run_until_complete(_demo(args, base, view))
    except DemoBusyError as exc:
        print(f"volcast demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
    if args.json:
        print(orjson.dumps(summary).decode())
    if summary["stuck_on_exit"]:
        # Their objects would only be torn down noisily by the interpreter (paho's __del__ on a
        # socket of a loop that is gone); everything worth keeping is written and printed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def demo_settings(
    rest_url: str, ws_url: str, symbol: str, redis: RedisSettings, mqtt: MqttSettings, model_dir: Path,
    speed: float = 60.0,
) -> dict[str, Any]:
    """The settings of the demo stack, as config.yml would write them."""
    return {
        "exchanges": [{
            "id": "binance",
            "symbols": [symbol],
            "urls": {"api": {"public": rest_url, "ws": {"spot": ws_url}}},
            "options": {"fetchMarkets": {"types": ["spot"]}, "tradesLimit": 1_000_000},
        }],
        "bars": {"interval": "1m", "grace": "2s", "open_bar_update": "1s"},
        "streamer": {"watchdog": "20s", "backoff_initial": "200ms", "backoff_max": "5s",
                     "max_backfill": f"{max_backfill_ms(speed) // 1000}s"},
        # The simulator has 2 days of candles before the live trades (DEMO_SPLIT_MS).
        "history": {"days": 3},
        "redis": {**redis.model_dump(mode="json", exclude={"password"}), "key_prefix": KEY_PREFIX},
        "mqtt": {**mqtt.model_dump(mode="json", exclude={"password"}), "topic_prefix": KEY_PREFIX},
        # A demo-sized model, not the product's: it trains in seconds on a busy machine (the
        # default model trains for minutes on a month of bars, benchmarks/coldstart.py). It reads
        # a day of bars plus look_back, and the first refit needs that plus the held-out bars.
        # On this quiet pair it is about as good as HAR on the held-out bars (within 1%), so a
        # refit may keep HAR: the next tries again 30 s later, with 30 more bars (~2 s of CPU).
        "model": {"name": "lstm", "look_back": 30, "hidden": 8},
        "training": {"epochs": 10, "batch_size": 64, "patience": 3},
        "refit": {"every": "30s", "model_dir": str(model_dir), "keep": 3, "holdout_bars": 120, "min_bars": 1600},
        "forecaster": {"score_window": 500},
    }


def max_backfill_ms(speed: float) -> int:
    """The streamer's ``max_backfill``: about 10 real seconds of replay (2 minutes to 1 hour).

    The history ends half of it before the exchange's clock (streamer/history.py), and the demo
    starts its stack only once the replay is past that point (``_wait_for_history_end``), so the
    history reaches into the live tape and no minute of it is replaced by a trade backfill that
    could not find the trades served as history. Small, so that wait is a few seconds."""
    return int(min(3_600_000, max(120_000, 10_000 * speed)) // 1000 * 1000)


async def _demo(args: argparse.Namespace, base: Settings | None, view: TextIO) -> dict[str, object]:
    from streamer.simulator.server import ReplayServer
    from streamer.simulator.tape import load_tape
    from volcast.demo_history import split_tape
    from volcast.embedded import mqtt_available, redis_available

    redis_base = base.redis if base else RedisSettings()
    mqtt_base = base.mqtt if base else MqttSettings()
    history, tape = split_tape(load_tape(args.trades), DEMO_SPLIT_MS)
    started = time.monotonic()
    async with (
        redis_available(redis_base) as redis_settings,
        mqtt_available(mqtt_base) as mqtt_settings,
        ReplayServer([tape], speed=args.speed, loop=True, history={tape.symbol: history}) as server,
    ):
        with tempfile.TemporaryDirectory(prefix="volcast-demo-") as folder:
            raw = demo_settings(server.rest_url, server.ws_url, tape.symbol, redis_settings, mqtt_settings,
                                Path(folder) / "models", args.speed)
            settings = _with_secrets(raw, redis_settings, mqtt_settings)
            await _check_servers(settings)
            # The refit child reads it, and so can `volcast status --config` while the demo runs.
            config = demo_directory() / "config.yml"
            config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
            await _clear_demo_keys(settings)
            _print_banner(server.rest_url, redis_settings, mqtt_settings, tape.symbol, args.speed, config, view)
            await _wait_for_history_end(server, tape.symbol, settings)
            try:
                return await _run_stack(settings, config, args.seconds, started, view)
            finally:
                await _clear_retained(settings)


async def _wait_for_history_end(server: ReplayServer, symbol: str, settings: Settings) -> None:
    """Until the exchange's clock is past where the streamer's history will end on the live tape
    (half of ``max_backfill`` back, plus a minute): a few seconds at 60x."""
    end_ms = server.klines[symbol].tape_start_ms + settings.streamer.max_backfill // 2 + 60_000
    # The clock runs at ``speed``, but waits for trades still being published: look again.
    while True:
        left_ms = end_ms - server.clock_ms()
        if left_ms <= 0:
            return
        await asyncio.sleep(left_ms / 1000 / server.speed + 0.05)


async def _check_servers(settings: Settings) -> None:
    """Refused credentials (or TLS) end the demo at once with the one message the services give
    (ConnectionProblem: exit code 1), instead of a view that reconnects every second for ever."""
    from volcast.connections import check_mqtt, check_redis

    await check_redis(settings.redis)
    await check_mqtt(settings.mqtt)


def _with_secrets(raw: dict[str, Any], redis: RedisSettings, mqtt: MqttSettings) -> Settings:
    """The passwords stay out of the config file the refit child reads: it gets them from the
    environment, as every volcast process does."""
    settings = settings_from_mapping(raw, source="demo settings")
    return settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"password": redis.password}),
        "mqtt": settings.mqtt.model_copy(update={"password": mqtt.password}),
    })


async def _clear_demo_keys(settings: Settings) -> None:
    from volcast.connections import redis_client

    client = redis_client(settings.redis)
    try:
        async for key in client.scan_iter(match=f"{KEY_PREFIX}:*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


async def _clear_retained(settings: Settings) -> None:
    """Publish an empty retained message on each demo topic: the broker then drops the last
    forecast it kept there, and a later subscriber does not see a demo that has ended."""
    import aiomqtt

    from volcast.connections import mqtt_client
    from volcast.keys import Feed, forecast_topic

    try:
        async with asyncio.timeout(5):
            async with mqtt_client(settings.mqtt, client_id=f"volcast-demo-clear-{time.time_ns()}") as client:
                for exchange, symbol in settings.feeds():
                    topic = forecast_topic(settings.mqtt.topic_prefix, Feed(exchange, symbol, settings.bars.interval))
                    await client.publish(topic, b"", qos=1, retain=True)
    except (TimeoutError, aiomqtt.MqttError) as exc:
        log.warning("demo: could not clear its retained forecasts (%s)", exc)


def watch_commands(mqtt: MqttSettings, config: Path) -> list[str]:
    """The exact command lines that watch the running demo from another terminal."""
    from volcast.connections import mqtt_credentials

    username, _ = mqtt_credentials(mqtt)
    login = f" -u {username} -P \"$VOLCAST_MQTT_PASSWORD\"" if username else ""
    tls = ""
    if mqtt.url.startswith("mqtts://") or mqtt.tls.enabled:
        tls = f" --cafile {mqtt.tls.ca_file}" if mqtt.tls.ca_file else " --capath /etc/ssl/certs"
    return [
        f"mosquitto_sub -h {mqtt.host} -p {mqtt.port}{login}{tls} -t '{KEY_PREFIX}/#' -v",
        f"volcast status --config {config} --watch",
    ]


def _print_banner(rest_url: str, redis: RedisSettings, mqtt: MqttSettings, symbol: str, speed: float,
                  config: Path, view: TextIO) -> None:
    from volcast.connections import redact_url

    watch = "".join(f"    {line}\n" for line in watch_commands(mqtt, config))
    print(
        f"volcast demo: replaying real Binance {symbol} trades at {speed:g}x from {rest_url}\n"
        f"  Redis {redact_url(redis.url)} (keys {KEY_PREFIX}:*), MQTT {redact_url(mqtt.url)} "
        f"(topics {KEY_PREFIX}/#)\n"
        f"  watch it from another terminal:\n{watch}"
        f"  The streamer first loads the 2 days of candles before the live trades (the same recording)\n"
        f"  over REST; the refit worker then trains a demo-sized LSTM on them (seconds) and promotes it if\n"
        f"  it beats HAR on the last 2 hours. Until then a baseline serves (marked '*'). Ctrl-C stops.\n",
        file=view, flush=True,
    )


async def _run_stack(
    settings: Settings, config: Path, seconds: float | None, started: float, view: TextIO
) -> dict[str, object]:
    from volcast.demo_view import HEADER
    from volcast.single_machine import run as run_stack

    tally = DemoTally()
    print(HEADER, file=view, flush=True)
    parts = [
        asyncio.create_task(run_stack(settings, config), name="stack"),
        asyncio.create_task(_watch(settings, tally, view), name="view"),
        asyncio.create_task(_stop_on_signal(), name="signals"),
    ]
    if seconds is not None:
        parts.append(asyncio.create_task(_stop_after(seconds - (time.monotonic() - started)), name="timer"))
    try:
        done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for part in parts:
            part.cancel()
        # Bounded: a library that swallows a cancellation (aiomqtt's disconnect, see
        # volcast/aio.py) must not turn Ctrl-C into a hang; what has not stopped by then is
        # named and left to the process exit.
        _, stuck = await asyncio.wait(parts, timeout=SHUTDOWN_S)
        if stuck:
            log.warning("demo: %s did not stop within %.0f s; exiting anyway",
                        ", ".join(p.get_name() for p in stuck), SHUTDOWN_S)
    for part in done:
        error = part.exception() if not part.cancelled() else None
        if error is not None and not isinstance(error, _StopError):
            raise error
    summary = tally.summary(await _closed_bars(settings))
    summary["stuck_on_exit"] = sorted(p.get_name() for p in stuck)
    return summary


async def _stop_after(seconds: float) -> None:
    await asyncio.sleep(max(0.0, seconds))
    raise _StopError


async def _stop_on_signal() -> None:
    """Ctrl-C and SIGTERM end the demo through the event loop, so every part is cancelled in
    order and the summary still prints (the loop's own handlers, not Python's, also wake it
    when another thread receives the signal)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("volcast demo: stopping…", file=sys.stderr, flush=True)
    raise _StopError


async def _watch(settings: Settings, tally: DemoTally, view: TextIO) -> None:
    """Print each prediction as it arrives, and the realised volume once its bar has closed."""
    import aiomqtt

    from forecaster.payload import Prediction
    from volcast.bar import Bar
    from volcast.connections import mqtt_client, redis_client
    from volcast.demo_view import format_row
    from volcast.keys import RedisKeys, forecast_topic_filter

    keys = RedisKeys(settings.redis.key_prefix)
    redis = redis_client(settings.redis)
    try:
        while True:
            try:
                async with mqtt_client(settings.mqtt, client_id=f"volcast-demo-view-{time.time_ns()}") as client:
                    await client.subscribe(forecast_topic_filter(settings.mqtt.topic_prefix), qos=1)
                    async for message in client.messages:
                        raise_if_cancelled()  # a redis-py read may have swallowed the cancel
                        try:
                            prediction = Prediction.from_json(bytes(message.payload))  # type: ignore[arg-type,unused-ignore]
                        except ValueError as exc:
                            log.warning("demo: skipped a message on %s: %s", message.topic, exc)
                            continue
                        for earlier in tally.due(prediction):
                            # Every revision of the bar (ids <open ms>-<rev>): one entry at most.
                            entries = await redis.xrange(keys.bars(earlier.feed), min=f"{earlier.open_time_ms}-0",
                                                         max=str(earlier.open_time_ms))
                            if entries and entries[0][1]:
                                actual = float(Bar.from_fields(entries[0][1]).volume)
                                tally.realise(earlier, actual)
                                print(format_row(earlier, actual, _utc), file=view, flush=True)
                        tally.received(prediction)
                        print(format_row(prediction, None, _utc), file=view, flush=True)
            except aiomqtt.MqttError as exc:
                # A broker hiccup only pauses the view; the forecaster keeps its own connection.
                raise_if_cancelled()
                log.warning("demo view: MQTT connection lost (%s); reconnecting", exc)
                await asyncio.sleep(1)
    finally:
        await redis.aclose()


async def _closed_bars(settings: Settings) -> int:
    from volcast.connections import redis_client
    from volcast.keys import Feed, RedisKeys

    keys = RedisKeys(settings.redis.key_prefix)
    client = redis_client(settings.redis)
    try:
        total = 0
        for exchange, symbol in settings.feeds():
            total += int(await client.xlen(keys.bars(Feed(exchange, symbol, settings.bars.interval))))
        return total
    finally:
        await client.aclose()


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")

