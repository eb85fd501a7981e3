"""The horizons of one chunk of forecasts, kept as the chunk's arrays, with their JSON made at once.

A 1000-feed boundary of the default model publishes 1000 x 252 horizon numbers. Made into a
``HorizonValues`` of dicts per feed and serialised one payload's dicts at a time, that cost about
17 ms of the event loop per 500 feeds (forecaster/predictor.py's row loop, then ``document()``
and orjson per payload), twice what the numbers' formatting itself costs. Here the chunk's rows
stay in its matrices; each feed's ``HorizonValues`` reads its row only when asked
(``payload.HorizonValues.of_row``), and the JSON of every row's ``horizons`` object is written by
a few orjson calls over whole matrices, then split into rows and spliced into each payload
(``orjson.Fragment``): the same bytes ``document()`` gives, byte for byte (tests/test_horizon_block.py),
whole numbers written as integers (``payload.whole_numbers``): a row of them from int64, which
orjson writes about 7 times faster than floats (a 500-feed chunk's forecasts, payloads and
packets 126.7M -> 102.6M instructions, ``benchmarks/payload_cpu.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import orjson

from forecaster.frame import FloatArray
from forecaster.horizons import Horizons
from forecaster.payload import HorizonValues, NonFiniteError, quantile_key, whole_numbers

HORIZON_DIGITS = 5
"""Significant digits of the horizons in a payload: 60 bars of full floats are 4.8 kB a feed,
and a forecast's error is far above 1e-5 of it (the next-bar fields keep every digit)."""

# 10.0 ** k computed by the same ufunc (np.power on float64) as the exponents it replaces, so the
# values are those bits exactly; a table lookup instead of two powers per number (about 3x faster).
with np.errstate(over="ignore"):  # past 1e308: inf, as the exponents gave
    _POWERS: FloatArray = 10.0 ** np.arange(0.0, 700.0)


def _round_significant_any(values: FloatArray, digits: int) -> FloatArray:
    """``round_significant`` for arrays that may hold NaN or infinities (they become NaN)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        magnitude = np.floor(np.log10(np.where(values > 0, values, 1.0)))
        shift = digits - 1 - magnitude
        up = 10.0 ** np.maximum(shift, 0)
        down = 10.0 ** np.maximum(-shift, 0)
        out: FloatArray = np.where(shift >= 0, np.round(values * up) / up, np.round(values / down) * down)
    return out


def round_significant(values: FloatArray, digits: int = HORIZON_DIGITS) -> FloatArray:
    """``values`` (finite, >= 0) to ``digits`` significant digits, as the shortest decimals: a
    scale below 1 is applied as a division by an exact power of ten (0.01 is not exact)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        return _round_significant_any(values, digits)
    with np.errstate(divide="ignore"):
        magnitude = np.floor(np.log10(np.where(values > 0, values, 1.0)))
    shift = (digits - 1 - magnitude).astype(np.int64)
    # The scale is 10 ** |shift| on either side: up (multiply, round, divide) where the shift is
    # not negative, down (divide, round, multiply) where it is; a side no number needs is skipped.
    up = shift >= 0
    scale = _POWERS[np.abs(shift)]
    if up.all():
        out: FloatArray = np.round(values * scale) / scale
        return out
    # Both sides are computed for every number and one is kept: the other may overflow (a huge
    # value on the up side), which is discarded, not a fault to warn about on every boundary.
    with np.errstate(over="ignore", invalid="ignore"):
        down_side = np.round(values / scale) * scale
        if not up.any():
            return down_side
        out = np.where(up, np.round(values * scale) / scale, down_side)
    return out


_EXACT = 2.0**53
"""Below it a whole float64 is an int64 exactly, and orjson writes it in full (``...0.0``, not
``1e+16``): as an integer, the same digits without the ``.0``."""


def _rows_of(out: bytes) -> list[bytes]:
    return out[2:-2].split(b"],[")  # b"[[1.5,2],[3,4.5]]": numbers hold no bracket


