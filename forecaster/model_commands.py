"""What ``volcast model`` does: list the store, roll the serving version back."""

from __future__ import annotations

import asyncio
import time

from forecaster.model_store import ModelRecord, ModelStore, current_model, promote
from forecaster.predictor import load_predictor
from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import Settings


async def list_models(settings: Settings) -> str:
    store = ModelStore(settings.refit.model_dir)
    async with redis_client(settings.redis) as redis:
        record = await current_model(redis, RedisKeys(settings.redis.key_prefix))
    lines = [f"model store {store.root}"]
    versions = store.versions()
    if not versions:
        lines.append("  (no versions yet: the forecaster serves the HAR baseline)")
    for version in versions:
        info = store.info(version)
        scores = info.get("scores") or {}
        rmse = scores.get("rmse_log") if isinstance(scores, dict) else None
        written = info.get("written_ms")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(written / 1000)) if isinstance(written, int) else "?"
        mark = "*" if record is not None and record.version == version else " "
        rmse_text = f"{rmse:.4f}" if isinstance(rmse, float) else "?"
        lines.append(f"{mark} {version:>6}  {info.get('name', '?'):<9} rmse_log {rmse_text:<8} written {when} UTC")
    if record is not None and record.version not in versions:
        lines.append(f"! serving version {record.version} is not in the store")
    return "\n".join(lines)


async def rollback(settings: Settings, version: str) -> tuple[bool, str]:
    """Serve ``version`` again, after checking that it loads with the running settings."""
    store = ModelStore(settings.refit.model_dir)
    if not store.has(version):
        return False, f"version {version} is not in {store.root} (have: {', '.join(store.versions()) or 'none'})"
    try:
        predictor = await asyncio.to_thread(load_predictor, store.path(version), settings.model)
    except Exception as exc:  # refuse anything the forecaster would refuse
        return False, f"version {version} cannot serve: {exc}"
    info = store.info(version)
    raw_scores = info.get("scores")
    scores = {str(k): float(v) for k, v in raw_scores.items()} if isinstance(raw_scores, dict) else {}
    keys = RedisKeys(settings.redis.key_prefix)
    async with redis_client(settings.redis) as redis:
        before = await current_model(redis, keys)
        await promote(redis, keys, ModelRecord(predictor.name, version, scores, time.time_ns() // 1_000_000))
    was = before.version if before is not None else "the baseline"
    return True, f"serving version {version} (was {was}); forecasters swap it in at their next boundary"
