"""Predictions to MQTT: the latest payload per topic, published whenever the broker can be reached.

The worker never waits on the broker to go on forecasting. It hands each batch to ``submit``,
which replaces any older unpublished payload of the same topic (a subscriber of a retained topic
only wants the newest), and gets a ticket back; ``published(ticket)`` completes once every topic
of the batch has been confirmed (QoS 1 PUBACK) with that payload or a newer one. The worker
acknowledges its Redis events only then, so a crash never loses a prediction that was not out.
While the broker is down the connection loop retries with capped, jittered backoff.

Publishes are pipelined: every pending payload is handed to paho at once and the PUBACKs are
counted as they come back. aiomqtt 2.5's ``Client.publish`` awaits each message's PUBACK through
an Event, a task and a timeout per message, and counts all pending calls on every call (O(n^2)
over a burst): 1000 predictions took 0.5-0.9 s that way. Its paho client does the same work
in a few milliseconds when called directly, so this module drives it (``client._client``) and
hooks paho's ``on_publish`` callback, which aiomqtt calls on the event loop's thread.

After a hand-over the queue is written out by a callback scheduled right behind aiomqtt's
``add_writer`` (``_flush``), not by the writer itself: the writer only fires after the next
poll of the selector, when every callback already queued has run, and the worker queues its
Redis bookkeeping (tens of ms of CPU at 1000 feeds) right after the hand-over. Calling
``loop_write`` inside the hand-over instead would unregister the writer before aiomqtt's queued
``add_writer`` registers it, leaving a writer that fires on every turn of the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from volcast.aio import raise_if_cancelled, until_first_ends
from volcast.backoff import Backoff
from volcast.connections import mqtt_client
from volcast.settings import MqttSettings

log = logging.getLogger(__name__)
_client_log = logging.getLogger(f"{__name__}.client")
_client_log.setLevel(logging.ERROR)

PUBACK_TIMEOUT_S = 30.0
"""A connection that leaves a PUBACK unanswered this long is treated as dead and reopened."""

CONNECT_TIMEOUT_S = 10.0
"""aiomqtt's wait for CONNACK, and for the broker to close the connection on shutdown."""

Ticket = Mapping[str, int]
"""topic -> sequence number of the payload submitted for it."""


