"""Generic encoder for inputs that already are feature sequences (B, L, C): a linear map C -> d_model."""

from __future__ import annotations

import torch
from torch import nn


class LinearEncoder(nn.Module):
    """(B, L, C) floats -> Linear(C, D) -> (B, L, D); the mask (B, L) bool passes through."""

    def __init__(
        self,
        d_model: int,
        in_chans: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.in_chans = in_chans
        self.proj = nn.Linear(in_chans, d_model, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"features models take a tensor (B, L, C), got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"features models take float features (B, L, C), got dtype {x.dtype}")
        if x.ndim != 3:
            raise ValueError(f"features models take inputs of shape (B, L, C), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.in_chans:
            raise ValueError(f"input has C={x.shape[-1]} features per step, the model expects in_chans={self.in_chans}")
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask must be (B, L) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
            mask = mask.bool()
        return self.proj(x.to(self.proj.weight.dtype)), mask
