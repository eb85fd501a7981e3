"""Arguments and helpers that several verbs share."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from volcast.settings import Settings, load_settings

CONFIG_VARIABLE = "VOLCAST_CONFIG"


def default_config() -> Path:
    """``$VOLCAST_CONFIG`` when set (the image and docker-compose.yml set it), else ./config.yml."""
    return Path(os.environ.get(CONFIG_VARIABLE) or "config.yml")


def add_config_argument(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """``--config FILE``. ``inherited`` is for the actions of a verb (``model list``): the option
    is also accepted after the action and, when given there, overrides the verb's."""
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS if inherited else default_config(),
        metavar="FILE",
        help=f"settings file (default: ${CONFIG_VARIABLE} when set, else config.yml)",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65_535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give 1-65535, or 0 for a free one")
    return port


def add_metrics_argument(parser: argparse.ArgumentParser, service: str) -> None:
    """``--metrics-port N``: serve Prometheus metrics at http://<metrics.host>:N/metrics."""
    parser.add_argument(
        "--metrics-port", type=_port, default=None, metavar="N",
        help=f"serve Prometheus metrics at http://<metrics.host>:N/metrics (0: a free port, logged); "
             f"overrides metrics.enabled and metrics.{service}_port of the config (README \"Metrics\")")
    parser.set_defaults(metrics_service=service)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Load --config; a bad file raises ConfigError, which the CLI turns into exit code 2."""
    settings = load_settings(args.config)
    port = getattr(args, "metrics_port", None)
    if port is not None:
        from volcast.metrics_server import with_metrics_port

        settings = with_metrics_port(settings, args.metrics_service, port)
    return settings


async def _collect_clients() -> None:
    """An aiomqtt client whose CONNECT failed or was interrupted (Ctrl-C while starting) keeps a
    task and its socket: destroyed after the loop closed, paho's __del__ calls back into the loop
    and prints a traceback ("Event loop is closed") into the service's log. End its task and
    collect it while the loop still runs."""
    await asyncio.sleep(0.05)  # callbacks the client scheduled from paho's side
    current = asyncio.current_task()
    leftovers = [task for task in asyncio.all_tasks() if task is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
    gc.collect()


async def checked_services(
    settings: Settings, *, redis: bool = True, mqtt: bool = False, keep_retrying: bool = True
) -> None:
    """Connect once before a service starts, so refused credentials or a TLS mismatch end it at
    once with one message saying what to set (ConnectionProblem: exit code 1). A server that does
    not answer yet is only logged when ``keep_retrying`` (a service: it reconnects with backoff,
    so an outage that passes, or a stack still starting, is ridden out); a one-shot job
    (``refit --once``, ``model``) passes False and ends with that one message instead."""

    from volcast.connections import ServerUnreachable, check_mqtt, check_redis

    probes: list[Callable[[], Awaitable[None]]] = []
    if redis:
        probes.append(lambda: check_redis(settings.redis))
    if mqtt:
        probes.append(lambda: check_mqtt(settings.mqtt))
    try:
        for probe in probes:
            try:
                await probe()
            except ServerUnreachable as exc:
                if not keep_retrying:
                    raise
                logging.getLogger("volcast").warning(
                    "%s; will keep retrying with backoff until it answers (Ctrl-C or SIGTERM stops)", exc)
    finally:
        await _collect_clients()


def check_services(
    settings: Settings, *, redis: bool = True, mqtt: bool = False, keep_retrying: bool = True
) -> None:
    """``checked_services`` for a one-shot job, in its own event loop."""
    asyncio.run(checked_services(settings, redis=redis, mqtt=mqtt, keep_retrying=keep_retrying))


def serve(
    settings: Settings, service: Callable[[], Awaitable[None]], name: str, *, mqtt: bool = False
) -> int:
    """Check the servers, then run ``service()`` until SIGINT or SIGTERM, in ONE event loop whose
    signal handlers are in place before anything else runs. With the check in a loop of its own,
    a Ctrl-C that came between the two loops (while the check's clients were collected) was taken
    by a destructor's ignored KeyboardInterrupt and lost under load: the service then ran on."""
    from volcast.signals import until_signalled

    async def checked_then_served() -> None:
        await checked_services(settings, redis=True, mqtt=mqtt)
        await service()

    return asyncio.run(until_signalled(checked_then_served(), name))
