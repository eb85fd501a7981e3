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

from volcast.gc_pauses import freeze_lasting


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


def settle(*, thaw: bool) -> None:
    """Collect the garbage, then move every surviving object out of future collections.

    With ``thaw`` (a model was swapped or demoted since) what earlier settles froze is thawed
    first, so that the replaced model's modules, which hold reference cycles, are collected
    rather than kept for ever. Without it only what was built since the last settle is walked:
    a full thaw walked every object the process holds (~220k with torch), 130-220 ms measured at
    load 1-3, and feeds read afresh asked for one after every such boundary (3 a minute while
    a young deployment's feeds were read again), right when its late bars came in.
    """
    if thaw:
        gc.unfreeze()
    freeze_lasting()
