"""Networks, training, artifacts and the Predictor interface on small real data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from forecast_helpers import KEY, TINY_MODEL, TINY_TRAINING, near

from forecaster.artifact import ArtifactError
from forecaster.features import RETURN_WINDOWS, Batch, per_bar, slot_of_day, trailing_returns
from forecaster.lstm_inputs import DESEASONALISED, SIGNED_RETURN
from forecaster.lstm_model import LstmModel
from forecaster.networks import ReluLSTMCell, SeedNet, VolumeLSTM
from forecaster.predictor import Forecast, ModelPredictor, baseline_predictor, load_predictor
from forecaster.scoring import score
from forecaster.training import train_model
from forecaster.training_loop import quiet
from volcast.settings import ModelSettings, TrainingSettings


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trained = train_model([(KEY, near())], TINY_MODEL, TINY_TRAINING, progress=quiet)
    return trained.save(tmp_path_factory.mktemp("artifact") / "v1", "v1")


def test_volume_lstm_shapes() -> None:
    net = VolumeLSTM(n_features=5, n_static=7, hidden=8, layers=2, dropout=0.1, n_quantiles=3, attention=True)
    out = net(torch.zeros(4, 16, 5), torch.zeros(4, 7))
    assert out.shape == (4, 4)


def test_seed_has_the_notes_layers_and_relu_activation() -> None:
    net = SeedNet()
    assert isinstance(net.lstm, ReluLSTMCell) and net.lstm.units == 50
    assert net.lstm.kernel.shape == (1, 200) and net.lstm.recurrent_kernel.shape == (50, 200)
    assert isinstance(net.dense, torch.nn.Linear) and net.dense.out_features == 1
    assert net(torch.ones(3, 10, 1)).shape == (3, 1)
    # ReLU, not tanh: with a large positive candidate and cell the hidden state exceeds 1.
    cell = ReluLSTMCell(1, 2)
    with torch.no_grad():
        cell.kernel.fill_(10.0)
        cell.recurrent_kernel.zero_()
        cell.bias.zero_()
    h = cell(torch.full((1, 1, 1), 5.0))
    assert float(h.detach().max()) > 40.0


def test_same_seed_same_weights() -> None:
    frames = [(KEY, near()[: 1440 + 400])]
    a = train_model(frames, TINY_MODEL, TINY_TRAINING, progress=quiet).model
    b = train_model(frames, TINY_MODEL, TINY_TRAINING, progress=quiet).model
    assert isinstance(a, LstmModel) and isinstance(b, LstmModel)
    for (name, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    other = train_model(frames, TINY_MODEL, TINY_TRAINING.model_copy(update={"seed": 8}), progress=quiet).model
    assert isinstance(other, LstmModel)
    member_other, member_a = other.net.members[0], a.net.members[0]
    assert isinstance(member_other, VolumeLSTM) and isinstance(member_a, VolumeLSTM)
    head_other, head_a = member_other.head[-1], member_a.head[-1]
    assert isinstance(head_other, torch.nn.Linear) and isinstance(head_a, torch.nn.Linear)
    assert not torch.equal(head_other.weight, head_a.weight)


def test_members_are_the_single_models_of_successive_seeds_averaged(tmp_path: Path) -> None:
    frames = [(KEY, near()[: 1440 + 400])]
    pair = train_model(frames, TINY_MODEL.model_copy(update={"members": 2}), TINY_TRAINING, progress=quiet)
    singles = [
        train_model(frames, TINY_MODEL, TINY_TRAINING.model_copy(update={"seed": seed}), progress=quiet).model
        for seed in (TINY_TRAINING.seed, TINY_TRAINING.seed + 1)
    ]
    model = pair.model
    assert isinstance(model, LstmModel) and len(model.net.members) == 2
    for member, single in zip(model.net.members, singles, strict=True):
        assert isinstance(single, LstmModel)
        own, alone = member.state_dict(), single.net.members[0].state_dict()
        assert own.keys() == alone.keys()
        for name in own:
            assert torch.equal(own[name], alone[name]), name
    batch, positions = Batch.stack([near()]), np.array([2000, 2500, 3000])
    for single in singles:
        # The share of the correction each horizon uses is fitted on the averaged network (it
        # scales the mean correction, so the singles under the pair's shares average to the pair).
        assert isinstance(single, LstmModel)  # as the loop above found
        single.shrink = model.shrink
    point = model.predict_log(batch, [KEY], positions)[0]
    expected = np.mean([single.predict_log(batch, [KEY], positions)[0] for single in singles], axis=0)
    np.testing.assert_allclose(point, expected, rtol=1e-5)
    # One artifact holds both members; it loads only under the same member count.
    saved = pair.save(tmp_path / "pair", "pair")
    loaded = load_predictor(saved, pair.settings)
    np.testing.assert_allclose(np.log1p(loaded.forecast_positions(KEY, near(), positions)[0])[None], point, rtol=1e-5)
    with pytest.raises(ArtifactError, match="members 2"):
        load_predictor(saved, TINY_MODEL)


def test_save_load_gives_identical_predictions(trained_dir: Path) -> None:
    predictor = load_predictor(trained_dir, TINY_MODEL)
    assert predictor.name == "lstm" and predictor.version == "v1"
    frame = near()
    histories = [(KEY, frame[: 2000]), ("unseen/SYMBOL", frame[: 3000]), (KEY, frame)]
    first = predictor.predict(histories)
    again = load_predictor(trained_dir, TINY_MODEL).predict(histories)
    assert first == again
    assert len(first) == 3 and all(isinstance(f, Forecast) for f in first)
    for fc in first:
        assert fc.volume > 0 and set(fc.quantiles) == {0.1, 0.5, 0.9}
        assert fc.quantiles[0.1] <= fc.quantiles[0.5] <= fc.quantiles[0.9]
    meta = json.loads((trained_dir / "meta.json").read_text())
    assert meta["name"] == "lstm" and meta["model"]["look_back"] == 16
    assert KEY in meta["normalisation"]["symbol_log_volume_mean"]


def test_batched_predict_equals_one_by_one(trained_dir: Path) -> None:
    predictor = load_predictor(trained_dir, TINY_MODEL)
    frame = near()
    histories = [(KEY, frame[i : i + predictor.look_back]) for i in (0, 500, 1000)]
    batched = predictor.predict(histories)
    single = [predictor.predict([h])[0] for h in histories]
    for b, s in zip(batched, single, strict=True):
        assert b.volume == pytest.approx(s.volume, rel=1e-5)


@pytest.mark.parametrize(
    "change",
    [
        {"look_back": 17},
        {"hidden": 9},
        {"features": ("log_volume",)},
        {"name": "seed"},
        {"attention": True},
        {"members": 2},
    ],
)
def test_mismatched_settings_are_refused(trained_dir: Path, change: dict[str, object]) -> None:
    with pytest.raises(ArtifactError, match="other model settings"):
        load_predictor(trained_dir, TINY_MODEL.model_copy(update=change))


def test_corrupt_artifacts_are_refused(trained_dir: Path, tmp_path: Path) -> None:
    import shutil

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(trained_dir, target)
        return target

    bad_json = copy("json")
    (bad_json / "meta.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt JSON"):
        load_predictor(bad_json, TINY_MODEL)

    truncated = copy("truncated")
    data = (truncated / "weights.safetensors").read_bytes()
    (truncated / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="sha256"):
        load_predictor(truncated, TINY_MODEL)

    missing = copy("missing")
    (missing / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="no weights"):
        load_predictor(missing, TINY_MODEL)

    # Wrong tensor shapes under a matching hash: written by a model with another hidden size.
    other = train_model([(KEY, near()[:1700])], TINY_MODEL.model_copy(update={"hidden": 4}),
                        TINY_TRAINING.model_copy(update={"epochs": 1}), progress=quiet)
    shapes = other.save(tmp_path / "shapes", "x")
    meta = json.loads((shapes / "meta.json").read_text())
    meta["model"]["hidden"] = 8
    (shapes / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="do not fit"):
        load_predictor(shapes, TINY_MODEL)


def test_artifact_with_other_per_bar_columns_is_refused(trained_dir: Path, tmp_path: Path) -> None:
    import shutil

    # An artifact written before the deseasonalised column existed: same settings, fewer columns.
    old = tmp_path / "old"
    shutil.copytree(trained_dir, old)
    meta = json.loads((old / "meta.json").read_text())
    assert meta["columns"][-1] == DESEASONALISED
    meta["columns"] = meta["columns"][:-1]
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="per-bar columns"):
        load_predictor(old, TINY_MODEL)


def test_artifact_with_other_static_inputs_is_refused(trained_dir: Path, tmp_path: Path) -> None:
    import shutil

    # An artifact written before the price moves and the minute of the hour were inputs.
    old = tmp_path / "old"
    shutil.copytree(trained_dir, old)
    meta = json.loads((old / "meta.json").read_text())
    assert meta["static"][-1] == "minute_59"
    del meta["static"]
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="static inputs"):
        load_predictor(old, TINY_MODEL)


def test_static_inputs_are_har_price_moves_and_the_targets_minute(trained_dir: Path) -> None:
    model = load_predictor(trained_dir, TINY_MODEL).model
    assert isinstance(model, LstmModel)
    frame = near()
    batch = Batch.stack([frame])
    positions = np.array([1500, 1501, 2000])
    design = model.har.design(batch, [KEY], positions)
    static = model.inputs.raw_static(batch, [KEY], positions, design)[0]
    names = model.static_names
    assert static.shape == (3, len(names))
    moves = [names.index(f"return_{w}") for w in RETURN_WINDOWS]
    np.testing.assert_allclose(static[:, moves], trailing_returns(batch.close, positions)[0])
    minutes = (frame.open_time_ms[positions] // 60_000) % 60
    onehot = static[:, names.index("minute_0") :]
    assert onehot.shape[1] == 60 and (onehot.sum(axis=1) == 1).all()
    assert list(onehot.argmax(axis=1)) == list(minutes)
    # The signed return column is abs_return's column with the move's sign.
    cols = model.inputs.columns_of(batch, [KEY])[0]
    signed = cols[:, model.columns.index(SIGNED_RETURN)]
    raw = per_bar(batch, model.bar_features)[0]
    np.testing.assert_allclose(np.abs(signed), raw[:, model.columns.index("abs_return")])
    assert (np.sign(signed[1:]) == np.sign(np.diff(frame.close))).all()


def test_the_new_inputs_are_features_chosen_in_config() -> None:
    every = LstmModel(TINY_MODEL, TINY_MODEL.features, 60_000)
    assert SIGNED_RETURN in every.columns and "minute_59" in every.static_names
    assert all(f"return_{w}" in every.static_names for w in RETURN_WINDOWS)
    fewer = LstmModel(TINY_MODEL, ("log_volume", "abs_return", "time_of_day"), 60_000)
    assert fewer.columns == ("log_volume", "abs_return", "time_of_day_sin", "time_of_day_cos", DESEASONALISED)
    assert fewer.static_names == every.static_names[: len(fewer.static_names)]
    assert not any(n.startswith(("return_", "minute_")) for n in fewer.static_names)


def test_deseasonalised_column_is_volume_against_the_profile(trained_dir: Path) -> None:
    model = load_predictor(trained_dir, TINY_MODEL).model
    assert isinstance(model, LstmModel)
    frame = near()
    batch = Batch.stack([frame])
    cols = model.inputs.columns_of(batch, [KEY])[0]
    level = model.symbol_means[KEY]
    profile = model.har.profile_for(KEY)[slot_of_day(frame.open_time_ms, frame.interval_ms)]
    np.testing.assert_allclose(cols[:, 0], np.log1p(frame.volume) - level)
    np.testing.assert_allclose(cols[:, -1], np.log1p(frame.volume) - level - profile)


def test_seed_and_ensemble_round_trip(tmp_path: Path) -> None:
    frames = [(KEY, near()[:1800])]
    fast = TrainingSettings(epochs=1, batch_size=64, seed=1)
    for name in ("seed", "ensemble"):
        settings = TINY_MODEL.model_copy(update={"name": name})
        trained = train_model(frames, settings, fast, progress=quiet)
        directory = trained.save(tmp_path / name, "v")
        predictor = load_predictor(directory, settings)
        history = [(KEY, near())]
        assert predictor.predict(history) == ModelPredictor(trained.model, name, "v").predict(history)
        assert predictor.look_back == (16 if name == "seed" else 1440)


def test_backtest_sees_only_the_past(trained_dir: Path) -> None:
    predictor = load_predictor(trained_dir, TINY_MODEL)
    frame = near()
    positions = np.arange(2000, 2100)
    before = predictor.forecast_positions(KEY, frame, positions)
    volume = frame.volume.copy()
    volume[2050:] *= 100.0  # the future from position 2050 on
    changed = dataclasses.replace(frame, volume=volume)
    after = predictor.forecast_positions(KEY, changed, positions)
    np.testing.assert_allclose(before[0][:51], after[0][:51])
    assert not np.allclose(before[0][51:], after[0][51:])
    # The live path agrees with the backtest path at a position.
    live = predictor.predict([(KEY, frame[: 2050])])[0]
    assert live.volume == pytest.approx(before[0][50], rel=1e-5)


def test_baseline_predictor_works_without_training() -> None:
    frame = near()
    naive = baseline_predictor("naive")
    assert naive.predict([(KEY, frame)])[0].volume == pytest.approx(frame.volume[-1])
    har = baseline_predictor("har")
    out = har.predict([(KEY, frame), ("other", frame[:2000])])
    assert len(out) == 2 and all(f.volume > 0 and f.quantiles == {} for f in out)
    scores = score(har, [(KEY, frame)], (3000, 3200))
    assert set(scores) >= {"rmse_log", "mae", "mape", "mase"} and scores["bars"] == 200


def test_score_coverage_for_quantile_models(trained_dir: Path) -> None:
    predictor = load_predictor(trained_dir, TINY_MODEL)
    scores = score(predictor, [(KEY, near())], (3500, 4320))
    assert 0.0 <= scores["coverage_80"] <= 1.0
    assert scores["rmse_log"] > 0 and scores["mase"] > 0


def test_unseen_settings_default_is_valid() -> None:
    assert ModelSettings().name == "lstm"
