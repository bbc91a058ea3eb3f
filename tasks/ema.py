"""An exponential moving average (EMA) of a model's weights, which the training loop evaluates and saves instead of
the trained weights when `ema_decay` is set.

After every optimiser step each floating-point parameter's average moves towards it,
`ema = d * ema + (1 - d) * param` with `d = min(decay, (1 + n) / (10 + n))` at the n-th update (n from 0), so that
early averages follow the weights instead of the random initialisation (the warmup of timm's ModelEmaV3). Buffers
(norm statistics, counters) are copied, not averaged. The averages are fp32 on the model's device and keyed like the
model's state dict; weights tied in the model stay one tensor here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def _clone_state(model: nn.Module, float_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A detached copy of `model.state_dict()` (floating-point tensors cast to `float_dtype` when given), with
    tensors shared in the model (tied weights) shared in the copy."""
    copies: dict[int, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in copies:
            dtype = float_dtype if float_dtype is not None and t.is_floating_point() else t.dtype
            copies[id(t)] = t.detach().to(dtype=dtype, copy=True)
        out[name] = copies[id(t)]
    return out


class WeightEMA:
    """The moving average of `model`'s weights, starting from its current ones.

    `update(model)` after each optimiser step; `swapped_in(model)` to evaluate or save the averages;
    `state_dict()` / `load_state_dict()` (plain tensors and numbers) for checkpoints.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.weights = _clone_state(model, torch.float32)

    def current_decay(self) -> float:
        """The decay the next update uses: `decay`, lowered for the first updates."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        params = {id(p) for p in model.parameters()}
        averaged, current, seen = [], [], set()
        for name, t in model.state_dict(keep_vars=True).items():
            if id(t) in seen:  # a tied weight, already done under its first name
                continue
            seen.add(id(t))
            if id(t) in params and t.is_floating_point():
                averaged.append(self.weights[name])
                current.append(t.detach())
            else:
                self.weights[name].copy_(t)
        if averaged:
            torch._foreach_mul_(averaged, d)
            torch._foreach_add_(averaged, current, alpha=1.0 - d)
        self.updates += 1

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block `model` holds the averages (cast to its dtypes); after it, its own weights again,
        bit for bit."""
        own = _clone_state(model)
        model.load_state_dict(self.weights)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "weights": self.weights}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["weights"]) != set(self.weights):
            missing = sorted(set(self.weights) ^ set(state["weights"]))
            raise ValueError(f"the saved moving average does not match the model (keys {missing[:5]} differ)")
        for name, t in state["weights"].items():
            self.weights[name].copy_(t)
        self.updates = int(state["updates"])
