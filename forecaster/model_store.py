"""The model store: one directory per version under ``refit.model_dir``, and the promoted version in Redis.

A version directory appears whole or not at all: it is written under a hidden temporary name in
the same directory and renamed, so a forecaster polling the store never sees half a model. The
directory holds the core's artifact (``TrainedModel.save``) and ``store.json``, the store's own
record of the version (model name, scores, when it was written). Which version serves is not a
file but ``keys.model()`` in Redis, so every forecaster sees a promotion or a rollback at once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from volcast.keys import RedisKeys
from volcast.redis_text import field_mapping

STORE_FILE = "store.json"
LEFTOVER_AGE_S = 900.0
"""A hidden ``.tmp-*``/``.del-*`` directory older than this is a leftover of a process that was
killed while writing or pruning (no write takes minutes), and is removed."""
_HIDDEN_PREFIXES = (".tmp-", ".del-")


class StoreError(Exception):
    """A version that is not in the store, or a store directory that cannot be used."""


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """What ``keys.model()`` says about the serving model."""

    name: str
    version: str
    scores: Mapping[str, float] = field(default_factory=dict)
    promoted_ms: int = 0

    def to_fields(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "scores": orjson.dumps(dict(self.scores)).decode(),
            "promoted_ms": str(self.promoted_ms),
        }

    @classmethod
    def from_fields(cls, raw: Mapping[bytes, bytes]) -> ModelRecord | None:
        text = {k.decode(): v.decode() for k, v in raw.items()}
        if not text.get("version"):
            return None
        try:
            scores = {str(k): float(v) for k, v in orjson.loads(text.get("scores") or "{}").items()}
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            scores = {}
        return cls(text.get("name", ""), text["version"], scores, int(text.get("promoted_ms") or 0))


def _version_number(name: str) -> int | None:
    return int(name) if name.isdigit() else None


class ModelStore:
    """Version directories ``<root>/<n>`` (n = 1, 2, ...), newest has the largest n."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def versions(self) -> list[str]:
        """Complete versions, oldest first (temporary directories are invisible)."""
        if not self.root.is_dir():
            return []
        numbered = [(n, p.name) for p in self.root.iterdir()
                    if p.is_dir() and (n := _version_number(p.name)) is not None]
        return [name for _, name in sorted(numbered)]

    def path(self, version: str) -> Path:
        if _version_number(version) is None:
            raise StoreError(f"model version {version!r} is not a version number")
        return self.root / version

    def has(self, version: str) -> bool:
        return _version_number(version) is not None and (self.root / version).is_dir()

    def next_version(self, at_least: int = 1) -> str:
        numbers = [int(v) for v in self.versions()]
        return str(max([at_least - 1, *numbers]) + 1)

    def info(self, version: str) -> dict[str, Any]:
        """The store's record of a version ({} when it has none, e.g. copied in by hand)."""
        try:
            data = orjson.loads((self.path(version) / STORE_FILE).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, version: str, save: Callable[[Path], object], info: Mapping[str, Any]) -> Path:
        """Run ``save(tmp_dir)`` and move the result to ``<root>/<version>`` in one rename."""
        final = self.path(version)
        if final.exists():
            raise StoreError(f"model version {version} already exists in {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=self.root))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; forecasters may run as another user
            save(tmp)
            record = {**info, "version": version, "written_ms": int(time.time() * 1000)}
            (tmp / STORE_FILE).write_bytes(orjson.dumps(record))
            _fsync_dir(tmp)
            tmp.rename(final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def sweep(self, older_than_s: float = LEFTOVER_AGE_S) -> list[str]:
        """Remove what a killed writer left (its temporary directories); returns their names."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than_s
        gone = []
        for path in self.root.iterdir():
            try:
                stale = path.name.startswith(_HIDDEN_PREFIXES) and path.is_dir() and path.stat().st_mtime < cutoff
            except OSError:
                continue  # removed meanwhile
            if stale:
                shutil.rmtree(path, ignore_errors=True)
                gone.append(path.name)
        return gone

    def prune(self, keep: int, protect: Collection[str] = ()) -> list[str]:
        """Delete all but the newest ``keep`` versions, never one in ``protect``; returns the deleted."""
        versions = self.versions()
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v not in protect]
        for version in doomed:
            # Rename first so a reader never loads a half-deleted directory.
            trash = Path(tempfile.mkdtemp(prefix=f".del-{version}-", dir=self.root))
            (self.root / version).rename(trash / version)
            shutil.rmtree(trash, ignore_errors=True)
        return doomed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def current_model(redis: aioredis.Redis, keys: RedisKeys) -> ModelRecord | None:
    raw: Any = await redis.hgetall(keys.model())
    return ModelRecord.from_fields(raw)


async def current_version(redis: aioredis.Redis, keys: RedisKeys) -> str | None:
    """Only the version: what a forecaster polls between boundaries."""
    value: Any = await redis.hget(keys.model(), "version")
    return value.decode() if isinstance(value, bytes) and value else None


async def promote(redis: aioredis.Redis, keys: RedisKeys, record: ModelRecord) -> None:
    """Make ``record`` the serving model; forecasters swap it in at their next boundary."""
    await redis.hset(keys.model(), mapping=field_mapping(record.to_fields()))
