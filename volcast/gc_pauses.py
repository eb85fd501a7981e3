"""Garbage-collector pauses kept out of the services' hot paths: lasting state is frozen.

CPython's full collection walks every object the collector tracks. Measured with ``gc.callbacks``
during benchmarks/close_latency.py (load 1.3-2.9): the streamer (ccxt, aiohttp, redis: ~50-90k
objects) paused 51-91 ms for each, the forecaster (torch: ~220k) 110-220 ms. A pause in the
streamer holds back every trade frame read meanwhile, which the delivery delay measures and
``auto`` grace takes for the exchange's (3/2 of it); one in the forecaster holds back every
forecast of its boundary. Nearly all of those objects are modules, classes, functions and
markets that live as long as the process: ``gc.freeze`` moves the objects alive now into a
permanent generation that collections skip (reference counting still frees them; only reference
cycles among them wait for ``gc.unfreeze``, which forecaster/heap.py does after a model swap).
"""

from __future__ import annotations

import gc


def freeze_lasting() -> None:
    """Collect once (a full pause, at a moment chosen for it), then keep every object alive now
    out of later collections."""
    gc.collect()
    gc.freeze()
