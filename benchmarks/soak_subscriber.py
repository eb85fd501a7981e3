"""The soak's MQTT subscriber, a process of its own: counts the forecasts a user would receive.

    python benchmarks/soak_subscriber.py --port 1883 --topic 'soak-x/+/+/+/forecast' --out stats.json

Subscribes with QoS 1 (paho, the engine of aiomqtt) and rewrites ``--out`` every second with
what it has received: messages, distinct predicted bars (topic and ``open_time_ms``; a repeat
means a bar was forecast twice), per feed, by model (baseline or name and version), and payloads
that do not parse. SIGTERM writes the file once more and exits 0. A file, not a pipe, so that the
soak reads the latest figures whenever it likes and a slow reader never blocks this process.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages = 0
        self.bad_payloads = 0
        self.seen: set[tuple[str, int]] = set()
        self.per_feed: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.connects = 0

    def add(self, topic: str, payload: bytes | bytearray) -> None:
        with self.lock:
            self.messages += 1
            try:
                body = json.loads(payload)
                open_ms = int(body["open_time_ms"])
                model = body["model"]
                label = "baseline" if model.get("baseline") else f"{model['name']} v{model['version']}"
            except (ValueError, KeyError, TypeError, AttributeError):
                self.bad_payloads += 1
                return
            self.seen.add((topic, open_ms))
            self.per_feed[topic] += 1
            self.by_model[label] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "messages": self.messages,
                "distinct": len(self.seen),
                "repeats": self.messages - self.bad_payloads - len(self.seen),
                "bad_payloads": self.bad_payloads,
                "per_feed": dict(self.per_feed),
                "by_model": dict(self.by_model),
                "connects": self.connects,
                "written_s": time.time(),
            }


def write(out: Path, tally: Tally) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(tally.snapshot()), encoding="utf-8")
    tmp.replace(out)  # atomic: the soak never reads half a file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True, help="topic filter, e.g. prefix/+/+/+/forecast")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    tally = Tally()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-sub-{uuid.uuid4().hex[:8]}",
                         clean_session=True)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        tally.connects += 1
        c.subscribe(args.topic, qos=1)  # again after every reconnect: the session is clean

    client.on_connect = on_connect
    client.on_message = lambda _c, _u, msg: tally.add(msg.topic, msg.payload)
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    try:
        while not stop.wait(1.0):
            write(args.out, tally)
    finally:
        client.loop_stop()
        client.disconnect()
        write(args.out, tally)
    print(f"soak subscriber: {tally.messages} messages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
