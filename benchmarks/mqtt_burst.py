"""What the MQTT bytes cost: bursts of N QoS 1 retained publishes, written at once on the worker's
own connection (forecaster/mqtt_wire.py), to the subscriber process of ``benchmarks/latency.py``
on a private Mosquitto; latency from before the write to each arrival, by payload size.

``benchmarks/latency.py`` compares the worker with a paho client's burst, which spends about 28 us
of Python per message; this burst is the worker's own way of writing, so what it measures is the
broker and the subscriber, and how much of that grows with the payload's size. The sizes take
turns burst by burst, so the machine's load falls on each alike.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/mqtt_burst.py --json [--symbols 1000]
        [--sizes 366 2170 2674] [--bursts 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
WARM_UP = 2


async def measure(n: int, sizes: list[int], bursts: int) -> dict[str, Any]:
    from benchmarks.latency import Subscriber, free_port, mosquitto, percentiles
    from forecaster.mqtt_wire import Connection
    from volcast.settings import MqttSettings

    confirmed = [0]

    def on_confirmed(mid: int) -> None:
        confirmed[0] += 1

    results: dict[int, list[float]] = {size: [] for size in sizes}
    with tempfile.TemporaryDirectory(prefix="volcast-burst-") as tmp:
        port = free_port()
        with mosquitto(port, Path(tmp)):
            settings = MqttSettings(url=f"mqtt://127.0.0.1:{port}")
            connection = await Connection.open(settings, client_id=None, on_confirmed=on_confirmed, timeout_s=5)
            reading = asyncio.create_task(connection.run())
            try:
                async with Subscriber.running(port, "burst/#") as sub:
                    for burst in range(bursts + WARM_UP):
                        for size in sizes:
                            payload = (b'{"x":"' + b"1" * size)[: size - 2] + b'"}'
                            await sub.arm(n)
                            confirmed[0] = 0
                            sent = time.monotonic_ns()
                            connection.publish([(f"burst/{size}/{i}", payload) for i in range(n)], 1, True)
                            got = await sub.arrivals()
                            while confirmed[0] < n:  # noqa: ASYNC110 - the PUBACKs, as a publisher reads them
                                await asyncio.sleep(0.001)
                            if burst >= WARM_UP:
                                results[size] += [(t - sent) / 1e6 for t, _, _ in got]
                            await asyncio.sleep(0.2)
            finally:
                reading.cancel()
                await connection.close()
    return {"symbols": n, "bursts": bursts, "by_payload_bytes": {str(s): percentiles(v) for s, v in results.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[366, 2170, 2674])
    parser.add_argument("--bursts", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    result = asyncio.run(measure(args.symbols, args.sizes, args.bursts))
    print(orjson.dumps(result).decode() if args.json else orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
