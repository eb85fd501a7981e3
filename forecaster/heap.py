"""The worker's heap and CPython's cycle collector.

A full collection walks every tracked object: with torch imported and a worker's state that is
a few hundred thousand objects, and the measured pause was 120-230 ms on a busy 2-core machine,
a few times a minute at 1000 feeds: a boundary that met one missed its latency by that much.
So the state that lives for the whole process (modules, the model, the held bars' bookkeeping)
is frozen out of the collector once it is built (``settle``), and the bulk reads that build it
(1000 feeds x 1440 bars as redis-py dicts) run with the collector paused: they allocate millions
of objects that are all alive until parsed, and every collection meanwhile was wasted work
(most of a 7 s first read).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection inside (reference counting still frees what is dropped)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def settle() -> None:
    """Collect the garbage, then move every surviving object out of future collections.

    What an earlier ``settle`` froze is thawed first, so that state replaced since (a swapped
    model's modules, which hold reference cycles) is collected rather than kept for ever.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
