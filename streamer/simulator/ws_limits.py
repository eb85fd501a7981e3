"""Binance's websocket limits, counted (and enforced) by the simulator as the exchange does.

Binance spot's market streams (developers.binance.com, "WebSocket Streams", General info):

- **5 incoming messages per second per connection**: a PING frame, a PONG frame, and a JSON
  control message (SUBSCRIBE, UNSUBSCRIBE, ...) each count. A connection that sends more is
  disconnected (close code 1008, "Too many requests" as observed); an IP disconnected repeatedly
  may be banned. Counted over a sliding second.
- **1024 streams per connection**: a SUBSCRIBE beyond it is refused with an error.
- **300 connection attempts every 5 minutes per IP**: beyond, the handshake is refused (HTTP 429
  here; all loopback clients are one IP, as all of a machine's clients are on Binance).

Every violation is counted and logged once per kind and connection; ``snapshot()`` is what
``GET /debug/limits`` shows (with the REST weights). ``enforce=False`` only counts.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MESSAGES_PER_S = 5
STREAMS_PER_CONNECTION = 1024
ATTEMPTS_PER_WINDOW = 300
ATTEMPTS_WINDOW_S = 300.0
TOO_MANY_REQUESTS = 1008  # the close code Binance sends


@dataclass(slots=True)
class ConnectionCounter:
    """Incoming messages of one connection within the last second."""

    number: int
    times: deque[float] = field(default_factory=deque)
    peak: int = 0  # the most messages seen within one second
    messages: int = 0
    violated: bool = False


class WebsocketLimits:
    def __init__(
        self,
        *,
        messages_per_s: int = MESSAGES_PER_S,
        streams_per_connection: int = STREAMS_PER_CONNECTION,
        attempts: int = ATTEMPTS_PER_WINDOW,
        attempts_window_s: float = ATTEMPTS_WINDOW_S,
        enforce: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.messages_per_s = messages_per_s
        self.streams_per_connection = streams_per_connection
        self.attempts = attempts
        self.attempts_window_s = attempts_window_s
        self.enforce = enforce
        self._clock = clock
        self._attempts: deque[float] = deque()
        self.attempts_total = 0
        self.attempts_peak = 0  # the most attempts within one window
        self.refused_attempts = 0
        self.message_violations = 0  # connections that sent more than messages_per_s in a second
        self.stream_violations = 0  # SUBSCRIBE requests beyond streams_per_connection
        self.peak_messages_per_s = 0
        self.messages_total = 0

    def attempt(self) -> bool:
        """A connection attempt (a websocket handshake); False if it must be refused."""
        now = self._clock()
        while self._attempts and now - self._attempts[0] >= self.attempts_window_s:
            self._attempts.popleft()
        self.attempts_total += 1
        if len(self._attempts) >= self.attempts:
            self.refused_attempts += 1
            if self.refused_attempts == 1 or self.refused_attempts % 100 == 0:
                log.warning(
                    "websocket limit: %d connection attempts within %gs (limit %d); %d refused so far",
                    len(self._attempts) + 1, self.attempts_window_s, self.attempts, self.refused_attempts,
                )
            return not self.enforce
        self._attempts.append(now)
        self.attempts_peak = max(self.attempts_peak, len(self._attempts))
        return True

    def message(self, counter: ConnectionCounter) -> bool:
        """An incoming message (ping, pong, or text) on a connection; False if it must be dropped."""
        now = self._clock()
        times = counter.times
        times.append(now)
        while now - times[0] >= 1.0:
            times.popleft()
        counter.messages += 1
        self.messages_total += 1
        counter.peak = max(counter.peak, len(times))
        self.peak_messages_per_s = max(self.peak_messages_per_s, len(times))
        if len(times) <= self.messages_per_s:
            return True
        if not counter.violated:
            counter.violated = True
            self.message_violations += 1
            log.warning(
                "websocket limit: connection %d sent %d messages within a second (limit %d)%s",
                counter.number, len(times), self.messages_per_s, "; disconnected" if self.enforce else "",
            )
        return not self.enforce

    def streams(self, counter: ConnectionCounter, subscribed: int, adding: int) -> bool:
        """A SUBSCRIBE of ``adding`` new streams to a connection holding ``subscribed``: allowed?"""
        if subscribed + adding <= self.streams_per_connection:
            return True
        self.stream_violations += 1
        log.warning("websocket limit: connection %d asked for %d streams (limit %d)", counter.number,
                    subscribed + adding, self.streams_per_connection)
        return not self.enforce

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        in_window = sum(1 for t in self._attempts if now - t < self.attempts_window_s)
        return {
            "limits": {
                "messages_per_s": self.messages_per_s,
                "streams_per_connection": self.streams_per_connection,
                "attempts": self.attempts,
                "attempts_window_s": self.attempts_window_s,
                "enforced": self.enforce,
            },
            "attempts_total": self.attempts_total,
            "attempts_in_window": in_window,
            "attempts_peak_in_window": self.attempts_peak,
            "refused_attempts": self.refused_attempts,
            "messages_total": self.messages_total,
            "peak_messages_per_s": self.peak_messages_per_s,
            "message_violations": self.message_violations,
            "stream_violations": self.stream_violations,
        }
