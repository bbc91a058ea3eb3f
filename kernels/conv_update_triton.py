"""One decoding step of the depthwise causal conv in Triton: the window rolls in place and takes the new input.

Dimensions: b batch, d dim (channels), w width (taps). One program per (batch row, BLOCK_D channels) holds the
(BLOCK_D, w) window:
    window = [state[1:], x];  state = window;  out = bias + sum_k weight[k] window[k], then silu when asked
Each program reads the old window before it writes the new one, and no two programs share a channel, so the roll
needs no second buffer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .scan_triton import _empty

# channels per program; None picks by size (tests set a small value to cross block boundaries)
BLOCK_D: int | None = None


@triton.jit
def _conv_update_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr, dim, W,
                        s_x_b, s_x_d, s_st_b, s_st_d, s_st_w, s_w_d, s_w_w, s_out_b,
                        HAS_BIAS: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_w = tl.arange(0, BLOCK_W)
    d_ok = offs_d < dim
    row = state_ptr + pid_b * s_st_b + offs_d.to(tl.int64)[:, None] * s_st_d  # (BLOCK_D, 1) window starts
    older = tl.load(row + (offs_w[None, :] + 1) * s_st_w, mask=d_ok[:, None] & (offs_w[None, :] + 1 < W), other=0.0)
    # the new input is rounded to the window's dtype before it is used, as when it is stored and read back
    x = tl.load(x_ptr + pid_b * s_x_b + offs_d * s_x_d, mask=d_ok, other=0.0).to(state_ptr.dtype.element_ty)
    window = tl.where(offs_w[None, :] == W - 1, x[:, None], older)  # (BLOCK_D, BLOCK_W), oldest first
    w_ok = d_ok[:, None] & (offs_w[None, :] < W)
    tl.store(row + offs_w[None, :] * s_st_w, window, mask=w_ok)
    taps = tl.load(w_ptr + offs_d[:, None] * s_w_d + offs_w[None, :] * s_w_w, mask=w_ok, other=0.0).to(ACC)
    out = tl.sum(window.to(ACC) * taps, axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0).to(ACC)
    if SILU:
        out = out / (1.0 + tl.exp(-out))
    tl.store(out_ptr + pid_b * s_out_b + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


def causal_conv1d_update_triton(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """One conv step through Triton (inputs validated by `causal_conv1d_update`). x: (batch, dim), any strides;
    conv_state: (batch, dim, width), any strides, rolled in place; weight: (dim, width); bias: (dim,).
    Returns (batch, dim) in x's dtype."""
    batch, dim = x.shape
    width = weight.shape[1]
    fp64 = torch.float64 in (x.dtype, conv_state.dtype, weight.dtype)
    out = _empty((batch, dim), x.dtype, x.device)
    if batch == 0 or dim == 0:
        return out
    block_d = BLOCK_D or max(16, min(64, triton.next_power_of_2(dim)))
    grid = (batch, triton.cdiv(dim, block_d))
    _conv_update_kernel[grid](
        x, conv_state, weight, bias if bias is not None else weight, out, dim, width,
        x.stride(0), x.stride(1), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        weight.stride(0), weight.stride(1), out.stride(0),
        HAS_BIAS=bias is not None, SILU=activation == "silu", ACC=tl.float64 if fp64 else tl.float32,
        BLOCK_D=block_d, BLOCK_W=max(2, triton.next_power_of_2(width)), num_warps=1 if block_d <= 64 else 4,
    )
    return out
