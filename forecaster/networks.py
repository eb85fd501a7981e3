"""The networks, as plain ``nn.Module``s. Shapes are in each forward's docstring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class LstmState:
    """``VolumeLSTM``'s recurrent state after the first steps of a batch of windows.

    ``h`` and ``c``: (layers, batch, hidden); ``outputs``: (batch, steps, hidden) when the
    network attends over every step, else None.
    """

    h: torch.Tensor
    c: torch.Tensor
    outputs: torch.Tensor | None

    def rows(self, index: torch.Tensor) -> LstmState:
        """The states of the windows at ``index`` (a 1-D tensor of batch positions)."""
        outputs = None if self.outputs is None else self.outputs[index]
        return LstmState(self.h[:, index], self.c[:, index], outputs)


class ReluLSTMCell(nn.Module):
    """One LSTM layer as Keras ``LSTM(units, activation='relu')`` computes it.

    torch's ``nn.LSTM`` is tanh-only. Keras applies ``activation`` to the candidate cell state and
    to the cell state on output, and ``recurrent_activation`` (sigmoid) to the gates; gate order
    i, f, c, o; kernel glorot-uniform, recurrent kernel orthogonal, bias zero except the forget
    gate at one (``unit_forget_bias``).
    """

    def __init__(self, input_size: int, units: int) -> None:
        super().__init__()
        self.units = units
        self.kernel = nn.Parameter(torch.empty(input_size, 4 * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, 4 * units))
        self.bias = nn.Parameter(torch.zeros(4 * units))
        nn.init.xavier_uniform_(self.kernel)
        for g in range(4):
            nn.init.orthogonal_(self.recurrent_kernel.data[:, g * units : (g + 1) * units])
        with torch.no_grad():
            self.bias[units : 2 * units] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, time, input_size) -> last hidden state (batch, units)."""
        batch, steps, _ = x.shape
        u = self.units
        projected = x @ self.kernel + self.bias  # all time steps at once: (batch, time, 4u)
        h = x.new_zeros(batch, u)
        c = x.new_zeros(batch, u)
        # Only the recurrent matmul stays in the loop, fused with the add; one sigmoid over all
        # four gates (the candidate's slice of it is unused) saves three small ops per step,
        # which is most of the cost at batch 32. (torch.jit.script of this loop measured slower.)
        for t in range(steps):
            z = torch.addmm(projected[:, t], h, self.recurrent_kernel)
            gates = torch.sigmoid(z)
            g = torch.relu(z[:, 2 * u : 3 * u])
            c = gates[:, u : 2 * u] * c + gates[:, :u] * g
            h = gates[:, 3 * u :] * torch.relu(c)
        return h