def _json_rows(matrix: FloatArray) -> list[bytes]:
    """Each row of a 2-D float matrix as its JSON list's inside (``1.5,2``), whole numbers as
    integers (``payload.whole_numbers``): a few orjson calls.

    A row of whole numbers only (volumes of 10,000 and more, at 5 significant digits) is written
    from int64, which orjson formats about 7 times faster than floats; the other rows as floats,
    their whole numbers then cut of ``.0``: the same bytes either way."""
    m = np.ascontiguousarray(matrix, dtype=np.float64)
    option = orjson.OPT_SERIALIZE_NUMPY
    with np.errstate(invalid="ignore"):  # NaN and inf: not whole (written as floats: null)
        whole = ((m == np.floor(m)) & (np.abs(m) < _EXACT)).all(axis=1)
    if whole.all():
        return _rows_of(orjson.dumps(m.astype(np.int64), option=option))
    if not whole.any():
        return _rows_of(whole_numbers(orjson.dumps(m, option=option)))
    out: list[bytes] = [b""] * len(m)
    for rows, made in ((np.flatnonzero(whole), _rows_of(orjson.dumps(m[whole].astype(np.int64), option=option))),
                       (np.flatnonzero(~whole), _rows_of(whole_numbers(orjson.dumps(m[~whole], option=option))))):
        for i, row in zip(rows.tolist(), made, strict=True):
            out[i] = row
    return out


def _key(text: str) -> bytes:
    return orjson.dumps(text).replace(b"%", b"%%")  # a literal of a %-template


class HorizonBlock:
    """One chunk's horizons: ``volume`` (N, T) and ``quantiles`` (N, Q, T) rounded for the
    payload (T: the ``spec.bars`` single bars, then its sums), levels ``levels``."""

    def __init__(self, volume: FloatArray, quantiles: FloatArray | None, levels: Sequence[float],
                 spec: Horizons) -> None:
        self.volume = volume
        self.levels = [float(q) for q in levels] if quantiles is not None else []
        self.quantiles = quantiles if self.levels else None
        self.bars = spec.bars
        self.labels = [label for label, _ in spec.sums]
        self._json: list[bytes] | None = None
        self._finite: list[bool] = []

    def __len__(self) -> int:
        return len(self.volume)

    def rows(self) -> list[HorizonValues]:
        return [HorizonValues.of_row(self, i) for i in range(len(self.volume))]

    def values(self, row: int) -> tuple[FloatArray, dict[float, FloatArray],
                                         dict[str, tuple[float, Mapping[float, float]]]]:
        """Row ``row`` as ``HorizonValues``' fields (numpy rows for the bars, floats for the sums)."""
        bars = self.bars
        windows = self.volume[row, bars:].tolist()
        if self.quantiles is None:
            return self.volume[row, :bars], {}, {label: (windows[i], {}) for i, label in enumerate(self.labels)}
        qv = self.quantiles[row]
        window_q = qv[:, bars:].tolist()
        return (self.volume[row, :bars], dict(zip(self.levels, qv[:, :bars], strict=True)),
                {label: (windows[j], {q: values[j] for q, values in zip(self.levels, window_q, strict=True)})
                 for j, label in enumerate(self.labels)})

    def json(self, row: int) -> bytes:
        """Row ``row``'s ``horizons`` object as JSON (``HorizonValues.document()``'s bytes);
        NonFiniteError if a number of it is not finite (the guard lets no such row through)."""
        if self._json is None:
            self._json = self._encode()
        if not self._finite[row]:
            raise NonFiniteError(f"horizons row {row} holds a value that is not finite")
        return self._json[row]

    def _encode(self) -> list[bytes]:
        n, bars = len(self.volume), self.bars
        if n == 0:
            return []
        # One test of the chunk's arrays instead of a search of each payload's horizons for "null"
        # (about 1.5 us of 1.8 kB a payload).
        finite = np.isfinite(self.volume).all(axis=1)
        if self.quantiles is not None:
            finite = finite & np.isfinite(self.quantiles).all(axis=(1, 2))
        self._finite = [bool(x) for x in np.asarray(finite).tolist()]
        qkeys = [orjson.dumps(quantile_key(q)).replace(b"%", b"%%") for q in self.levels]
        template = (b'{"volume":[%s],"quantiles":{' + b",".join(k + b":[%s]" for k in qkeys) + b'},"sums":{'
                    + b",".join(_key(label) + b':{"volume":%s,"quantiles":{' + b",".join(k + b":%s" for k in qkeys)
                                + b"}}" for label in self.labels)
                    + b"}}")
        columns = [_json_rows(self.volume[:, :bars])]
        if self.quantiles is not None:
            columns += [_json_rows(self.quantiles[:, k, :bars]) for k in range(len(self.levels))]
        per_row = [list(parts) for parts in zip(*columns, strict=True)]
        if self.labels:
            # Each window's volume, then its quantiles: the order of the template's holes.
            sums = self.volume[:, bars:, None]
            if self.quantiles is not None:
                sums = np.concatenate([sums, self.quantiles[:, :, bars:].transpose(0, 2, 1)], axis=2)
            for parts, window in zip(per_row, _json_rows(sums.reshape(n, -1)), strict=True):
                parts += window.split(b",")
        return [template % tuple(parts) for parts in per_row]
