"""Normalisation layers with the fused residual add of a pre-norm block.

Both take `forward(x, residual=None, prenorm=False, residual_in_fp32=False)` over the last dim of x (..., d):
with a residual they normalise x + residual, and with prenorm=True they also return that sum (the new residual
stream, in fp32 when residual_in_fp32), so a block reads and writes the stream once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqbackbone.kernels import rms_norm


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight, over the last dim; fused kernel."""

    def __init__(
        self,
        d_model: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None = None,
        prenorm: bool = False,
        residual_in_fp32: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return rms_norm(
            x, self.weight, eps=self.eps, residual=residual, prenorm=prenorm, residual_in_fp32=residual_in_fp32
        )

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm with the same residual interface as RMSNorm (no fused kernel: plain PyTorch)."""

    def __init__(
        self,
        d_model: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, eps=eps, device=device, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None = None,
        prenorm: bool = False,
        residual_in_fp32: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        summed = x if residual is None else x + residual
        if residual_in_fp32:
            summed = summed.float()
        out = F.layer_norm(summed.to(self.weight.dtype), self.normalized_shape, self.weight, self.bias, self.eps)
        out = out.to(x.dtype)
        return (out, summed) if prenorm else out
