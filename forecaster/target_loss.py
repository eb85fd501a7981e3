"""The training loss of a model with horizons: per target, MSE of the point head plus pinball loss
of the quantiles, each weighted by ``target_loss_weights`` (docs/accuracy.md#horizons).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

NEXT_BAR_WEIGHT = 0.8
"""The next bar's share of the training loss of a model with horizons (the other targets share
the rest equally): it is what most readers use (docs/accuracy.md#horizons)."""
MAX_TARGET_SCALE = 10.0
"""A target's loss is scaled up by at most this much for a base error smaller than the next bar's
(``target_loss_weights``): a window of near-constant volume must not take over the training."""

def target_loss_weights(residuals: torch.Tensor, next_bar_weight: float = NEXT_BAR_WEIGHT
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target, the weight of its MSE and of its pinball loss, from the targets' residuals on
    their bases over the training rows (B, T): the next bar ``next_bar_weight`` of the loss and the
    others equal shares of the rest, each then in units of its own base error (its MSE divided by
    its base's mean squared residual, its pinball by the root of that), the next bar's scale kept.
    A window's error is 2 to 4 times smaller in variance than a single bar's, so in raw units the
    windows were the targets trained least (docs/accuracy.md#horizons, "what was tried")."""
    n = residuals.shape[1]
    shares = torch.full((n,), (1.0 - next_bar_weight) / max(1, n - 1))
    shares[0] = 1.0 if n == 1 else next_bar_weight
    var = (residuals.double() ** 2).mean(dim=0).clamp_min(1e-6).float()
    scale = (var[0] / var).clamp(max=MAX_TARGET_SCALE)
    return shares * scale, shares * torch.sqrt(scale)


def target_loss(quantiles: Sequence[float], n_targets: int, residuals: torch.Tensor
                ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of the network's rows ``out`` (B, T * (1 + Q)) against targets ``y`` (B, T),
    weighted by ``target_loss_weights`` of the training ``residuals``."""
    levels = torch.tensor(quantiles, dtype=torch.float32)
    # With 62 equal shares the next bar was 3% behind the model of the next bar only.
    mse_weights, pinball_weights = target_loss_weights(residuals)

    def loss_of(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # out (B, T * (1 + Q)) target-major, y (B, T).
        out = out.view(len(out), n_targets, -1)
        loss = (torch.mean((out[..., 0] - y) ** 2, dim=0) * mse_weights).sum()
        if len(quantiles):
            diff = y.unsqueeze(-1) - out[..., 1:]
            pinball = torch.maximum(levels * diff, (levels - 1) * diff).mean(dim=(0, 2))
            loss = loss + (pinball * pinball_weights).sum()
        return loss

    return loss_of
