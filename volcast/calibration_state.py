"""The packed form of a multi-horizon band calibrator's state (``P:{…}:calibration``, field
``packed``), read by the forecaster (forecaster/calibration.py) and by ``volcast status``.

A model with horizons has 63 targets by default (60 coming bars and 3 windows), each with two
corrections and four counts. As comma-separated text that was 2 x 63 float reprs and 4 x 63 ints
per feed at every boundary: at 1000 feeds ~85 ms of the worker's CPU a boundary, ~80% of the
calibration's bookkeeping, which is why the horizons' calibration was off by default. Packed,
the same numbers are the row's little-endian 8-byte values in base64: exact (the floats' bits,
not a decimal rendering) and made for all feeds of a boundary at once.

Layout: ``PACKED_ROWS`` in order, each one value per horizon; the corrections are IEEE 754
doubles, the counts signed 64-bit integers. So a state of H horizons is 48 x H bytes, 64 x H
base64 characters. The next bar's values (horizon 0) are also written as plain text fields
(``c_low``, ``c_high``, ``n``, ``to_ms``), which a reader that knows nothing of ``packed`` reads
as a one-horizon state.
"""

from __future__ import annotations

import base64
import binascii
import math
import sys
from array import array

PACKED_ROWS = ("c_low", "c_high", "n", "to_ms", "banded", "covered")
"""The arrays of a packed state, in order."""
FLOAT_ROWS = 2
"""The first ``FLOAT_ROWS`` of them are doubles, the others integers."""
BYTES_PER_HORIZON = 8 * len(PACKED_ROWS)


def unpack_state(text: str | None) -> dict[str, list[float] | list[int]] | None:
    """The arrays of a packed state (``PACKED_ROWS`` -> one value per horizon); None when the
    text is missing, not base64, of a length no state has, or holds a correction that is not
    finite."""
    if not text:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not raw or len(raw) % BYTES_PER_HORIZON:
        return None
    horizons = len(raw) // BYTES_PER_HORIZON
    width = 8 * horizons
    out: dict[str, list[float] | list[int]] = {}
    for i, name in enumerate(PACKED_ROWS):
        values = array("d" if i < FLOAT_ROWS else "q")
        values.frombytes(raw[i * width:(i + 1) * width])
        if sys.byteorder == "big":
            values.byteswap()
        out[name] = values.tolist()
    if not all(math.isfinite(v) for name in PACKED_ROWS[:FLOAT_ROWS] for v in out[name]):
        return None
    return out
