"""The training loop's parts: a report per epoch, mini-batches in a seeded order, and a member
network trained with early stopping on the validation loss (forecaster/lstm_model.py trains its
members with it; forecaster/seed_model.py keeps the design note's plain loop).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from volcast.settings import TrainingSettings

Net = TypeVar("Net", bound=torch.nn.Module)

CHUNK = 4096
"""Rows per forward pass outside the training steps (validation loss, predictions): bounds memory."""


@dataclass(frozen=True, slots=True)
class EpochReport:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float | None
    seconds: float
    best: bool


Progress = Callable[[EpochReport], None]


def print_progress(report: EpochReport) -> None:
    """One line per epoch on stderr."""
    val = f" val {report.val_loss:.5f}" if report.val_loss is not None else ""
    star = " *" if report.best else ""
    print(
        f"epoch {report.epoch}/{report.epochs} loss {report.train_loss:.5f}{val} {report.seconds:.1f}s{star}",
        file=sys.stderr,
        flush=True,
    )


def quiet(report: EpochReport) -> None:
    return None


def shuffled_batches(n: int, size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(torch.split(order, size))


def train_member(
    new_member: Callable[[], Net],
    training: TrainingSettings,
    seed: int,
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    progress: Progress,
) -> tuple[Net, int]:
    """One member trained from ``seed``: its best state on validation, and the epochs it ran."""
    xt, st, yt = train
    torch.manual_seed(seed)
    net = new_member()
    opt = torch.optim.Adam(net.parameters(), lr=training.learning_rate)
    # Cosine decay over the whole run: late epochs take small steps, which steadies the
    # validation loss that early stopping reads (noisy at a constant rate on these data).
    steps = training.epochs * -(-len(yt) // training.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.05 * training.learning_rate)
    gen = torch.Generator().manual_seed(seed)
    best_val = float("inf")
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    stale = 0
    epoch = 0
    for epoch in range(1, training.epochs + 1):
        started = time.perf_counter()
        net.train()
        total = 0.0
        for idx in shuffled_batches(len(yt), training.batch_size, gen):
            opt.zero_grad()
            loss = loss_of(net(xt[idx], st[idx]), yt[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        val = eval_loss(net, *valid, loss_of)
        improved = val < best_val
        if improved:
            best_val = val
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
            stale = 0
        else:
            stale += 1
        progress(EpochReport(epoch, training.epochs, total / len(yt), val, time.perf_counter() - started, improved))
        if training.patience and stale >= training.patience:
            break
    net.load_state_dict(best_state)
    net.eval()
    return net, epoch

def eval_loss(
    net: torch.nn.Module,
    x: torch.Tensor,
    s: torch.Tensor,
    y: torch.Tensor,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> float:
    net.eval()
    total = 0.0
    with torch.inference_mode():
        for lo in range(0, len(y), CHUNK):
            sl = slice(lo, lo + CHUNK)
            total += float(loss_of(net(x[sl], s[sl]), y[sl])) * len(y[sl])
    return total / max(1, len(y))
