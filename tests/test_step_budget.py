"""training.max_steps: the run stops after that many optimizer steps in all, the cosine schedule
ends within them, 0 is no cap, and a bad value is refused naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from forecast_helpers import near
from pydantic import ValidationError

from forecaster.seed_model import SeedModel
from forecaster.training_loop import EpochReport, print_progress, step_budget, train_member
from volcast.settings import ConfigError, ModelSettings, TrainingSettings, load_settings

SAMPLES = 100
BATCH = 8  # 13 steps per epoch, the last batch short (100 = 12 x 8 + 4)


class Tiny(torch.nn.Module):
    """The smallest member train_member accepts: (x, s) -> one output per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, torch.zeros(n, 1), x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)


def mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.mean((pred - y) ** 2)


class Run:
    """One train_member run with its optimizer steps counted (a wrapped Adam) and its schedule kept."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, **training: Any) -> None:
        counted = self

        class CountingAdam(torch.optim.Adam):
            def step(self, closure: Any = None) -> Any:
                counted.steps += 1
                return super().step(closure)

        class KeptSchedule(torch.optim.lr_scheduler.CosineAnnealingLR):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                counted.schedules.append(self)

        self.steps = 0
        self.schedules: list[torch.optim.lr_scheduler.CosineAnnealingLR] = []
        self.reports: list[EpochReport] = []
        monkeypatch.setattr(torch.optim, "Adam", CountingAdam)
        monkeypatch.setattr(torch.optim.lr_scheduler, "CosineAnnealingLR", KeptSchedule)
        settings = TrainingSettings(**({"batch_size": BATCH, "patience": 0, "threads": 1} | training))
        self.net, self.epochs = train_member(Tiny, settings, 3, data(SAMPLES, 1), data(20, 2), mse,
                                             self.reports.append)
        monkeypatch.undo()

    @property
    def schedule(self) -> torch.optim.lr_scheduler.CosineAnnealingLR:
        assert len(self.schedules) == 1
        return self.schedules[0]


def test_the_budget_stops_the_run_mid_epoch_after_exactly_max_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch, epochs=5, max_steps=20)
    assert run.steps == 20
    assert run.schedule.last_epoch == 20
    assert run.schedule.T_max == 20
    # 13 steps, then 7 of the second epoch's 13: that partial epoch is validated and reported.
    assert run.epochs == 2
    assert [(r.epoch, r.steps, r.budget_spent) for r in run.reports] == [(1, 13, False), (2, 20, True)]
    assert all(r.val_loss is not None for r in run.reports)
    # The decay completed within the budget: the last step was taken at the floor rate.
    assert run.schedule.get_last_lr()[0] == pytest.approx(0.05 * 2e-3)


def test_a_budget_on_an_epoch_boundary_stops_there(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch, epochs=5, max_steps=26)
    assert (run.steps, run.epochs) == (26, 2)
    assert run.reports[-1].budget_spent


@pytest.mark.parametrize(
    ("epochs", "batch_size", "samples", "max_steps", "expected"),
    [
        (8, 256, 83_300, 700, (700, 326)),  # the pooled screen's five files: the budget binds
        (8, 256, 16_660, 700, (8 * 66, 66)),  # one file: 8 epochs are fewer steps than the budget
        (8, 256, 16_660, 0, (8 * 66, 66)),  # 0: no cap
        (2, 10, 95, 15, (15, 10)),
        (2, 10, 95, 20, (20, 10)),  # exactly the epochs' steps
        (1, 256, 1, 700, (1, 1)),
    ],
)
def test_t_max_is_the_epochs_steps_capped_by_max_steps(
    epochs: int, batch_size: int, samples: int, max_steps: int, expected: tuple[int, int]
) -> None:
    training = TrainingSettings(epochs=epochs, batch_size=batch_size, max_steps=max_steps)
    assert step_budget(training, samples) == expected


def test_zero_is_no_cap_and_a_budget_that_does_not_bind_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    free = Run(monkeypatch, epochs=3, max_steps=0)
    assert free.steps == free.schedule.last_epoch == free.schedule.T_max == 3 * 13
    assert free.epochs == 3
    assert not any(r.budget_spent for r in free.reports)
    loose = Run(monkeypatch, epochs=3, max_steps=3 * 13)
    assert loose.steps == 3 * 13
    assert not any(r.budget_spent for r in loose.reports)
    for a, b in zip(free.net.state_dict().values(), loose.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [r.train_loss for r in free.reports] == [r.train_loss for r in loose.reports]


def test_early_stopping_still_ends_a_run_before_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # A rate this large makes the validation loss worse after the first epoch.
    run = Run(monkeypatch, epochs=10, max_steps=100, patience=1, learning_rate=50.0)
    assert run.epochs < 8
    assert run.steps == 13 * run.epochs
    assert not run.reports[-1].budget_spent


def test_the_progress_line_says_the_budget_ended_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    print_progress(EpochReport(2, 8, 0.5, 0.4, 1.0, True, 700, True))
    print_progress(EpochReport(1, 8, 0.5, 0.4, 1.0, True, 350, False))
    spent, plain = capsys.readouterr().err.splitlines()
    assert "step budget reached: 700 steps" in spent
    assert "budget" not in plain


def test_the_seed_model_honours_the_budget() -> None:
    frame = near()[:400]
    reports: list[EpochReport] = []
    model = SeedModel(ModelSettings(name="seed", look_back=16))
    # 384 samples at batch 32: 12 steps an epoch; 18 is one epoch and a half.
    training = TrainingSettings(epochs=4, batch_size=32, patience=0, max_steps=18)
    scores = model.fit_model([("k", frame)], training, reports.append)
    assert scores["epochs_run"] == 2
    assert [(r.steps, r.budget_spent) for r in reports] == [(12, False), (18, True)]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("-1", "training.max_steps: Input should be greater than or equal to 0"),
        ("1.5", "training.max_steps: Input should be a valid integer"),
        ("lots", "training.max_steps: Input should be a valid integer"),
    ],
)
def test_a_bad_budget_is_refused_naming_the_key(tmp_path: Path, value: str, fragment: str) -> None:
    path = tmp_path / "config.yml"
    path.write_text(f"exchanges:\n  - id: binance\n    symbols: [BTC/USDT]\ntraining:\n  max_steps: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert fragment in str(info.value)
    with pytest.raises(ValidationError):
        TrainingSettings(max_steps=-1)


def test_the_shipped_config_names_the_budget() -> None:
    shipped = load_settings(Path(__file__).resolve().parent.parent / "config.yml", env={})
    assert shipped.training.max_steps == TrainingSettings().max_steps
