"""RMSNorm with a fused residual add: `rms_norm` (dispatching) and `rms_norm_ref` (plain PyTorch).

s = x + residual (in fp32; fp64 for fp64 inputs),  out = s / sqrt(mean(s^2) + eps) * weight
"""

from __future__ import annotations

import torch

from .cast import cast
from .dispatch import backend
from .validate import check_optional, check_tensor


def _check_norm(
    x: object, weight: object, eps: object, residual: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x = check_tensor("x", x)
    if x.dim() < 1:
        raise ValueError(f"x must have shape (..., hidden), got {tuple(x.shape)}")
    weight = check_tensor("weight", weight, shape=(x.shape[-1],), device=x.device)
    residual = check_optional("residual", residual, shape=tuple(x.shape), device=x.device)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    return x, weight, residual


def _rms_norm_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None,
    prenorm: bool,
    residual_in_fp32: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    cdt = torch.float64 if torch.float64 in (x.dtype, weight.dtype) else torch.float32
    s = cast(x, cdt)
    if residual is not None:
        s = s + cast(residual, cdt)
    out = s * torch.rsqrt(s.square().mean(-1, keepdim=True) + eps) * cast(weight, cdt)
    out = cast(out, x.dtype)
    if not prenorm:
        return out
    res_dtype = torch.promote_types(torch.float32, x.dtype) if residual_in_fp32 else x.dtype
    return out, cast(s, res_dtype)


def rms_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim of x (+ residual). x, residual: (..., hidden); weight: (hidden,).

    Returns out in x's dtype; with prenorm also the sum x + residual (x itself when residual is None), in fp32 when
    residual_in_fp32 else in x's dtype, to carry to the next block.
    """
    x, weight, residual = _check_norm(x, weight, eps, residual)
    return _rms_norm_torch(x, weight, float(eps), residual, prenorm, residual_in_fp32)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fused residual add + RMSNorm; same contract as `rms_norm_ref`, Triton on CUDA tensors."""
    x, weight, residual = _check_norm(x, weight, eps, residual)
    if backend(x) == "triton":
        from .norm_triton import rms_norm_triton

        return rms_norm_triton(x, weight, float(eps), residual, prenorm, residual_in_fp32)
    return _rms_norm_torch(x, weight, float(eps), residual, prenorm, residual_in_fp32)
