"""The model the worker serves: the version named in ``keys.model()``, polled between batches and
swapped in between two boundaries, never during one.

Until a model exists, and for feeds too short for it, ``FallbackBaseline`` serves (the boundary
pass asks it: forecaster/forward_passes.py). A version that cannot be loaded is refused, counted
in the status hash and kept out until another is named; a demotion to the baseline
(forecaster/demotion.py) takes the model out of service.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from forecaster.bar_reader import BarHistories
from forecaster.fallback import FallbackBaseline
from forecaster.handoffs import Handoffs
from forecaster.model_store import ModelStore, current_version
from forecaster.predictor import Predictor, load_predictor
from forecaster.wall_clock import now_ms
from volcast.keys import RedisKeys
from volcast.redis_problems import key_problem
from volcast.redis_text import field_mapping
from volcast.settings import ModelSettings

log = logging.getLogger(__name__)

MODEL_POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class Serving:
    """A predictor and where it came from (``version`` None = a baseline)."""

    predictor: Predictor
    version: str | None

    @property
    def baseline(self) -> bool:
        return self.version is None


class ModelSwap:
    """The serving model (``model``: None until there is one) and what was prepared with it."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, store: ModelStore, settings: ModelSettings,
                 executor: Executor, bars: BarHistories, fallback: FallbackBaseline, handoffs: Handoffs) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self.settings = settings
        self._executor = executor
        self.bars = bars
        self.fallback = fallback
        self.handoffs = handoffs
        self.model: Serving | None = None  # the model in keys.model(); None until there is one
        self.prepared: tuple[Serving, int] | None = None  # the model and boundary last prepared
        self._failed_version: str | None = None
        self._last_poll = 0.0
        self._model_error_logged = False

    def was_prepared(self, open_ms: int, interval_ms: int) -> bool:
        """Whether the serving model prepared the boundary before ``open_ms`` (its feeds then
        take one LSTM step each)."""
        prepared = self.prepared
        return (prepared is not None and prepared[0] is self.model
                and prepared[1] == open_ms - interval_ms)

    async def poll(self, *, force: bool = False) -> None:
        """Swap in the version named in Redis; a bad one is refused, counted, and the current kept."""
        if not force and time.monotonic() - self._last_poll < MODEL_POLL_S:
            return
        self._last_poll = time.monotonic()
        try:
            version = await current_version(self.redis, self.keys)
        except ResponseError as exc:  # not an outage: say so once, and serve on what is loaded
            if not self._model_error_logged:
                log.error("%s; serving %s meanwhile", key_problem(self.keys.model(), exc, expected="hash"),
                          self.model.version if self.model else "the baseline")
                self._model_error_logged = True
            return
        self._model_error_logged = False
        serving = self.model.version if self.model else None
        if version is None and serving is not None:
            await self._unless_demoted_to_baseline(serving)
            return
        if version is None or version == serving or version == self._failed_version:
            return
        try:
            path = self.store.path(version)
            predictor: Predictor = await asyncio.get_running_loop().run_in_executor(
                self._executor, load_predictor, path, self.settings)
        except Exception as exc:  # ArtifactError, StoreError, OSError: any of them means "do not serve it"
            self._failed_version = version
            message = f"model version {version} refused, keeping {serving or 'the baseline'}: {exc}"
            log.error("%s", message)
            pipe = self.redis.pipeline(transaction=False)
            pipe.hincrby(self.keys.forecaster(), "model_errors", 1)
            pipe.hset(self.keys.forecaster(), mapping=field_mapping({"last_model_error": message,
                                                                     "last_model_error_ms": str(now_ms())}))
            await pipe.execute()
            return
        self._failed_version = None
        self.model = Serving(predictor, version)
        self.handoffs.settle_due = self.handoffs.thaw_due = True
        self.bars.set_look_back(max(predictor.look_back, self.fallback.look_back))
        log.info("serving model %s version %s", predictor.name, version)
        if self.handoffs.newest_ms is not None:  # the new model's head start on the next boundary
            self.handoffs.prepares.put_nowait((self.handoffs.newest_ms, {}))

    async def _unless_demoted_to_baseline(self, serving: str) -> None:
        """The model hash names no version: a demotion to the baseline (forecaster/demotion.py)
        when it says it demoted the serving version; otherwise (a Redis that lost the hash) the
        loaded model goes on serving."""
        demoted: Any = await self.redis.hget(self.keys.model(), "demoted_version")
        if demoted is None or demoted.decode(errors="replace") != serving:
            return
        log.warning("model version %s was demoted to the baseline; the fallback baselines serve", serving)
        self.model = None
        self.prepared = None
        self.handoffs.settle_due = self.handoffs.thaw_due = True
