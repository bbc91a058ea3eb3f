"""Depthwise causal 1-D convolution: `causal_conv1d` (dispatching), `causal_conv1d_ref` (plain PyTorch) and
`causal_conv1d_update` (one decoding step on a rolling window) with its twin `causal_conv1d_update_ref`.

Dimensions: batch (b), dim = channels (d), L = time (l), width = kernel taps (w).
Causal: out_t = bias + sum_k weight[k] x[t - (w-1) + k]. Anti-causal (reverse=True): out_t = bias +
sum_k weight[k] x[t + (w-1) - k], so that reverse on x equals flip(conv(flip(x))) without flipping anything.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cast import cast
from .dispatch import backend
from .validate import FLOAT_DTYPES, check_mask, check_optional, check_tensor

_ACTIVATIONS = (None, "silu")


def _check_conv(
    x: object, weight: object, bias: object, activation: object, mask: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    x = check_tensor("x", x, shape=(None, None, None))
    batch, dim, length = x.shape
    weight = check_tensor("weight", weight, dtypes=FLOAT_DTYPES, device=x.device)
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight[:, 0]  # nn.Conv1d(groups=dim) keeps it as (dim, 1, width)
    check_tensor("weight", weight, shape=(dim, None))
    if weight.shape[1] < 1:
        raise ValueError(f"weight must have shape (dim, width) with width >= 1, got {tuple(weight.shape)}")
    bias = check_optional("bias", bias, shape=(dim,), device=x.device)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    mask = check_mask(mask, batch, length, x.device)
    return x, weight, bias, mask


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    mask: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Tap-by-tap sum in fp32 (fp64 for fp64 inputs). x: (batch, dim, L); weight: (dim, width); bias: (dim,);
    mask: bool (batch, L), padded inputs count as 0 and padded outputs are 0. Returns (batch, dim, L) in x's dtype."""
    x, weight, bias, mask = _check_conv(x, weight, bias, activation, mask)
    cdt = torch.float64 if torch.float64 in (x.dtype, weight.dtype) else torch.float32
    width, length = weight.shape[1], x.shape[2]
    xs = x.to(cdt)
    if mask is not None:
        xs = torch.where(mask[:, None, :], xs, 0.0)
    # Zero history beyond the sequence on the side the window reaches into.
    padded = F.pad(xs, (0, width - 1) if reverse else (width - 1, 0))  # (b, d, l + w - 1)
    out = torch.zeros_like(xs)
    for k in range(width):
        # causal: tap k reads x[t - (w-1) + k]; anti-causal: tap k reads x[t + (w-1) - k]
        start = width - 1 - k if reverse else k
        out = out + weight[:, k, None].to(cdt) * padded[:, :, start : start + length]
    if bias is not None:
        out = out + bias.to(cdt)[:, None]
    if activation == "silu":
        out = F.silu(out)
    if mask is not None:
        out = torch.where(mask[:, None, :], out, 0.0)
    return out.to(x.dtype)


def _causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    mask: torch.Tensor | None,
    reverse: bool,
) -> torch.Tensor:
    """One grouped F.conv1d; fp16/bf16 inputs are computed in fp32 (CPU half convolutions are slow and inexact)."""
    cdt = torch.float64 if torch.float64 in (x.dtype, weight.dtype) else torch.float32
    width, dim = weight.shape[1], x.shape[1]
    xs = x.to(cdt)
    if mask is not None:
        xs = torch.where(mask[:, None, :], xs, 0.0)
    w = weight.to(cdt)
    if reverse:
        xs = F.pad(xs, (0, width - 1))
        w = w.flip(-1)  # the (dim, width) weight, not the data: tap k meets x[t + (w-1) - k]
    else:
        xs = F.pad(xs, (width - 1, 0))
    out = F.conv1d(xs, w[:, None, :], None if bias is None else bias.to(cdt), groups=dim)
    if activation == "silu":
        out = F.silu(out)
    if mask is not None:
        out = torch.where(mask[:, None, :], out, 0.0)
    return out.to(x.dtype)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    mask: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Depthwise causal conv (anti-causal when reverse). x: (batch, dim, L); weight: (dim, width) or
    (dim, 1, width); bias: (dim,); activation: None or "silu"; mask: bool (batch, L), True = real token (padded
    inputs are zeroed before the conv, padded outputs are 0). Returns (batch, dim, L) in x's dtype."""
    x, weight, bias, mask = _check_conv(x, weight, bias, activation, mask)
    if backend(x) == "triton":
        from .conv_triton import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, activation, mask, reverse)
    return _causal_conv1d_torch(x, weight, bias, activation, mask, reverse)


def _check_conv_update(
    x: object, conv_state: object, weight: object, bias: object, activation: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x = check_tensor("x", x, shape=(None, None))
    batch, dim = x.shape
    weight = check_tensor("weight", weight, device=x.device)
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight[:, 0]  # nn.Conv1d(groups=dim) keeps it as (dim, 1, width)
    check_tensor("weight", weight, shape=(dim, None))
    width = weight.shape[1]
    if width < 1:
        raise ValueError(f"weight must have shape (dim, width) with width >= 1, got {tuple(weight.shape)}")
    conv_state = check_tensor("conv_state", conv_state, shape=(batch, dim, width), device=x.device)
    bias = check_optional("bias", bias, shape=(dim,), device=x.device)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    return x, conv_state, weight, bias


def _causal_conv1d_update_torch(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
) -> torch.Tensor:
    cdt = torch.float64 if torch.float64 in (x.dtype, weight.dtype, conv_state.dtype) else torch.float32
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    out = (cast(conv_state, cdt) * cast(weight, cdt)).sum(-1)  # (b, d)
    if bias is not None:
        out = out + cast(bias, cdt)
    if activation == "silu":
        out = F.silu(out)
    return cast(out, x.dtype)


def causal_conv1d_update_ref(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """One decoding step in plain PyTorch. x: (batch, dim); conv_state: (batch, dim, width), the last `width` inputs,
    oldest first, rolled in place to take x (rounded to conv_state's dtype); weight: (dim, width) or (dim, 1, width);
    bias: (dim,). Sums in fp32 (fp64 for fp64 inputs). Returns (batch, dim) in x's dtype, equal to the last output of
    `causal_conv1d` over the same history."""
    return _causal_conv1d_update_torch(*_check_conv_update(x, conv_state, weight, bias, activation), activation)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """One decoding step; same contract as `causal_conv1d_update_ref`, one Triton kernel on CUDA tensors (roll,
    taps, bias and activation together)."""
    x, conv_state, weight, bias = _check_conv_update(x, conv_state, weight, bias, activation)
    if backend(x) == "triton":
        from .conv_update_triton import causal_conv1d_update_triton

        return causal_conv1d_update_triton(x, conv_state, weight, bias, activation)
    return _causal_conv1d_update_torch(x, conv_state, weight, bias, activation)
