"""What the forecaster worker counts: its status hash and its metrics read them, each of its
parts adds to its own."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class WorkerCounts:
    invalid_events: int = 0  # not a bar-closed event of a configured feed (dead-lettered)
    duplicate_events: int = 0  # an event of a bar already predicted, or twice in one read
    handling_errors: int = 0  # failed attempts at handling events (retried apart)
    batches: int = 0  # boundaries handled
    predictions: int = 0
    record_errors: int = 0  # boundaries whose Redis bookkeeping Redis refused
    # The last boundary's timings (ms), by phase: read, predict, submit, record, prepare.
    timings: dict[str, float] = field(default_factory=dict)
