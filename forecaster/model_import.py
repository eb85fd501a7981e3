"""``volcast model import DIR``: a ``volcast train`` artifact into the model store.

A desk trains offline on months of bars (``volcast train --out DIR``) and deploys the result here.
The artifact is checked exactly as a forecaster checks what it loads (format, weights checksum,
the running ``model`` settings, that it builds), copied into the store as the next version (the
store's rename makes it appear whole), and checked again from there. Its ``meta.json`` gets the
store's version, so payloads name the version the store lists; the trained version is kept as
``trained_version``. It serves only when promoted (``--promote``, or ``volcast model rollback N``
later); once serving, the output guard and self-demotion watch it like any refitted version.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

from forecaster.artifact import META, WEIGHTS, read_meta
from forecaster.model_store import ModelRecord, ModelStore, current_model, promote
from forecaster.predictor import load_predictor
from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import Settings


def _copy_as(source: Path, version: str, settings: Settings) -> Any:
    def save(directory: Path) -> None:
        shutil.copyfile(source / WEIGHTS, directory / WEIGHTS)
        meta = read_meta(source)
        meta["trained_version"] = meta.get("version")
        meta["version"] = version
        meta["imported_from"] = str(source.resolve())
        (directory / META).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        load_predictor(directory, settings.model)  # the copy, as a forecaster will read it
    return save


class ImportRefusedError(Exception):
    """The artifact cannot serve with the running settings, or cannot be stored; says why."""


def store_artifact(settings: Settings, source: Path) -> tuple[str, dict[str, Any]]:
    """Check ``source`` as a forecaster would and copy it in as the next version: (version, info)."""
    if not source.is_dir():
        raise ImportRefusedError(f"{source} is not a directory (give the --out DIR of `volcast train`)")
    try:
        load_predictor(source, settings.model)
        meta = read_meta(source)
    except Exception as exc:  # the same refusal a forecaster would make, before anything is copied
        raise ImportRefusedError(f"{source} cannot serve with this config: {exc}") from None
    store = ModelStore(settings.refit.model_dir)
    version = store.next_version()
    raw_scores = meta.get("scores")
    scores = {str(k): float(v) for k, v in raw_scores.items()
              if isinstance(v, int | float)} if isinstance(raw_scores, dict) else {}
    info = {"name": meta.get("name", settings.model.name), "scores": scores, "imported_from": str(source.resolve()),
            "trained_version": meta.get("version")}
    try:
        store.write(version, _copy_as(source, version, settings), info)
    except Exception as exc:
        raise ImportRefusedError(f"{source} could not be stored in {store.root}: {exc}") from None
    return version, info


async def import_model(settings: Settings, source: Path, *, serve: bool) -> tuple[bool, str]:
    """``store_artifact``, then promote it when ``serve``; (ok, the message for the user)."""
    try:
        version, info = await asyncio.to_thread(store_artifact, settings, source)
    except ImportRefusedError as exc:
        return False, str(exc)
    message = f"imported {source} as version {version} of {settings.refit.model_dir}"
    if not serve:
        return True, f"{message}; serve it with `volcast model rollback {version}`"
    keys = RedisKeys(settings.redis.key_prefix)
    async with redis_client(settings.redis) as redis:
        before = await current_model(redis, keys)
        await promote(redis, keys, ModelRecord(str(info["name"]), version, info["scores"], time.time_ns() // 1_000_000))
    was = before.version if before is not None else "the baseline"
    return True, f"{message}; serving it (was {was}); forecasters swap it in at their next boundary"