class SeedNet(nn.Module):
    """The design note's model: ``LSTM(50, activation='relu')`` then ``Dense(1)``, on raw volume."""

    def __init__(self, units: int = 50) -> None:
        super().__init__()
        self.lstm = ReluLSTMCell(1, units)
        self.dense = nn.Linear(units, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, look_back, 1) raw volumes -> (batch, 1) next volume."""
        out: torch.Tensor = self.dense(self.lstm(x))
        return out


class VolumeLSTM(nn.Module):
    """LSTM over normalised per-bar features, plus static regressors, to a residual on HAR.

    Inputs: ``seq`` (batch, look_back, n_features) and ``static`` (batch, n_static), both
    normalised. Output: (batch, n_targets * (1 + n_quantiles)) in log1p space *relative to HAR's
    forecast of each target*, target-major: for each target (forecaster/horizons.py; target 0 is
    the next bar) the conditional mean (trained with MSE) then the quantiles (pinball loss). All
    targets come from one shared LSTM state through one head: direct multi-horizon forecasts in
    one forward pass, nothing fed back. The next bar keeps a head of its own (``head``, the one a
    model of the next bar only has: its artifacts load unchanged); the other targets share
    ``horizon_head``, so the 62 of them do not crowd the next bar out of one head's hidden layer.
    With ``attention``, a learned softmax over the LSTM outputs of every step is concatenated to
    the last hidden state.
    """

    def __init__(
        self,
        n_features: int,
        n_static: int,
        hidden: int,
        layers: int,
        dropout: float,
        n_quantiles: int,
        attention: bool,
        n_targets: int = 1,
    ) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            n_features, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.attention = nn.Linear(hidden, 1) if attention else None
        width = hidden * (2 if attention else 1) + n_static
        self.head = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1 + n_quantiles)
        )
        self.horizon_head = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, (n_targets - 1) * (1 + n_quantiles)),
        ) if n_targets > 1 else None
        # Start at "no correction to HAR": the net only has to learn what HAR misses.
        with torch.no_grad():
            for head in (self.head, self.horizon_head):
                if head is None:
                    continue
                last = head[-1]
                assert isinstance(last, nn.Linear)
                last.weight.mul_(0.01)
                last.bias.zero_()

    def forward(self, seq: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """seq: (batch, look_back, n_features), static: (batch, n_static) -> (batch, n_targets * (1 + n_quantiles))."""
        outputs, _ = self.lstm(seq)  # (batch, look_back, hidden)
        return self._head_of(outputs, static)

    def begin(self, seq: torch.Tensor) -> LstmState:
        """seq: (batch, steps, n_features), the first steps of windows -> the state after them."""
        outputs, (h, c) = self.lstm(seq)
        return LstmState(h, c, outputs if self.attention is not None else None)

    def resume(self, state: LstmState, last: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """The rest of ``forward``: ``last`` (batch, 1, n_features) is each window's final step,
        ``state`` what ``begin`` returned for the steps before it -> (batch, n_targets * (1 + n_quantiles))."""
        out, _ = self.lstm(last, (state.h, state.c))
        outputs = out if state.outputs is None else torch.cat([state.outputs, out], dim=1)
        return self._head_of(outputs, static)

    def _head_of(self, outputs: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """outputs: (batch, steps, hidden) of the LSTM over whole windows -> (batch, n_targets * (1 + n_quantiles))."""
        parts = [outputs[:, -1]]
        if self.attention is not None:
            weights = torch.softmax(self.attention(outputs).squeeze(-1), dim=1)
            parts.append((weights.unsqueeze(-1) * outputs).sum(dim=1))
        parts.append(static)
        joined = torch.cat(parts, dim=1)
        out: torch.Tensor = self.head(joined)
        if self.horizon_head is not None:
            out = torch.cat([out, self.horizon_head(joined)], dim=1)
        return out


class MemberAverage(nn.Module):
    """``members`` independently initialised ``VolumeLSTM``s whose outputs are averaged.

    Members are trained one after another (each its own seed and early stopping), so ``forward``
    is only the inference path: K small forwards over the same batch, then the mean.
    """

    def __init__(self, members: list[VolumeLSTM]) -> None:
        super().__init__()
        if not members:
            raise ValueError("at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, seq: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """seq: (batch, look_back, n_features), static: (batch, n_static) -> (batch, n_targets * (1 + n_quantiles))."""
        out: torch.Tensor = torch.stack([m(seq, static) for m in self.members]).mean(dim=0)
        return out

    def begin(self, seq: torch.Tensor) -> list[LstmState]:
        """``VolumeLSTM.begin`` of every member."""
        return [m.begin(seq) for m in self._members()]

    def resume(self, states: list[LstmState], last: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """``VolumeLSTM.resume`` of every member from its own state, averaged."""
        outs = [m.resume(s, last, static) for m, s in zip(self._members(), states, strict=True)]
        out: torch.Tensor = torch.stack(outs).mean(dim=0)
        return out

    def _members(self) -> list[VolumeLSTM]:
        # nn.ModuleList hands out nn.Modules to the type checker; __init__ takes VolumeLSTMs only.
        return cast("list[VolumeLSTM]", list(self.members))
