"""``volcast status``: feeds, bars, forecasts, model and refit, from Redis keys alone.

Exit codes (volcast/commands/exit_codes.py): 0 shown; 1 Redis cannot be used (the message says
what to check); 2 bad config; 3 with ``--check``: the part named is not healthy, or cannot be
judged because Redis does not answer or refuses us (the reason is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from volcast.commands import exit_codes
from volcast.commands.common import add_config_argument, settings_from_args
from volcast.settings import Settings

CLEAR = "\x1b[H\x1b[2J"
EXIT_REDIS = exit_codes.FAILED
EXIT_UNHEALTHY = exit_codes.UNHEALTHY
CHECKS = ("stream", "forecast", "redis")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object (shape: docs/operations.md)")
    parser.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C; with --json, one object per line",
    )
    parser.add_argument(
        "--check",
        choices=CHECKS,
        default=None,
        help="exit 0 if this part is alive, 3 if not (for container healthchecks): stream = every "
        "feed has a fresh heartbeat; forecast = the forecaster's heartbeat is fresh; redis = Redis answers. "
        "Redis down or refusing the credentials is 3 for every part",
    )


def _positive_watch(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise SystemExit("volcast status: --watch SECONDS must be greater than zero")
    return value


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    watch = _positive_watch(args.watch)
    try:
        return asyncio.run(_run(settings, json_out=args.json, watch=watch, check=args.check))
    except KeyboardInterrupt:
        return 0


async def _run(settings: Settings, *, json_out: bool, watch: float | None, check: str | None) -> int:
    from redis.exceptions import RedisError

    from volcast.connections import ConnectionProblem, check_redis, redact_url, redis_client
    from volcast.status_render import render_json, render_table
    from volcast.status_report import collect_status

    try:
        await check_redis(settings.redis)
    except ConnectionProblem as exc:
        if check is not None:
            # A healthcheck asks "is it healthy?": without Redis the answer is no, whatever the part.
            print(f"{check}: unhealthy: {exc}")
            return EXIT_UNHEALTHY
        print(f"volcast status: {exc}", file=sys.stderr)
        return EXIT_REDIS
    async with redis_client(settings.redis, socket_connect_timeout=5, socket_timeout=5) as redis:
        if check is not None:
            report = await collect_status(redis, settings)
            problem = health_problem(report, check, settings.bars.interval)
            print(problem or f"{check}: healthy")
            return EXIT_UNHEALTHY if problem else 0
        previous: dict[str, Any] | None = None
        while True:
            try:
                report = await collect_status(redis, settings, previous=previous)
                text = render_json(report) if json_out else render_table(report)
                previous = report
            except RedisError as exc:
                if watch is None:
                    print(f"volcast status: Redis at {redact_url(settings.redis.url)} failed: {exc}", file=sys.stderr)
                    return EXIT_REDIS
                # While watching, a restarting Redis is something to show, not a reason to quit.
                text = f"volcast status: Redis at {redact_url(settings.redis.url)} failed: {exc}; retrying\n"
            if watch is None:
                sys.stdout.write(text if text.endswith("\n") else text + "\n")
                return 0
            if json_out:
                print(text.rstrip("\n"), flush=True)
            else:
                sys.stdout.write(CLEAR + text)
                sys.stdout.flush()
            await asyncio.sleep(watch)


def health_problem(report: dict[str, Any], check: str, interval_ms: int) -> str | None:
    """Why ``check`` is unhealthy, or None. Heartbeats are hashes with a TTL, so a present hash is a
    fresh one; the forecaster's is also judged by its ``updated_ms`` when it writes one."""
    if check == "redis":
        return None
    if check == "stream":
        missing = [f"{f['exchange']} {f['symbol']}" for f in report["feeds"] if f["state"] is None]
        return f"stream: no heartbeat for {', '.join(missing)}" if missing else None
    forecaster = report["forecaster"]
    if forecaster is None:
        return "forecast: no heartbeat in Redis"
    updated = forecaster.get("updated_ms")
    limit = 3 * max(interval_ms, 10_000)
    if isinstance(updated, int) and report["now_ms"] - updated > limit:
        return f"forecast: last heartbeat {report['now_ms'] - updated} ms ago (limit {limit} ms)"
    return None
