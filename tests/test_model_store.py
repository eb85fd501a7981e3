"""The model store's directory rules (pure file-system unit tests) and the payload schema."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from forecaster.live_scores import LiveScores, Realised
from forecaster.model_store import LEFTOVER_AGE_S, ModelRecord, ModelStore, StoreError
from forecaster.payload import Prediction
from volcast.keys import Feed


def _save(text: str) -> object:
    def save(directory: Path) -> None:
        (directory / "weights").write_text(text)
    return save


def test_versions_appear_whole_and_in_numeric_order(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.versions() == [] and store.next_version() == "1"
    for version in ("1", "2", "10"):
        store.write(version, _save(version), {"name": "lstm"})  # type: ignore[arg-type]
    assert store.versions() == ["1", "2", "10"]
    assert store.next_version() == "11" and store.next_version(at_least=20) == "20"
    assert (store.path("10") / "weights").read_text() == "10"
    assert store.info("2")["name"] == "lstm" and store.info("2")["version"] == "2"
    with pytest.raises(StoreError):
        store.write("2", _save("again"), {})  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.path("../etc")


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)

    def broken(directory: Path) -> None:
        (directory / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.write("1", broken, {})
    assert store.versions() == [] and list(tmp_path.iterdir()) == []


def test_prune_keeps_the_newest_and_the_protected(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for version in ("1", "2", "3", "4"):
        store.write(version, _save(version), {})  # type: ignore[arg-type]
    assert store.prune(2, protect={"1"}) == ["2"]
    assert store.versions() == ["1", "3", "4"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_model_record_round_trip() -> None:
    record = ModelRecord("lstm", "3", {"rmse_log": 0.5}, 123)
    raw = {k.encode(): v.encode() for k, v in record.to_fields().items()}
    assert ModelRecord.from_fields(raw) == record
    assert ModelRecord.from_fields({}) is None


def test_prediction_payload_round_trip_and_schema() -> None:
    feed = Feed("binance", "BTC/USDT", 60_000)
    p = Prediction(feed, 120_000, 60_000, 5.0, 7.5, {0.1: 1.0, 0.5: 7.0, 0.9: 20.0}, "lstm", "4", False, 99)
    assert Prediction.from_json(p.to_json()) == p
    assert b'"0.1":1.0' in p.to_json() and b'"schema":2' in p.to_json()
    # Schema 2 only added fields: a schema 1 payload (no horizons) still reads the same.
    assert Prediction.from_json(p.to_json().replace(b'"schema":2', b'"schema":1')) == p
    with pytest.raises(ValueError, match="schema"):
        Prediction.from_json(p.to_json().replace(b'"schema":2', b'"schema":3'))


def test_live_scores_roll_over_the_window() -> None:
    feed = Feed("binance", "BTC/USDT", 60_000)
    scores = LiveScores(window=2)
    scores.add(feed, Realised(0, predicted=10.0, actual=10.0, naive=5.0, model_version="1"))
    scores.add(feed, Realised(60_000, predicted=12.0, actual=10.0, naive=10.0, model_version="1"))
    out = scores.add(feed, Realised(120_000, predicted=10.0, actual=12.0, naive=10.0, model_version="1"))
    # The first record has left the window: MAE 2, naive MAE (0 + 2) / 2 = 1.
    assert out["n"] == "2" and float(out["mae"]) == pytest.approx(2.0) and float(out["mase"]) == pytest.approx(2.0)
    assert out["from_ms"] == "60000" and scores.follows(feed, 180_000) and not scores.follows(feed, 240_000)


def test_a_killed_writers_temporary_directories_are_removed_by_the_next_write(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    left = tmp_path / ".tmp-3-abcd"  # what a refit killed in the middle of save() leaves
    left.mkdir()
    (left / "weights.safetensors").write_bytes(b"\0" * 99_672)
    trash = tmp_path / ".del-1-efgh"
    (trash / "1").mkdir(parents=True)
    fresh = tmp_path / ".tmp-4-ijkl"  # another writer, still at work
    fresh.mkdir()
    old = time.time() - 2 * LEFTOVER_AGE_S
    for path in (left, trash):
        os.utime(path, (old, old))
    store.write("1", lambda d: (d / "x").write_text("1"), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-4-ijkl", "1"]
    assert store.versions() == ["1"]
