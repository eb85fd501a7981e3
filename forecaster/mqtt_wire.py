"""A lean MQTT 3.1.1 connection for publishing: the forecaster's hot path to the broker.

paho (under aiomqtt) spends about 14 us of Python on each PUBLISH and about as much on each
PUBACK, whose header it reads one ``recv`` at a time: at 1000 feeds, 25-30 ms of the worker's
event loop per boundary, as much as reading the bars and the forward pass together. Here a batch
of PUBLISH packets is built with a few joins and written with one transport write, and every
PUBACK the socket holds is parsed in one pass (about 1 us per message; docs/forecaster.md).

It does what the publisher needs and nothing more: CONNECT (clean session, user name and
password, TLS, TCP_NODELAY), PUBLISH at QoS 0, 1 and 2, PINGREQ keep-alive, DISCONNECT. It never
subscribes. Subscribers, the demo and the start-up check keep aiomqtt (volcast.connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from volcast.connections import mqtt_connection_options
from volcast.settings import MqttSettings

KEEPALIVE_S = 60
"""Seconds between PINGREQs while idle; a broker disconnects a client silent for 1.5 times this."""

_CONNACK_CODES = {
    1: "the broker does not accept MQTT 3.1.1",
    2: "the broker rejected the client id",
    3: "the broker is unavailable",
    4: "bad user name or password",
    5: "not authorised",
}
_PUBACK, _PUBREC, _PUBCOMP, _PINGRESP = 4, 5, 7, 13
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"


class MqttError(Exception):
    """The connection failed or ended; the publisher reconnects."""


class ConnectRefusedError(MqttError):
    """CONNACK with a non-zero return code: ``code`` is that code (4: credentials, 5: not authorised)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"connection refused: {_CONNACK_CODES.get(code, f'return code {code}')}")
        self.code = code


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive_s: int) -> bytes:
    flags = 0x02  # clean session: what was not confirmed is the publisher's to send again
    payload = _string(client_id.encode())
    if username is not None:
        flags |= 0x80
        payload += _string(username.encode())
    if password is not None:
        flags |= 0x40
        payload += _string(password.encode())
    body = _string(b"MQTT") + bytes([4, flags]) + keepalive_s.to_bytes(2, "big") + payload
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, retain: bool, mid: int) -> bytes:
    """``topic`` already length-prefixed (``_string``); ``mid`` unused at QoS 0."""
    first = 0x30 | (qos << 1) | (1 if retain else 0)
    if qos:
        return b"".join((bytes([first]), _varint(len(topic) + 2 + len(payload)), topic,
                         mid.to_bytes(2, "big"), payload))
    return b"".join((bytes([first]), _varint(len(topic) + len(payload)), topic, payload))


def split_packets(buf: bytearray) -> list[tuple[int, bytes]]:
    """The complete packets at the front of ``buf`` (removed from it): (type, body)."""
    out: list[tuple[int, bytes]] = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        length, shift, i = 0, 0, pos + 1
        while True:
            if i >= end:
                del buf[:pos]
                return out
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
            if shift > 21:
                raise MqttError("malformed packet length from the broker")
        if end - i < length:
            break
        out.append((buf[pos] >> 4, bytes(buf[i:i + length])))
        pos = i + length
    del buf[:pos]
    return out


@dataclass
class _Mids:
    """Packet ids 1..65535 not in use by an unconfirmed message."""

    last: int = 0

    def next(self, busy: Callable[[int], bool]) -> int:
        for _ in range(65535):
            self.last = self.last % 65535 + 1
            if not busy(self.last):
                return self.last
        raise MqttError("65535 messages unconfirmed: the broker is not answering")


