"""Predictions to MQTT: the latest payload per topic, published whenever the broker can be reached.

The worker never waits on the broker to go on forecasting. It hands each batch to ``submit``,
which replaces any older unpublished payload of the same topic (a subscriber of a retained topic
only wants the newest), and gets a ticket back; ``published(ticket)`` completes once every topic
of the batch has been confirmed (QoS 1 PUBACK, QoS 2 PUBCOMP) with that payload or a newer one.
The worker acknowledges its Redis events only then, so a crash never loses a prediction that was
not out. While the broker is down the connection loop retries with capped, jittered backoff.

Publishes are pipelined on the forecaster's own connection (``mqtt_wire.Connection``): a batch is
written to the socket at once, inside ``submit``, so the broker forwards a boundary's first
predictions while the worker computes the next ones, and the confirmations are counted as they
come back. (aiomqtt's ``Client.publish`` awaited each message's PUBACK through an Event, a task
and a timeout per message, O(n^2) over a burst: 0.5-0.9 s for 1000 predictions; paho driven
directly still cost about 30 us per message on the event loop, mqtt_wire.py says where.)
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

from forecaster.mqtt_wire import Connection, MqttError
from volcast.aio import raise_if_cancelled, until_first_ends
from volcast.backoff import Backoff
from volcast.settings import MqttSettings

log = logging.getLogger(__name__)

PUBACK_TIMEOUT_S = 30.0
"""A connection that leaves a PUBACK unanswered this long is treated as dead and reopened."""

CONNECT_TIMEOUT_S = 10.0
"""The wait for the broker's CONNACK."""

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
        # mid -> (topic, seq, payload, when sent): written to the broker, not confirmed yet.
        self._inflight: dict[int, tuple[str, int, bytes, float]] = {}
        self._done: dict[str, int] = {}
        self._seq = 0
        self._wakeup = asyncio.Event()
        # Replaced by a fresh Event at every progress, so each waiter wakes once per progress.
        self._progress = asyncio.Event()
        self._connection: Connection | None = None
        self._notify_due = False
        self.connected = False
        self.published_count = 0
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
            self._wakeup.set()  # not connected, or the write failed: the connection loop takes over
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
            connection: Connection | None = None
            try:
                connection = await Connection.open(
                    self._settings, client_id=self._client_id or self._settings.client_id,
                    on_confirmed=self._on_confirmed, timeout_s=CONNECT_TIMEOUT_S)
                self.connected = True
                self._backoff.reset()
                log.info("connected to MQTT broker %s:%s", self._settings.host, self._settings.port)
                await until_first_ends(connection.run(), self._publish_forever(connection))
            except MqttError as exc:
                self.last_error = str(exc)
            finally:
                self.connected = False
                if connection is not None:
                    await connection.close()
            # A cancellation that met a failing connection surfaces as MqttError: without this
            # check the service would reconnect forever instead of stopping.
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

    def _on_confirmed(self, mid: int) -> None:
        """The broker's PUBACK (QoS 1) or PUBCOMP (QoS 2) of packet ``mid``."""
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        topic, seq, _, _ = entry
        self._confirm(topic, seq)
        if not self._notify_due:
            # Once per turn of the loop, not per PUBACK: a read holds hundreds of them.
            self._notify_due = True
            asyncio.get_running_loop().call_soon(self._notify_now)

    def _notify_now(self) -> None:
        self._notify_due = False
        self._notify()

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

    def _hand_over(self) -> MqttError | None:
        """Write every queued payload to the broker now; the error if the connection failed."""
        connection = self._connection
        if connection is None or not self._pending:
            return None
        batch, self._pending = self._pending, {}
        items = list(batch.items())
        qos = self._settings.qos
        try:
            mids = connection.publish([(topic, payload) for topic, (_, payload) in items], qos, self._settings.retain)
        except MqttError as exc:
            for topic, entry in items:  # not written: queued again, for the next connection
                self._pending.setdefault(topic, entry)
            return exc
        if not qos:  # written is all QoS 0 promises
            for topic, (seq, _) in items:
                self._confirm(topic, seq)
            return None
        sent = time.monotonic()
        inflight = self._inflight
        for mid, (topic, (seq, payload)) in zip(mids, items, strict=True):
            inflight[mid] = (topic, seq, payload, sent)
        return None

    def _puback_deadline(self) -> float | None:
        """Seconds until the oldest message in flight is overdue (0: it is); None: none in flight."""
        if not self._inflight:
            return None
        oldest = min(sent for _, _, _, sent in self._inflight.values())
        return max(0.0, oldest + PUBACK_TIMEOUT_S - time.monotonic())

    async def _publish_forever(self, connection: Connection) -> None:
        self._connection = connection
        try:
            while True:
                failed = self._hand_over()
                if failed is not None:
                    raise failed
                self._notify()
                if self._pending:
                    continue
                self._wakeup.clear()
                timeout = self._puback_deadline()
                try:
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                    async with asyncio.timeout(timeout):
                        await self._wakeup.wait()
                except TimeoutError:
                    # A PUBACK does not wake this wait: the deadline was the oldest message in
                    # flight then, which may have been confirmed since (it usually has).
                    if self._puback_deadline() == 0.0:
                        raise MqttError(f"no PUBACK within {PUBACK_TIMEOUT_S:.0f}s") from None
        finally:
            self._connection = None
            self._requeue_inflight()
