"""``SeedModel`` (``seed``): the design note's model, faithfully (raw volume in and out, MSE)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from forecaster.baselines import LogForecaster
from forecaster.features import Batch
from forecaster.frame import BarFrame, FloatArray, IntArray
from forecaster.networks import SeedNet
from forecaster.training_loop import (
    CHUNK,
    EpochReport,
    Progress,
    budget_ends_run,
    quiet,
    shuffled_batches,
    step_budget,
)
from volcast.settings import ModelSettings, TrainingSettings


class SeedModel(LogForecaster):
    """The design note's model, kept faithful: raw volumes, no normalisation, MSE, Adam."""

    name: ClassVar[str] = "seed"
    UNITS: ClassVar[int] = 50

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.look_back = settings.look_back
        self.net = SeedNet(self.UNITS)

    @property
    def min_history(self) -> int:
        return self.look_back

    def _windows(self, volume: FloatArray, positions: IntArray) -> npt.NDArray[np.float32]:
        lb = self.look_back
        idx = positions[:, None] - lb + np.arange(lb)[None, :]
        if idx.min() < 0:
            raise ValueError(f"a forecast needs {lb} bars before it")
        return volume[:, idx].reshape(-1, lb, 1).astype(np.float32)

    def fit_model(
        self, frames: Sequence[tuple[str, BarFrame]], training: TrainingSettings, progress: Progress
    ) -> dict[str, float]:
        torch.manual_seed(training.seed)
        self.net = SeedNet(self.UNITS)
        xs, ys = [], []
        for _, frame in frames:
            pos = np.arange(self.look_back, len(frame), dtype=np.int64)
            if len(pos):
                xs.append(self._windows(frame.volume[None, :], pos))
                ys.append(frame.volume[pos].astype(np.float32))
        if not xs:
            raise ValueError(f"not enough bars to train: need more than {self.look_back}")
        x = torch.from_numpy(np.concatenate(xs))
        y = torch.from_numpy(np.concatenate(ys)).unsqueeze(1)
        opt = torch.optim.Adam(self.net.parameters(), lr=training.learning_rate)
        gen = torch.Generator().manual_seed(training.seed)
        self.net.train()
        loss_value = float("nan")
        # training.max_steps caps this plain loop too (no schedule here to fit to it): the setting
        # bounds every model's training, whichever model.name the refit worker runs.
        steps, epoch_steps = step_budget(training, len(y))
        taken = 0
        epoch = 0
        for epoch in range(1, training.epochs + 1):
            started = time.perf_counter()
            total = 0.0
            seen = 0
            for idx in shuffled_batches(len(y), training.batch_size, gen):
                if taken >= steps:
                    break
                opt.zero_grad()
                loss = torch.mean((self.net(x[idx]) - y[idx]) ** 2)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                taken += 1
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            loss_value = total / max(1, seen)
            budget_spent = budget_ends_run(training, steps, epoch_steps, taken)
            progress(EpochReport(epoch, training.epochs, loss_value, None, time.perf_counter() - started, False,
                                 taken, budget_spent))
            if budget_spent:
                break
        self.net.eval()
        return {"train_loss": loss_value, "epochs_run": float(epoch), "train_samples": float(len(y))}

    def fit(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        self.fit_model(frames, TrainingSettings(), quiet)

    def predict_log(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        s_count = batch.volume.shape[0]
        out = np.empty((s_count, len(positions)))
        step = max(1, CHUNK // s_count)
        self.net.eval()
        for lo in range(0, len(positions), step):
            pos = positions[lo : lo + step]
            with torch.inference_mode():
                pred = self.net(torch.from_numpy(self._windows(batch.volume, pos))).numpy()
            out[:, lo : lo + step] = pred.reshape(s_count, len(pos))
        # Dense(1) is linear and can go negative; a volume cannot.
        return np.log1p(np.maximum(np.nan_to_num(out, nan=0.0), 0.0)), None

    def tensors(self) -> dict[str, npt.NDArray[Any]]:
        return {f"net.{k}": v.detach().numpy().copy() for k, v in self.net.state_dict().items()}

    def meta(self) -> dict[str, Any]:
        return {"features": ["volume"], "units": self.UNITS}

    @classmethod
    def from_parts(
        cls, settings: ModelSettings, tensors: dict[str, npt.NDArray[Any]], meta: dict[str, Any]
    ) -> SeedModel:
        model = cls(settings)
        state = {k.removeprefix("net."): torch.from_numpy(v.copy()) for k, v in tensors.items()}
        model.net.load_state_dict(state, strict=True)
        model.net.eval()
        return model
