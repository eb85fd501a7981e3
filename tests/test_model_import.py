"""`volcast model import DIR`: a `volcast train` artifact into the store, checked against the config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from forecast_helpers import NEAR

from forecaster.model_store import ModelStore, current_model
from forecaster.predictor import load_predictor
from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import load_settings


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "volcast.cli", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=280, check=False)


def config(tmp_path: Path, name: str, hidden: int) -> Path:
    path = tmp_path / name
    path.write_text(
        "exchanges: [{id: binance, symbols: [NEAR/USDT]}]\n"
        f"redis: {{key_prefix: test-import-{uuid.uuid4().hex[:8]}}}\n"
        f"refit: {{model_dir: {tmp_path / 'store'}}}\n"
        f"model: {{look_back: 16, hidden: {hidden}}}\n"
        "training: {epochs: 1, batch_size: 256, patience: 0}\n"
    )
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small model trained offline (hidden 8, look_back 16), shared by the tests."""
    where = tmp_path_factory.mktemp("trained")
    out = where / "offline-model"
    trained = run("train", "--bars", str(NEAR), "--config", str(config(where, "config.yml", hidden=8)),
                  "--out", str(out), "--version", "months", cwd=where)
    assert trained.returncode == 0, trained.stderr
    return out


async def test_a_trained_artifact_is_imported_checked_and_served(tmp_path: Path, artifact: Path) -> None:
    running = config(tmp_path, "config.yml", hidden=8)
    out = tmp_path / "offline-model"
    shutil.copytree(artifact, out)
    # Trained with other model settings: refused, nothing stored.
    other = config(tmp_path, "other.yml", hidden=4)
    refused = run("model", "import", str(out), "--config", str(other), cwd=tmp_path)
    assert refused.returncode == 1 and "hidden 8 (artifact) != 4 (config)" in refused.stdout + refused.stderr
    assert ModelStore(tmp_path / "store").versions() == []
    # Not an artifact at all: refused with what to give instead.
    empty = run("model", "import", str(tmp_path / "nothing"), "--config", str(running), cwd=tmp_path)
    assert empty.returncode == 1 and "--out DIR of `volcast train`" in empty.stdout + empty.stderr
    # Matching: stored as the next version, and served with --promote.
    done = run("model", "import", str(out), "--config", str(running), "--promote", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "as version 1" in done.stdout and "serving it (was the baseline)" in done.stdout
    store = ModelStore(tmp_path / "store")
    assert store.versions() == ["1"]
    meta = json.loads((store.path("1") / "meta.json").read_text())
    assert meta["version"] == "1" and meta["trained_version"] == "months"
    settings = load_settings(running, env={})
    assert load_predictor(store.path("1"), settings.model).version == "1"
    listed = run("model", "list", "--config", str(running), cwd=tmp_path)
    assert "*      1" in listed.stdout
    async with redis_client(settings.redis) as redis:
        record = await current_model(redis, RedisKeys(settings.redis.key_prefix))
        await redis.delete(RedisKeys(settings.redis.key_prefix).model())
    assert record is not None and record.version == "1"


@pytest.mark.parametrize("damage", ["weights", "meta"])
async def test_a_damaged_artifact_is_refused(tmp_path: Path, artifact: Path, damage: str) -> None:
    running = config(tmp_path, "config.yml", hidden=8)
    out = tmp_path / "offline-model"
    shutil.copytree(artifact, out)
    if damage == "weights":
        weights = out / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:-9] + b"tampered!")
    else:
        (out / "meta.json").write_text("{not json")
    refused = run("model", "import", str(out), "--config", str(running), cwd=tmp_path)
    assert refused.returncode == 1 and "cannot serve with this config" in refused.stdout + refused.stderr
    assert ModelStore(tmp_path / "store").versions() == []
