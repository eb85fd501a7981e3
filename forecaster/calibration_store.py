"""The worker's band calibrator (forecaster/calibration.py) with its state in Redis.

Each feed's state is a hash, ``keys.calibration(feed)``, in the feed's hash tag, written with the
boundary's other records (forecaster/recorder.py) after each realised bar, so a restarted worker,
or another worker of the group, goes on from it:

- ``ensure`` (at a boundary, before the forward pass): feeds this process has no state for yet
  (a start, a new feed) are read back in one pipeline; at 1000 feeds that is one round trip
  after a start and none after it.
- ``bands`` (at the hand-over): the published band of each forecast, vectorised over the chunk.
- ``realised`` / ``writes`` (in the bookkeeping): the raw band and the realised volume of each
  predicted bar that closed folded in, and the new states as hash writes. A state that another
  worker moved on since this one last held it is read back first (``stale``/``load``), as the
  live scores are; the hand-over may meanwhile use a state a few bars old, which differs by at
  most a few ``STEP``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis

from forecaster.calibration import HIGH, LOW, BandCalibrator
from forecaster.calibration_horizons import HorizonBands, has_band
from forecaster.guard import passing
from forecaster.horizons import Horizons
from forecaster.payload import HorizonValues
from forecaster.predictor import Forecast
from volcast.keys import Feed, RedisKeys
from volcast.redis_text import text_fields

MID = 0.5

Band = tuple[Mapping[float, float], Mapping[float, float] | None, bool]
"""What a payload carries: the published quantiles, the model's own when they differ, and
whether the band is calibrated."""


class Calibration:
    """Band calibration for one worker: the calibrator, where its state lives, and counters."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, interval_ms: int, spec: Horizons | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.interval_ms = interval_ms
        self.spec = spec if spec is not None and spec.multi else None
        # A window's target learns with a smaller step than a bar's (calibration.WINDOW_POWER).
        self.calibrator = (BandCalibrator(len(self.spec.targets), windows=[k for _, k in self.spec.targets])
                           if self.spec is not None else BandCalibrator(1))
        # Every target of a multi-horizon forecast (forecaster/calibration_horizons.py).
        self.horizons = HorizonBands(self.calibrator, self.spec, interval_ms) if self.spec is not None else None
        self._closed: list[tuple[Feed, int, float]] = []
        self.calibrated = 0  # bands published calibrated since the start
        self.refused = 0  # calibrated bands the guard refused (the raw band was published)
        self._pending: list[tuple[Feed, int, float, float, float]] = []
        self._written: set[Feed] = set()  # feeds whose state's settings fields this process wrote

    # -- before the forward pass ----------------------------------------------------------------

    async def ensure(self, feeds: Sequence[Feed]) -> None:
        """Read back the state of feeds this process holds none for (a new feed has none)."""
        calibrator = self.calibrator
        missing = [f for f in feeds if f not in calibrator]
        if not missing:
            return
        await self.load(missing)

    async def load(self, feeds: Sequence[Feed]) -> None:
        """Replace the state of ``feeds`` by what Redis holds (fresh where it holds none)."""
        pipe = self.redis.pipeline(transaction=False)
        for feed in feeds:
            pipe.hgetall(self.keys.calibration(feed))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        calibrator = self.calibrator
        for feed, reply in zip(feeds, replies, strict=True):
            fields = text_fields(reply) if isinstance(reply, Mapping) else {}
            if not calibrator.load(feed, fields):
                calibrator.rows([feed])  # a fresh row, or the one it had

    # -- at the hand-over -----------------------------------------------------------------------

    def bands(self, feeds: Sequence[Feed], forecasts: Sequence[Forecast], horizon: int = 0) -> list[Band]:
        """The band each forecast is published with: calibrated when the model gave a 0.1/0.5/0.9
        band and the feed is past its warm-up; otherwise the forecast's own quantiles."""
        out: list[Band] = [(fc.quantiles, None, False) for fc in forecasts]
        idx = [i for i, fc in enumerate(forecasts) if LOW in fc.quantiles and HIGH in fc.quantiles
               and MID in fc.quantiles]
        if not idx:
            return out
        picked = [forecasts[i] for i in idx]
        raw = np.array([(fc.quantiles[LOW], fc.quantiles[MID], fc.quantiles[HIGH], fc.bound) for fc in picked])
        with np.errstate(invalid="ignore"):
            logs = np.log1p(np.maximum(raw, 0.0))
        rows = self.calibrator.rows([feeds[i] for i in idx])
        lo, hi, calibrated = self.calibrator.band(rows, horizon, logs[:, 0], logs[:, 2], logs[:, 1], logs[:, 3])
        if not calibrated.any():
            return out
        low, high = np.expm1(lo), np.expm1(hi)
        # The guard's rules again on what is published: finite, not negative, in order, bounded.
        band = np.stack([low, raw[:, 1], high], axis=1)
        ok = passing(raw[:, 1], band, raw[:, 3])
        self.refused += int((calibrated & ~ok).sum())
        calibrated &= ok
        for j in np.flatnonzero(calibrated).tolist():
            fc = picked[j]
            published = dict(fc.quantiles)
            published[LOW] = float(low[j])
            published[HIGH] = float(high[j])
            out[idx[j]] = (published, fc.quantiles, True)
        self.calibrated += int(calibrated.sum())
        return out

    def horizon_bands(self, feeds: Sequence[Feed], forecasts: Sequence[Forecast], issued_ms: int
                      ) -> list[HorizonValues | None]:
        """Each forecast's horizons with calibrated bands, None where its own are published (no
        horizons, a target still warming up); remembered until each target is realised."""
        out: list[HorizonValues | None] = [None] * len(forecasts)
        horizons, spec = self.horizons, self.spec
        if horizons is None or spec is None:
            return out
        idx = [i for i, fc in enumerate(forecasts) if has_band(fc, spec)]
        if not idx:
            return out
        rows = self.calibrator.rows([feeds[i] for i in idx])
        for i, values in zip(idx, horizons.publish(rows, [forecasts[i] for i in idx], issued_ms), strict=True):
            out[i] = values
        return out

    # -- in the bookkeeping ---------------------------------------------------------------------

    def stale(self, feed: Feed, closed_ms: int) -> bool:
        """Whether the feed's state must be read back before bar ``closed_ms`` is folded in."""
        return not self.calibrator.follows(feed, closed_ms, self.interval_ms)

    def load_fields(self, feed: Feed, raw: Any) -> None:
        """A state read back in the recorder's own pipeline (fresh where Redis holds none)."""
        fields = text_fields(raw) if isinstance(raw, Mapping) else {}
        if not self.calibrator.load(feed, fields):
            self.calibrator.rows([feed])

    def closed(self, feed: Feed, closed_ms: int, actual: float) -> None:
        """A bar that closed, whatever was predicted for it: the horizons' targets that end with
        it are learnt in ``writes``."""
        if self.horizons is not None:
            self._closed.append((feed, closed_ms, actual))

    def realised(self, feed: Feed, closed_ms: int, raw: Mapping[float, float] | None, actual: float) -> None:
        """Queue bar ``closed_ms`` of ``feed`` with the raw band it was predicted with (None:
        the forecast had no band, which teaches nothing but moves the state's bar on)."""
        if raw is None or LOW not in raw or HIGH not in raw:
            row = int(self.calibrator.rows([feed])[0])
            self.calibrator.to_ms[row, 0] = max(int(self.calibrator.to_ms[row, 0]), closed_ms)
            return
        self._pending.append((feed, closed_ms, raw[LOW], raw[HIGH], actual))

    def writes(self) -> list[list[str | bytes]]:
        """Fold in what ``realised`` queued; the new states as the recorder's hash writes."""
        pending, self._pending = self._pending, []
        calibrator = self.calibrator
        feeds = [p[0] for p in pending]
        latest: dict[Feed, int] = {}
        if pending:
            rows = calibrator.rows(feeds)
            values = np.array([(p[2], p[3], p[4]) for p in pending])
            with np.errstate(invalid="ignore"):
                logs = np.log1p(np.maximum(values, 0.0))
            opens = np.array([p[1] for p in pending], dtype=np.int64)
            calibrator.update(rows, 0, logs[:, 0], logs[:, 1], logs[:, 2], opens)
            latest = dict(zip(feeds, rows.tolist(), strict=True))  # a feed twice (a backlog): written once
        closed, self._closed = self._closed, []
        if self.horizons is not None and closed:
            closed_rows = calibrator.rows([c[0] for c in closed]).tolist()
            for row, (_, open_ms, actual) in zip(closed_rows, closed, strict=True):
                self.horizons.bar(row, open_ms, actual)
            for row in self.horizons.learn():
                latest.setdefault(cast(Feed, calibrator.keys[row]), row)
        if not latest:
            return []
        keys, settings, written = self.keys, calibrator.settings_fields(), self._written
        out: list[list[str | bytes]] = []
        for feed, fields in zip(latest, calibrator.flat_fields(list(latest.values())), strict=True):
            if feed not in written:  # the settings once per feed and process (before the packed
                written.add(feed)    # state, which a write ends with: recorder.py's Write)
                out.append(["h", keys.calibration(feed), *settings, *fields])
            else:
                out.append(["h", keys.calibration(feed), *fields])
        return out

    def status(self) -> dict[str, str]:
        """Fields of the forecaster status hash."""
        out = {"calibrated_bands": str(self.calibrated), "calibration_refused": str(self.refused)}
        if self.horizons is not None:
            out["calibrated_horizons"] = str(self.horizons.calibrated)
        return out
