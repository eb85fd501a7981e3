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
    # Optimizer steps taken so far in the run, and whether training.max_steps ends the run with
    # this epoch (which may then be partial): a run cut short by the budget, not by early stopping.
    steps: int = 0
    budget_spent: bool = False


Progress = Callable[[EpochReport], None]


def print_progress(report: EpochReport) -> None:
    """One line per epoch on stderr."""
    val = f" val {report.val_loss:.5f}" if report.val_loss is not None else ""
    star = " *" if report.best else ""
    budget = f" (step budget reached: {report.steps} steps, run ends)" if report.budget_spent else ""
    print(
        f"epoch {report.epoch}/{report.epochs} loss {report.train_loss:.5f}{val} {report.seconds:.1f}s{star}{budget}",
        file=sys.stderr,
        flush=True,
    )


def quiet(report: EpochReport) -> None:
    return None


def shuffled_batches(n: int, size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(torch.split(order, size))


def step_budget(training: TrainingSettings, samples: int) -> tuple[int, int]:
    """``(steps, epoch_steps)``: the optimizer steps the run takes at most (the cosine schedule's
    T_max), ``training.epochs`` epochs capped by ``training.max_steps`` (0: no cap), and the
    steps of one full epoch over ``samples`` training samples."""
    epoch_steps = -(-samples // training.batch_size)
    steps = training.epochs * epoch_steps
    return (min(steps, training.max_steps) if training.max_steps else steps), epoch_steps


def budget_ends_run(training: TrainingSettings, steps: int, epoch_steps: int, taken: int) -> bool:
    """``training.max_steps`` binds (``steps`` from ``step_budget`` is fewer than the epochs' steps)
    and ``taken`` reached it: the run ends with this epoch, not by early stopping."""
    return taken >= steps and steps < training.epochs * epoch_steps


def train_member(
    new_member: Callable[[], Net],
    training: TrainingSettings,
    seed: int,
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    progress: Progress,
) -> tuple[Net, int]:
    """One member trained from ``seed``: its best state on validation, and the epochs it ran (an
    epoch that ``training.max_steps`` cut short counts)."""
    xt, st, yt = train
    torch.manual_seed(seed)
    net = new_member()
    opt = torch.optim.Adam(net.parameters(), lr=training.learning_rate)
    # Cosine decay over the whole run: late epochs take small steps, which steadies the
    # validation loss that early stopping reads (noisy at a constant rate on these data). The
    # run is at most ``steps`` long, so with a step budget the decay still reaches its floor.
    steps, epoch_steps = step_budget(training, len(yt))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.05 * training.learning_rate)
    gen = torch.Generator().manual_seed(seed)
    best_val = float("inf")
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    stale = 0
    epoch = 0
    taken = 0
    for epoch in range(1, training.epochs + 1):
        started = time.perf_counter()
        net.train()
        total = 0.0
        seen = 0
        # Without a binding budget ``steps`` is every epoch's batches, so this never cuts one.
        for idx in shuffled_batches(len(yt), training.batch_size, gen):
            if taken >= steps:
                break
            opt.zero_grad()
            loss = loss_of(net(xt[idx], st[idx]), yt[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            schedule.step()
            taken += 1
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        # A partial last epoch is validated like a full one: early stopping may keep its state.
        val = eval_loss(net, *valid, loss_of)
        improved = val < best_val
        if improved:
            best_val = val
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
            stale = 0
        else:
            stale += 1
        budget_spent = budget_ends_run(training, steps, epoch_steps, taken)
        progress(EpochReport(epoch, training.epochs, total / max(1, seen), val, time.perf_counter() - started,
                             improved, taken, budget_spent))
        if budget_spent or (training.patience and stale >= training.patience):
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