class Publisher:
    """Owns one MQTT connection; run ``run()`` as a task for as long as it is used."""

    def __init__(self, settings: MqttSettings, *, client_id: str | None = None,
                 backoff_initial_s: float = 0.2, backoff_max_s: float = 10.0) -> None:
        self._settings = settings
        self._client_id = client_id
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._pending: dict[str, tuple[int, bytes]] = {}
        # mid -> (topic, seq, payload, when sent): handed to paho, PUBACK not seen yet.
        self._inflight: dict[int, tuple[str, int, bytes, float]] = {}
        self._done: dict[str, int] = {}
        self._seq = 0
        self._wakeup = asyncio.Event()
        # Replaced by a fresh Event at every progress, so each waiter wakes once per progress.
        self._progress = asyncio.Event()
        self._mqtt: paho.Client | None = None
        self.connected = False
        self.published_count = 0
        self.refused = 0
        self.reconnects = 0
        self.last_error = ""

    @property
    def unpublished(self) -> int:
        """Topics whose newest payload is not confirmed yet (queued or in flight)."""
        waiting = set(self._pending)
        waiting.update(topic for topic, _, _, _ in self._inflight.values())
        return len(waiting)

    def submit(self, messages: Sequence[tuple[str, bytes]]) -> Ticket:
        """Queue payloads (newest wins per topic); never blocks, never fails."""
        ticket: dict[str, int] = {}
        for topic, payload in messages:
            self._seq += 1
            self._pending[topic] = (self._seq, payload)
            ticket[topic] = self._seq
        if ticket and self._hand_over() is None:
            self._notify()  # QoS 0 may already be confirmed
        if self._pending:
            self._wakeup.set()  # not connected, or paho refused: the connection loop takes over
        return ticket

    def is_published(self, ticket: Ticket) -> bool:
        done = self._done
        return all(done.get(topic, 0) >= seq for topic, seq in ticket.items())

    async def published(self, ticket: Ticket) -> None:
        """Wait until every topic of ``ticket`` is confirmed with that payload or a newer one."""
        done = self._done
        waiting = [(topic, seq) for topic, seq in ticket.items() if done.get(topic, 0) < seq]
        while waiting:
            progress = self._progress
            await progress.wait()
            waiting = [(topic, seq) for topic, seq in waiting if done.get(topic, 0) < seq]

    async def run(self) -> None:
        """Connect, publish what is pending, reconnect with backoff; ends only by cancellation."""
        while True:
            try:
                async with mqtt_client(self._settings, client_id=self._client_id,
                                       max_inflight_messages=0, timeout=CONNECT_TIMEOUT_S,
                                       logger=_client_log) as client:
                    self.connected = True
                    self._backoff.reset()
                    log.info("connected to MQTT broker %s:%s", self._settings.host, self._settings.port)
                    await until_first_ends(_until_disconnected(client), self._publish_forever(client))
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
            finally:
                self.connected = False
            # Cancelled while disconnecting, aiomqtt raises MqttError instead: without this
            # check the service would reconnect forever instead of stopping (a test hung on it).
            raise_if_cancelled()
            delay = self._backoff.next_delay()
            self.reconnects += 1
            log.warning("MQTT broker unavailable (%s); %d payloads kept, retrying in %.1fs",
                        self.last_error, self.unpublished, delay)
            await asyncio.sleep(delay)

    def _confirm(self, topic: str, seq: int) -> None:
        if self._done.get(topic, 0) < seq:
            self._done[topic] = seq
        self.published_count += 1

    def _notify(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    def _on_publish(self, mid: int, reason_code: ReasonCode) -> bool:
        """paho's PUBACK (QoS 1) or written (QoS 0) callback; False for a mid that is not ours."""
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return False
        topic, seq, _, _ = entry
        if reason_code.is_failure:
            # An MQTT 5 broker refused it (e.g. not authorised): retrying would loop forever, and
            # holding the event back would stall the feed; count it and move on, as aiomqtt did.
            self.refused += 1
            log.error("broker refused the prediction on %s: %s", topic, reason_code)
        self._confirm(topic, seq)
        self._notify()
        return True

    def _requeue_inflight(self) -> None:
        """The connection is gone: what it did not confirm goes back to the queue, unless superseded."""
        newest: dict[str, tuple[int, bytes]] = {}
        for topic, seq, payload, _ in self._inflight.values():
            if topic not in newest or newest[topic][0] < seq:
                newest[topic] = (seq, payload)
        self._inflight.clear()
        for topic, entry in newest.items():
            if topic not in self._pending and self._done.get(topic, 0) < entry[0]:
                self._pending[topic] = entry
        if self._pending:
            self._wakeup.set()

    def _hand_over(self) -> MQTTErrorCode | None:
        """Give every queued payload to paho and write them out now; the error code if one failed."""
        mqtt = self._mqtt
        if mqtt is None or not self._pending:
            return None
        batch, self._pending = self._pending, {}
        items = list(batch.items())
        qos, retain = self._settings.qos, self._settings.retain
        sent = time.monotonic()
        failed: MQTTErrorCode | None = None
        for i, (topic, (seq, payload)) in enumerate(items):
            info = mqtt.publish(topic, payload, qos, retain)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                # Not handed over: this payload and the rest of the batch stay queued (those
                # handed over are in flight, and re-queued if the connection goes).
                for rest, entry in items[i:]:
                    self._pending.setdefault(rest, entry)
                failed = info.rc
                break
            if info.is_published():  # the callback already ran inside publish()
                self._confirm(topic, seq)
            else:
                self._inflight[info.mid] = (topic, seq, payload, sent)
        if items:
            asyncio.get_running_loop().call_soon(self._flush, mqtt)
        return failed

    def _flush(self, mqtt: paho.Client) -> None:
        """Write paho's queue now (aiomqtt's writer callback does the same, one poll later)."""
        if self._mqtt is not mqtt:
            return  # the connection it was queued on is gone
        try:
            mqtt.loop_write()
        except Exception as exc:  # aiomqtt's writer callback meets it too, and disconnects
            log.debug("writing to the broker failed: %r", exc)

    async def _publish_forever(self, client: aiomqtt.Client) -> None:
        mqtt: paho.Client = client._client
        # aiomqtt's own callback (API version 2), for mids that are not ours.
        aiomqtt_on_publish = cast("Callable[[paho.Client, Any, int, ReasonCode, Any], None] | None", mqtt.on_publish)

        def on_publish(c: paho.Client, userdata: Any, mid: int,
                       reason_code: ReasonCode, properties: Any) -> None:
            if not self._on_publish(mid, reason_code) and aiomqtt_on_publish is not None:
                aiomqtt_on_publish(c, userdata, mid, reason_code, properties)

        mqtt.on_publish = on_publish
        self._mqtt = mqtt
        try:
            while True:
                failed = self._hand_over()
                if failed is not None:
                    raise aiomqtt.MqttCodeError(failed, "Could not publish message")
                self._notify()
                if self._pending:
                    continue
                self._wakeup.clear()
                timeout = None
                if self._inflight:
                    oldest = min(sent for _, _, _, sent in self._inflight.values())
                    timeout = max(0.0, oldest + PUBACK_TIMEOUT_S - time.monotonic())
                try:
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                    async with asyncio.timeout(timeout):
                        await self._wakeup.wait()
                except TimeoutError:
                    raise aiomqtt.MqttError(f"no PUBACK within {PUBACK_TIMEOUT_S:.0f}s") from None
        finally:
            self._mqtt = None
            mqtt.on_publish = aiomqtt_on_publish
            self._requeue_inflight()


async def _until_disconnected(client: aiomqtt.Client) -> None:
    # aiomqtt has no disconnect callback; its message iterator raises MqttError when the
    # connection drops, which is the public way to notice a broker that went away while idle.
    async for _ in client.messages:
        pass
    raise aiomqtt.MqttError("MQTT connection closed")
