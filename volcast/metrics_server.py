"""A service's Prometheus endpoint: ``/metrics`` over HTTP for the life of an ``async with``.

Served by prometheus_client's own HTTP server on a daemon thread, not on the service's event loop:
a scrape of thousands of feeds formats tens of thousands of lines, and on the loop that would
hold back every bar close and forecast for as long. The collectors it calls read counters the
services already keep (health records, worker state), never Redis, so a scrape costs no round
trip and cannot stall on an outage.

Each service has its own registry and port (``metrics.stream_port``, ``forecast_port``,
``refit_port``): ``volcast run`` serves the same three endpoints as three processes would, so one
scrape config fits both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Literal

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from volcast.connections import ConnectionProblem
from volcast.settings import MetricsSettings, Settings

log = logging.getLogger(__name__)

Service = Literal["stream", "forecast", "refit"]


class MetricsPortProblem(ConnectionProblem):
    """The metrics port cannot be bound (in use, or not ours to take): one line, exit code 1."""


def metrics_port(settings: MetricsSettings, service: Service) -> int:
    ports = {"stream": settings.stream_port, "forecast": settings.forecast_port, "refit": settings.refit_port}
    return ports[service]


def with_metrics_port(settings: Settings, service: Service, port: int | None) -> Settings:
    """``settings`` with metrics on at ``port`` for ``service`` (the verbs' ``--metrics-port``)."""
    if port is None:
        return settings
    metrics = settings.metrics.model_copy(update={"enabled": True, f"{service}_port": port})
    return settings.model_copy(update={"metrics": metrics})


def new_registry(collectors: Iterable[Collector]) -> CollectorRegistry:
    """A registry of this service's collectors, with the process' CPU, memory and file handles."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


@contextlib.asynccontextmanager
async def serving_metrics(settings: MetricsSettings, service: Service,
                          registry: CollectorRegistry) -> AsyncIterator[int | None]:
    """Serve ``registry`` while the block runs; yields the bound port (None: metrics are off)."""
    if not settings.enabled:
        yield None
        return
    port = metrics_port(settings, service)
    try:
        server, thread = start_http_server(port, settings.host, registry)
    except OSError as exc:
        raise MetricsPortProblem(
            f"{service} metrics cannot listen on {settings.host}:{port} ({exc.strerror or exc}): set "
            f"metrics.{service}_port (or --metrics-port) to a free port, or 0 for any") from None
    bound = int(server.server_port)
    log.info("%s metrics on http://%s:%d/metrics", service, settings.host, bound)
    try:
        yield bound
    finally:
        # shutdown() waits for the server's poll loop (up to 0.5 s): not on the event loop.
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        thread.join(timeout=5)
