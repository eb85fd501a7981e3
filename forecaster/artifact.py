"""Model artifacts on disk: ``weights.safetensors`` (cannot run code on load) + ``meta.json``.

``meta.json`` holds the model name, the settings it was trained with, its features and
normalisation, the training span, its scores, a version, when and by which volcast it was made,
and the sha256 of the weights file. Loading refuses, with an ``ArtifactError`` that says why, an
artifact that is corrupt or that was trained with other model settings than the running ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from volcast import __version__
from volcast.settings import ModelSettings

WEIGHTS = "weights.safetensors"
META = "meta.json"
FORMAT = 1
# Fields that change the network or its inputs: a difference in any of them makes an artifact
# unusable under the running settings. (dropout only matters while training.)
MATCHED_FIELDS: tuple[str, ...] = (
    "name", "look_back", "features", "hidden", "layers", "attention", "members", "quantiles",
)


class ArtifactError(Exception):
    """An artifact cannot be used: corrupt, incomplete, or trained for other settings."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_artifact(directory: Path, tensors: dict[str, npt.NDArray[Any]], meta: dict[str, Any]) -> Path:
    """Write weights then meta (meta last: its presence marks a complete artifact)."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS
    payload = save_safetensors({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    _atomic_write(weights, payload)
    full = {
        **meta,
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "volcast_version": __version__,
        "weights_sha256": hashlib.sha256(payload).hexdigest(),
    }
    _atomic_write(directory / META, json.dumps(full, indent=2, sort_keys=True).encode())
    return directory


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_meta(directory: Path) -> dict[str, Any]:
    path = directory / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{directory}: no {META} (not a model artifact, or an incomplete one)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: corrupt JSON: {exc}") from None
    if not isinstance(meta, dict) or "model" not in meta or "weights_sha256" not in meta:
        raise ArtifactError(f"{path}: missing 'model' or 'weights_sha256'")
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{path}: artifact format {meta.get('format')!r}, this volcast reads {FORMAT}")
    return meta


def read_artifact(directory: Path, running: ModelSettings) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
    """Tensors and meta of a verified artifact that matches ``running``; else ArtifactError."""
    meta = read_meta(directory)
    check_settings(meta, running, directory)
    weights = directory / WEIGHTS
    try:
        payload = weights.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{directory}: no {WEIGHTS}") from None
    actual = hashlib.sha256(payload).hexdigest()
    if actual != meta["weights_sha256"]:
        raise ArtifactError(
            f"{weights}: sha256 {actual[:12]}... does not match meta.json's {str(meta['weights_sha256'])[:12]}... "
            "(corrupt or replaced weights)"
        )
    try:
        tensors = load_safetensors(payload)
    except (SafetensorError, ValueError) as exc:
        raise ArtifactError(f"{weights}: unreadable safetensors: {exc}") from None
    return tensors, meta


def check_settings(meta: dict[str, Any], running: ModelSettings, directory: Path) -> None:
    trained = meta["model"]
    now = running.model_dump(mode="json")
    diffs = [
        f"{field} {trained.get(field)!r} (artifact) != {now[field]!r} (config)"
        for field in MATCHED_FIELDS
        if _norm(trained.get(field)) != _norm(now[field])
    ]
    if diffs:
        raise ArtifactError(f"{directory}: trained with other model settings: " + "; ".join(diffs))


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value
