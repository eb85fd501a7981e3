"""The prediction record: what goes to MQTT, to the ``prediction`` hash and to the predictions stream.

The MQTT payload is JSON with a ``schema`` number, so that subscribers can refuse a layout they do
not know instead of misreading it. The schema is documented field by field in README's payload
table; adding a field keeps the number, renaming or removing one bumps it (``guard`` was added so).
Schema 2 added ``horizons`` (the forecast of each coming bar and of cumulative windows, from
the same forward pass) and keeps every schema 1 field as it was, so a reader of schema 1 fields
that does not insist on the number reads a schema 2 payload unchanged; ``from_json`` reads both.
A whole number in ``horizons`` is written as a JSON integer (``whole_numbers``): the same number
to any JSON reader, so the schema keeps its number.

No payload carries a number that is not finite: orjson writes NaN and infinities as ``null``, and
``to_json`` refuses any payload with a null in it (``NonFiniteError``), the last line of defence
behind the output guard (forecaster/guard.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson

from forecaster.frame import FloatArray
from volcast.durations import format_duration_ms
from volcast.keys import Feed

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
READABLE_SCHEMAS = frozenset({1, 2})


class NonFiniteError(ValueError):
    """A prediction holds a number that is not finite: it must not be published or recorded."""


@dataclass(frozen=True, slots=True)
class Guarded:
    """Why the model's own forecast was not published (a ``forecaster.guard`` reason), and which
    model made it; the prediction's values are then a baseline's on the same bars."""

    reason: str
    model_name: str
    model_version: str


class _Block(Protocol):
    """Where a ``HorizonValues`` of a batch reads its row (forecaster/horizon_block.py)."""

    def values(self, row: int) -> tuple[Any, Any, Any]: ...

    def json(self, row: int) -> bytes: ...


class HorizonValues:
    """A multi-horizon forecast: ``volume[h]`` of the bar h intervals after the predicted one
    (``volume[0]`` is the predicted bar), each quantile level's values in the same order, and
    per cumulative window (label such as ``"15m"``: the next 15 minutes of bars from the predicted
    one on) its volume and quantiles.

    Immutable. Made from its values, or (the worker's, ``of_row``) as a row of its batch's
    ``HorizonBlock``, whose fields are read from the batch's arrays when first asked for and
    whose JSON the block writes for every row at once."""

    __slots__ = ("_block", "_quantiles", "_row", "_sums", "_volume")

    def __init__(self, volume: Sequence[float] | FloatArray, quantiles: Mapping[float, Sequence[float] | FloatArray],
                 sums: Mapping[str, tuple[float, Mapping[float, float]]]) -> None:
        self._volume: Sequence[float] | FloatArray | None = volume  # numpy rows from the worker
        self._quantiles: Mapping[float, Sequence[float] | FloatArray] | None = quantiles
        self._sums: Mapping[str, tuple[float, Mapping[float, float]]] | None = sums
        self._block: _Block | None = None
        self._row = 0

    @classmethod
    def of_row(cls, block: _Block, row: int) -> HorizonValues:
        out = cls.__new__(cls)
        out._volume = out._quantiles = out._sums = None
        out._block, out._row = block, row
        return out

    def _fill(self) -> None:
        assert self._block is not None
        self._volume, self._quantiles, self._sums = self._block.values(self._row)

    @property
    def volume(self) -> Sequence[float] | FloatArray:
        if self._volume is None:
            self._fill()
        assert self._volume is not None
        return self._volume

    @property
    def quantiles(self) -> Mapping[float, Sequence[float] | FloatArray]:
        if self._quantiles is None:
            self._fill()
        assert self._quantiles is not None
        return self._quantiles

    @property
    def sums(self) -> Mapping[str, tuple[float, Mapping[float, float]]]:
        if self._sums is None:
            self._fill()
        assert self._sums is not None
        return self._sums

    def of_block(self) -> tuple[Any, int] | None:
        """(its batch's block, its row) when made by ``of_row``; None when made from values."""
        return None if self._block is None else (self._block, self._row)

    def json(self) -> bytes | None:
        """The ``horizons`` object's JSON when its batch made it (None: use ``document``)."""
        return None if self._block is None else self._block.json(self._row)

    def __eq__(self, other: object) -> bool:
        # Value equality whether the lists are numpy rows (the worker's) or lists (parsed).
        if not isinstance(other, HorizonValues):
            return NotImplemented
        return (list(self.volume) == list(other.volume)
                and {q: list(v) for q, v in self.quantiles.items()} == {q: list(v) for q, v in other.quantiles.items()}
                and dict(self.sums) == dict(other.sums))

    __hash__ = None  # type: ignore[assignment]  # mutable contents: like a list, not hashable

    def __repr__(self) -> str:
        return f"HorizonValues(volume={self.volume!r}, quantiles={self.quantiles!r}, sums={self.sums!r})"

    def document(self) -> dict[str, object]:
        return {
            "volume": self.volume,
            "quantiles": {quantile_key(q): v for q, v in self.quantiles.items()},
            "sums": {label: {"volume": v, "quantiles": {quantile_key(q): x for q, x in qs.items()}}
                     for label, (v, qs) in self.sums.items()},
        }

    @classmethod
    def from_document(cls, raw: Mapping[str, object]) -> HorizonValues:
        volume = raw["volume"]
        quantiles = raw["quantiles"]
        sums = raw["sums"]
        if not isinstance(volume, list) or not isinstance(quantiles, dict) or not isinstance(sums, dict):
            raise TypeError("horizons needs a volume list, a quantiles map and a sums map")
        qs = {float(q): [float(x) for x in v] for q, v in quantiles.items()}
        if any(len(v) != len(volume) for v in qs.values()):
            raise ValueError("horizons: every quantile needs one value per horizon")
        return cls([float(v) for v in volume], qs,
                   {str(label): (float(w["volume"]), {float(q): float(x) for q, x in w["quantiles"].items()})
                    for label, w in sums.items()})


@dataclass(frozen=True, slots=True)
class Prediction:
    """One next-bar volume forecast of one feed.

    ``open_time_ms`` is the open time of the predicted bar; ``last_bar_ms`` the open time of the
    newest bar the model saw (one interval earlier when nothing was skipped). ``last_volume`` is
    that bar's volume: the naive forecast, kept so the realised error can be compared with it.
    """

    feed: Feed
    open_time_ms: int
    last_bar_ms: int
    last_volume: float
    volume: float
    quantiles: Mapping[float, float]
    model_name: str
    model_version: str
    baseline: bool
    created_ms: int
    guard: Guarded | None = None
    horizons: HorizonValues | None = None  # None: the serving model forecasts the next bar only
    # The band in ``quantiles`` was corrected by the feed's calibrator (forecaster/calibration.py);
    # ``raw_quantiles`` then holds the model's own, for traceability.
    calibrated: bool = False
    raw_quantiles: Mapping[float, float] | None = None
    # The bands in ``horizons`` are calibrated (every target past its warm-up).
    horizons_calibrated: bool = False
    # Above 0: made again after bar ``last_bar_ms`` was amended by a late trade (its revision
    # number); it replaces the forecast made from the bar as it first closed.
    revision: int = 0

    def to_json(self) -> bytes:
        """The MQTT payload; NonFiniteError if any number in it is not finite."""
        document: dict[str, object] = {
            "schema": SCHEMA_VERSION,
            "exchange": self.feed.exchange,
            "symbol": self.feed.symbol,
            "interval": _interval(self.feed.interval_ms),
            "interval_ms": self.feed.interval_ms,
            "open_time_ms": self.open_time_ms,
            "last_bar_ms": self.last_bar_ms,
            "last_volume": self.last_volume,
            "volume": self.volume,
            "quantiles": {quantile_key(q): v for q, v in self.quantiles.items()},
            "model": {"name": self.model_name, "version": self.model_version, "baseline": self.baseline},
            "created_ms": self.created_ms,
            "calibrated": self.calibrated,
        }
        if self.raw_quantiles is not None:
            document["raw_quantiles"] = {quantile_key(q): v for q, v in self.raw_quantiles.items()}
        if self.guard is not None:
            document["guard"] = {"reason": self.guard.reason,
                                 "replaced": {"name": self.guard.model_name, "version": self.guard.model_version}}
        made = b""  # the horizons' JSON
        if self.horizons is not None:
            # The batch's JSON of it when the worker made it (forecaster/horizon_block.py: the same
            # bytes; it refuses a row that is not finite itself, NonFiniteError).
            made = self.horizons.json() or b""
            if not made:
                made = whole_numbers(orjson.dumps(self.horizons.document(), option=orjson.OPT_SERIALIZE_NUMPY))
                # Inside a list a NaN is ",null" or "[null", which the test below does not see;
                # this JSON holds no string but its keys ("0.1", "15m").
                if b"null" in made:
                    raise NonFiniteError(f"prediction of {self.feed} at {self.open_time_ms}: a horizon is not finite")
            document["horizons"] = orjson.Fragment(made)
            document["horizons_calibrated"] = self.horizons_calibrated
        if self.revision:
            document["revision"] = self.revision
        out = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
        # orjson writes NaN and +-inf as null, and no field here is ever null: one substring search
        # (about 0.1 us) instead of a test of every number. Not through the horizons, checked
        # above (1.2 us more of 1.8 kB): the search ends where they begin, or later (the fields
        # after them, a bool and an int, are never null).
        if out.find(b":null", 0, len(out) - len(made)) >= 0:
            raise NonFiniteError(f"prediction of {self.feed} at {self.open_time_ms} holds a value that is not finite: "
                                 f"volume {self.volume!r}, last_volume {self.last_volume!r}, "
                                 f"quantiles {dict(self.quantiles)!r}")
        return out

    def to_fields(self, payload: bytes | None = None) -> dict[str, str]:
        """Flat string fields for the Redis hash and stream entry (the JSON included whole).

        ``payload``: this prediction's ``to_json()`` when the caller already has it (which checked
        the numbers). ``guard`` is always there (empty when the forecast passed): HSET leaves the
        fields it is not given, so the hash would otherwise keep an earlier prediction's reason.
        """
        flat = self.flat_fields(payload)
        fields = {cast(str, name): cast(str, value) for name, value in zip(flat[:-2:2], flat[1:-2:2], strict=True)}
        fields["json"] = cast(bytes, flat[-1]).decode()
        return fields

    def flat_fields(self, payload: bytes | None = None) -> list[str | bytes]:
        """``to_fields`` as [name, value, ...], the JSON last and as bytes: the recorder's form
        (forecaster/recorder.py sends it to Redis as an argument of its own)."""
        if payload is None:
            payload = self.to_json()
        return [
            "open_time_ms", str(self.open_time_ms),
            "last_bar_ms", str(self.last_bar_ms),
            "last_volume", repr(self.last_volume),
            "volume", repr(self.volume),
            "model_name", self.model_name,
            "model_version", self.model_version,
            "baseline", "1" if self.baseline else "0",
            "created_ms", str(self.created_ms),
            "guard", self.guard.reason if self.guard is not None else "",
            "json", payload,
        ]

    @classmethod
    def from_json(cls, data: bytes | str) -> Prediction:
        """Parse a schema 1 or 2 payload; anything else raises ValueError naming the problem."""
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"prediction payload is not JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("schema") not in READABLE_SCHEMAS:
            raise ValueError(f"unknown prediction schema {raw.get('schema') if isinstance(raw, dict) else raw!r}")
        try:
            model = raw["model"]
            guard = raw.get("guard")
            horizons = raw.get("horizons")
            return cls(
                feed=Feed(str(raw["exchange"]), str(raw["symbol"]), int(raw["interval_ms"])),
                open_time_ms=int(raw["open_time_ms"]),
                last_bar_ms=int(raw["last_bar_ms"]),
                last_volume=float(raw["last_volume"]),
                volume=float(raw["volume"]),
                quantiles={float(q): float(v) for q, v in raw["quantiles"].items()},
                model_name=str(model["name"]),
                model_version=str(model["version"]),
                baseline=bool(model["baseline"]),
                created_ms=int(raw["created_ms"]),
                guard=None if guard is None else Guarded(str(guard["reason"]), str(guard["replaced"]["name"]),
                                                         str(guard["replaced"]["version"])),
                horizons=None if horizons is None else HorizonValues.from_document(horizons),
                calibrated=bool(raw.get("calibrated", False)),
                horizons_calibrated=bool(raw.get("horizons_calibrated", False)),
                revision=int(raw.get("revision", 0)),
                raw_quantiles=None if raw.get("raw_quantiles") is None
                else {float(q): float(v) for q, v in raw["raw_quantiles"].items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed prediction payload: {exc!r}") from None


def encode_all(predictions: Sequence[Prediction]) -> list[bytes | None]:
    """Each prediction's payload, None (logged) for one that ``to_json`` refuses."""
    try:
        return [p.to_json() for p in predictions]
    except NonFiniteError:
        pass
    out: list[bytes | None] = []
    for p in predictions:
        try:
            out.append(p.to_json())
        except NonFiniteError as exc:
            log.error("not published: %s", exc)
            out.append(None)
    return out


def whole_numbers(floats_json: bytes) -> bytes:
    """JSON of numbers (``horizons``: lists and objects of floats, no string ending in ``.0``)
    with each whole number written as an integer: ``12345`` for orjson's ``12345.0``.

    At 5 significant digits every horizon of 10,000 or more is whole: two bytes fewer each (a
    payload of the default model's 252 horizon numbers about 20% smaller when they all are), and
    the block writes such rows from integers, faster (forecaster/horizon_block.py). A JSON reader
    reads the same number; NaN and infinities stay ``null``."""
    return floats_json.replace(b".0,", b",").replace(b".0]", b"]").replace(b".0}", b"}")


@functools.cache
def quantile_key(q: float) -> str:
    # JSON keys are strings; "0.1" reads better than repr noise such as "0.09999999999999998".
    return format(q, "g")


@functools.cache
def _interval(interval_ms: int) -> str:
    # Feed.interval formats the duration at every call; a worker writes 1000 payloads a boundary.
    return format_duration_ms(interval_ms)
