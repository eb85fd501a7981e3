"""The forecaster's publishing connection: packets byte for byte, and QoS 0/1/2 through a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid

import aiomqtt
import pytest

from forecaster.mqtt_wire import Connection, MqttError, connect_packet, publish_packet, split_packets
from volcast.connections import mqtt_client
from volcast.settings import MqttSettings

BROKER = MqttSettings(url="mqtt://127.0.0.1:1883")


class Confirmed(list[int]):
    """The mids ``on_confirmed`` was called with; ``until(n)`` waits for n of them."""

    def __init__(self) -> None:
        super().__init__()
        self._more = asyncio.Event()

    def __call__(self, mid: int) -> None:
        self.append(mid)
        self._more.set()

    async def until(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self) < n:
                self._more.clear()
                await self._more.wait()


def test_publish_packet_layout() -> None:
    topic = b"\x00\x03a/b"
    assert publish_packet(topic, b"xy", 1, True, 0x0102) == b"\x33\x09\x00\x03a/b\x01\x02xy"
    assert publish_packet(topic, b"xy", 0, False, 7) == b"\x30\x07\x00\x03a/bxy"
    assert publish_packet(topic, b"", 2, False, 1)[0] == 0x34
    # A payload past 127 bytes takes a two-byte remaining length.
    big = publish_packet(topic, b"z" * 200, 1, False, 1)
    assert big[1:3] == bytes([(207 & 0x7F) | 0x80, 207 >> 7]) and len(big) == 3 + 207


def test_connect_packet_flags() -> None:
    anonymous = connect_packet("c1", None, None, 60)
    assert anonymous[:2] == b"\x10\x0e" and anonymous[8:12] == b"\x04\x02\x00\x3c"
    with_login = connect_packet("c1", "user", "pw", 30)
    assert with_login[9] == 0x02 | 0x80 | 0x40
    assert with_login.endswith(b"\x00\x04user\x00\x02pw")


def test_split_packets_keeps_a_partial_one() -> None:
    buf = bytearray(b"\x40\x02\x00\x01" + b"\x40\x02\x00\x02" + b"\x40\x02\x00")
    assert split_packets(buf) == [(4, b"\x00\x01"), (4, b"\x00\x02")]
    assert buf == bytearray(b"\x40\x02\x00")
    buf += b"\x03\xd0"
    assert split_packets(buf) == [(4, b"\x00\x03")]
    buf += b"\x00"
    assert split_packets(buf) == [(13, b"")]
    assert not buf


def test_split_packets_refuses_a_runaway_length() -> None:
    with pytest.raises(MqttError, match="malformed"):
        split_packets(bytearray(b"\x30\xff\xff\xff\xff\x01"))


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_publishes_reach_a_subscriber_and_are_confirmed(qos: int) -> None:
    prefix = f"volcast-test-{uuid.uuid4().hex[:8]}"
    confirmed = Confirmed()
    # QoS 2: 15 messages. Past Mosquitto's 20 in flight per client an aiomqtt subscriber stalls
    # on QoS 2 publishes, aiomqtt's own publisher's just as ours (all PUBCOMPs come back).
    messages = [(f"{prefix}/{i}", f"payload {i}".encode()) for i in range(300 if qos < 2 else 15)]
    async with mqtt_client(BROKER) as subscriber:
        await subscriber.subscribe(f"{prefix}/#", qos=2)
        connection = await Connection.open(BROKER, client_id=None, on_confirmed=confirmed, timeout_s=5)
        reading = asyncio.create_task(connection.run())
        try:
            mids = connection.publish(messages, qos, retain=False)
            got: list[aiomqtt.Message] = []
            async with asyncio.timeout(10):
                async for message in subscriber.messages:
                    got.append(message)
                    if len(got) == len(messages):
                        break
            assert sorted((str(m.topic), m.payload) for m in got) == sorted(messages)
            assert {m.qos for m in got} == {qos}
            if qos:
                assert len(set(mids)) == len(messages)
                await confirmed.until(len(mids))
                assert sorted(confirmed) == sorted(mids)  # each once
                assert connection.unconfirmed == 0
            else:
                assert mids == [] and confirmed == []
        finally:
            reading.cancel()
            await connection.close()


async def test_retained_publish_reaches_a_late_subscriber() -> None:
    topic = f"volcast-test-{uuid.uuid4().hex[:8]}/retained"
    confirmed = Confirmed()
    connection = await Connection.open(BROKER, client_id=None, on_confirmed=confirmed, timeout_s=5)
    reading = asyncio.create_task(connection.run())
    try:
        connection.publish([(topic, b"last")], 1, retain=True)
        await confirmed.until(1)
        async with mqtt_client(BROKER) as late:
            await late.subscribe(topic, qos=1)
            message = await asyncio.wait_for(anext(aiter(late.messages)), 10)
            assert message.payload == b"last" and message.retain
        connection.publish([(topic, b"")], 1, retain=True)  # an empty retained payload clears it
    finally:
        reading.cancel()
        await connection.close()


async def test_a_closed_connection_refuses_to_publish() -> None:
    connection = await Connection.open(BROKER, client_id=None, on_confirmed=lambda mid: None, timeout_s=5)
    await connection.close()
    with pytest.raises(MqttError, match="closed"):
        connection.publish([("volcast-test/x", b"1")], 1, retain=False)


async def test_nothing_listening_is_an_mqtt_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MqttError, match="cannot connect"):
        await Connection.open(MqttSettings(url=f"mqtt://127.0.0.1:{port}"), client_id=None,
                              on_confirmed=lambda mid: None, timeout_s=2)


async def test_a_silent_server_times_out_and_the_socket_is_closed() -> None:
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # returns at EOF: the client closed its socket
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(MqttError, match="no CONNACK within") as caught:
            await Connection.open(MqttSettings(url=f"mqtt://127.0.0.1:{port}"), client_id=None,
                                  on_confirmed=lambda mid: None, timeout_s=0.3)
        # Closed by open() itself: ``caught`` keeps the failed call's frame, and its socket, alive,
        # so garbage collection cannot be what closed it.
        await asyncio.wait_for(closed.wait(), 5)
        assert caught.value.__traceback__ is not None


async def test_a_confirmed_publish_is_not_taken_for_a_lost_puback_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """The publisher waited for its next message with the in-flight deadline of the last one: once
    that was confirmed, nothing woke it, and with boundaries further apart than PUBACK_TIMEOUT_S
    (1-minute bars, 30 s) it logged "no PUBACK" and reconnected after every boundary."""
    from forecaster import publisher as publisher_module
    from forecaster.publisher import Publisher

    monkeypatch.setattr(publisher_module, "PUBACK_TIMEOUT_S", 0.3)
    publisher = Publisher(MqttSettings(), client_id=f"test-{uuid.uuid4().hex[:8]}")
    task = asyncio.create_task(publisher.run())
    try:
        for _ in range(3):
            ticket = publisher.submit([(f"test-puback/{uuid.uuid4().hex[:8]}", b"1")])
            async with asyncio.timeout(10):
                await publisher.published(ticket)
            await asyncio.sleep(0.8)  # longer than the deadline, with nothing in flight
        assert publisher.reconnects == 0 and publisher.connected, publisher.last_error
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, MqttError):
            await task


async def test_a_broker_that_never_confirms_is_still_left(monkeypatch: pytest.MonkeyPatch) -> None:
    from forecaster import publisher as publisher_module
    from forecaster.publisher import Publisher

    async def accept_and_ignore(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted; then never a PUBACK
        await writer.drain()
        while await reader.read(1024):
            pass

    monkeypatch.setattr(publisher_module, "PUBACK_TIMEOUT_S", 0.3)
    server = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = Publisher(MqttSettings(url=f"mqtt://127.0.0.1:{port}"), client_id="silent",
                          backoff_initial_s=0.05, backoff_max_s=0.1)
    task = asyncio.create_task(publisher.run())
    try:
        publisher.submit([("test-puback/silent", b"1")])
        for _ in range(200):
            if publisher.reconnects:
                break
            await asyncio.sleep(0.05)
        assert publisher.last_error == "no PUBACK within 0s" and publisher.unpublished == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, MqttError):
            await task
        server.close()
