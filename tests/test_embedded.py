"""The demo's fallbacks: embedded Redis and MQTT start when nothing answers at the configured URL."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt

from forecaster.publisher import Publisher
from volcast.connections import mqtt_client, redis_client
from volcast.embedded import free_port, mqtt_available, redis_available
from volcast.settings import MqttSettings, RedisSettings


async def test_configured_redis_is_used_when_it_answers() -> None:
    settings = RedisSettings()
    async with redis_available(settings) as used:
        assert used is settings


async def test_embedded_redis_when_nothing_answers() -> None:
    settings = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0")
    async with redis_available(settings) as used:
        assert used.url != settings.url
        client = redis_client(used)
        try:
            assert await client.ping()
            await client.set("volcast-embedded-check", "1")
            assert await client.get("volcast-embedded-check") == b"1"
        finally:
            await client.aclose()


async def test_embedded_mqtt_when_nothing_answers() -> None:
    settings = MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}")
    async with mqtt_available(settings) as used:
        assert used.port != settings.port
        async with mqtt_client(used, client_id="embedded-pub") as publisher:
            await publisher.publish("volcast-test/embedded", b"retained", qos=1, retain=True)
        async with mqtt_client(used, client_id="embedded-sub") as subscriber:
            await subscriber.subscribe("volcast-test/#", qos=1)
            message: aiomqtt.Message = await anext(aiter(subscriber.messages))
            assert message.payload == b"retained" and message.retain


async def test_forecaster_publishes_through_the_embedded_broker() -> None:
    # The demo's forecaster publishes on its own MQTT connection (forecaster/mqtt_wire.py): amqtt
    # must take it as Mosquitto does, retained and confirmed.
    settings = MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}")
    async with mqtt_available(settings) as used:
        publisher = Publisher(used, client_id="embedded-forecaster")
        running = asyncio.create_task(publisher.run())
        try:
            ticket = publisher.submit([("volcast-test/forecaster", b"from the worker")])
            await asyncio.wait_for(publisher.published(ticket), 10)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        async with mqtt_client(used, client_id="embedded-late") as subscriber:
            await subscriber.subscribe("volcast-test/forecaster", qos=1)
            message: aiomqtt.Message = await asyncio.wait_for(anext(aiter(subscriber.messages)), 10)
            assert message.payload == b"from the worker" and message.retain