class Connection:
    """One connection to the broker; ``publish`` writes at once, ``run`` reads its answers.

    ``on_confirmed(mid)`` is called for each PUBACK (QoS 1) or PUBCOMP (QoS 2), on the event
    loop's thread, once per message.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_confirmed: Callable[[int], None], *, keepalive_s: int = KEEPALIVE_S) -> None:
        self._reader = reader
        self._writer = writer
        self._on_confirmed = on_confirmed
        self._keepalive_s = keepalive_s
        self._topics: dict[str, bytes] = {}
        self._mids = _Mids()
        self._unconfirmed: set[int] = set()
        self._last_read = asyncio.get_running_loop().time()
        self._pending_input = bytearray()  # what came after CONNACK in the same read

    @classmethod
    async def open(cls, settings: MqttSettings, *, client_id: str | None, on_confirmed: Callable[[int], None],
                   timeout_s: float, keepalive_s: int = KEEPALIVE_S) -> Connection:
        """Connect and wait for CONNACK (ConnectRefusedError if it refuses, MqttError if it fails)."""
        options = mqtt_connection_options(settings)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(
                    options.host, options.port, ssl=options.tls,
                    server_hostname=options.host if options.tls is not None else None)
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # Without it a small packet waited for the broker's delayed ACK (~40 ms).
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connection = cls(reader, writer, on_confirmed, keepalive_s=keepalive_s)
                writer.write(connect_packet(client_id or f"volcast-{uuid.uuid4().hex[:12]}",
                                            options.username, options.password, keepalive_s))
                await connection._connack()
        except BaseException as exc:
            if writer is not None:  # refused, timed out or cancelled: no socket left behind
                writer.close()
            if isinstance(exc, TimeoutError):
                raise MqttError(f"no CONNACK within {timeout_s:.0f}s") from None
            if isinstance(exc, OSError):
                raise MqttError(f"cannot connect: {exc}") from exc
            raise
        return connection

    async def _connack(self) -> None:
        buf = bytearray()
        while True:
            data = await self._reader.read(4096)
            if not data:
                raise MqttError("the broker closed the connection before CONNACK")
            buf += data
            packets = split_packets(buf)
            if packets:
                kind, body = packets[0]
                if kind != 2 or len(body) < 2:
                    raise MqttError(f"expected CONNACK, got packet type {kind}")
                if body[1]:
                    raise ConnectRefusedError(body[1])
                self._pending_input = buf
                return

    @property
    def unconfirmed(self) -> int:
        return len(self._unconfirmed)

    def publish(self, messages: Sequence[tuple[str, bytes]], qos: int, retain: bool) -> list[int]:
        """Write every message now; their packet ids (none at QoS 0, which is done once written)."""
        if self._writer.is_closing():
            raise MqttError("the connection is closed")
        topics = self._topics
        packets: list[bytes] = []
        mids: list[int] = []
        busy = self._unconfirmed.__contains__
        for topic, payload in messages:
            prefixed = topics.get(topic)
            if prefixed is None:
                prefixed = topics[topic] = _string(topic.encode())
            mid = 0
            if qos:
                mid = self._mids.next(busy)
                self._unconfirmed.add(mid)
                mids.append(mid)
            packets.append(publish_packet(prefixed, payload, qos, retain, mid))
        self._writer.write(b"".join(packets))
        return mids

    async def run(self) -> None:
        """Read the broker's answers until the connection ends (raises MqttError); pings meanwhile."""
        ping = asyncio.create_task(self._ping_forever(), name="mqtt-ping")
        try:
            buf = self._pending_input
            while True:
                for kind, body in split_packets(buf):
                    self._handle(kind, body)
                data = await self._reader.read(65536)
                if not data:
                    raise MqttError("the broker closed the connection")
                self._last_read = asyncio.get_running_loop().time()
                buf += data
        except (ConnectionError, OSError) as exc:
            raise MqttError(f"connection lost: {exc}") from exc
        finally:
            ping.cancel()
            with contextlib.suppress(asyncio.CancelledError, MqttError):
                await ping

    def _handle(self, kind: int, body: bytes) -> None:
        if kind in (_PUBACK, _PUBCOMP):
            mid = int.from_bytes(body[:2], "big")
            if mid in self._unconfirmed:
                self._unconfirmed.discard(mid)
                self._on_confirmed(mid)
        elif kind == _PUBREC:
            self._writer.write(b"\x62\x02" + body[:2])  # PUBREL; PUBCOMP confirms
        # PINGRESP and anything else: reading it was the sign of life.

    async def _ping_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._keepalive_s / 2)
            if loop.time() - self._last_read > 1.5 * self._keepalive_s:
                self._writer.close()  # run() then ends with "closed"
                raise MqttError(f"no answer from the broker for {1.5 * self._keepalive_s:.0f}s")
            self._writer.write(_PINGREQ)

    async def close(self) -> None:
        """DISCONNECT and close; never raises."""
        with contextlib.suppress(Exception):
            if not self._writer.is_closing():
                self._writer.write(_DISCONNECT)
            self._writer.close()
            async with asyncio.timeout(2):
                await self._writer.wait_closed()
