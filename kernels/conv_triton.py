"""Depthwise causal 1-D convolution in Triton, forward and backward (autograd Function).

Dimensions: b batch, d dim (channels), l L (time), w width (taps).
Causal: o_t = bias + sum_k weight[k] x[t - (w-1) + k]; anti-causal (reverse): o_t = bias + sum_k weight[k]
x[t + (w-1) - k]; out = silu(o) when activation == "silu". Padded inputs (mask False) count as 0, padded outputs are 0.

Backward: g = dout silu'(o) (o recomputed), dx = the opposite-direction conv of g with the same taps, dweight and dbias
from per-tile partial sums reduced by torch.sum (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .scan_triton import _empty

BLOCK_D = 16
BLOCK_T = 128


@triton.jit
def _conv_tile(x_row, w_ptr, offs_d, d_ok, offs_t, L, mask_row,
               W: tl.constexpr, REVERSE: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=ACC)
    for k in tl.static_range(W):
        if REVERSE:
            src = offs_t + (W - 1) - k
        else:
            src = offs_t - (W - 1) + k
        ok = (src >= 0) & (src < L)
        if HAS_MASK:
            ok = ok & (tl.load(mask_row + src, mask=ok, other=0) != 0)
        xk = tl.load(x_row + src[None, :], mask=d_ok[:, None] & ok[None, :], other=0.0).to(ACC)
        wk = tl.load(w_ptr + offs_d * W + k, mask=d_ok, other=0.0).to(ACC)
        acc += wk[:, None] * xk
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, mask_ptr, out_ptr, dim, L, s_x_b, s_x_d, s_m_b,
                     W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, HAS_MASK: tl.constexpr,
                     REVERSE: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    d_ok = offs_d < dim
    t_ok = offs_t < L
    x_row = x_ptr + pid_b * s_x_b + offs_d.to(tl.int64)[:, None] * s_x_d
    mask_row = mask_ptr + pid_b * s_m_b
    acc = _conv_tile(x_row, w_ptr, offs_d, d_ok, offs_t, L, mask_row, W, REVERSE, HAS_MASK, ACC, BLOCK_D, BLOCK_T)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0).to(ACC)[:, None]
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    keep = d_ok[:, None] & t_ok[None, :]
    if HAS_MASK:
        real = tl.load(mask_row + offs_t, mask=t_ok, other=0) != 0
        acc = tl.where(real[None, :], acc, 0.0)
    out_offs = (pid_b * dim + offs_d.to(tl.int64))[:, None] * L + offs_t[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=keep)


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, bias_ptr, mask_ptr, dout_ptr, g_ptr, dwp_ptr, dbp_ptr,
                     dim, L, n_tblocks, s_x_b, s_x_d, s_m_b, s_do_b, s_do_d,
                     W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, HAS_MASK: tl.constexpr,
                     REVERSE: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """g = dout * silu'(o) (the gradient of the pre-activation), and per-tile partials of dweight and dbias."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(2)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    d_ok = offs_d < dim
    t_ok = offs_t < L
    keep = d_ok[:, None] & t_ok[None, :]
    x_row = x_ptr + pid_b * s_x_b + offs_d.to(tl.int64)[:, None] * s_x_d
    mask_row = mask_ptr + pid_b * s_m_b
    real = t_ok
    if HAS_MASK:
        real = real & (tl.load(mask_row + offs_t, mask=t_ok, other=0) != 0)
    g = tl.load(dout_ptr + pid_b * s_do_b + offs_d.to(tl.int64)[:, None] * s_do_d + offs_t[None, :],
                mask=d_ok[:, None] & real[None, :], other=0.0).to(ACC)
    if SILU:
        o = _conv_tile(x_row, w_ptr, offs_d, d_ok, offs_t, L, mask_row, W, REVERSE, HAS_MASK, ACC, BLOCK_D, BLOCK_T)
        if HAS_BIAS:
            o += tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0).to(ACC)[:, None]
        sig = 1.0 / (1.0 + tl.exp(-o))
        g = g * sig * (1.0 + o * (1.0 - sig))
    g_offs = (pid_b * dim + offs_d.to(tl.int64))[:, None] * L + offs_t[None, :]
    tl.store(g_ptr + g_offs, g.to(g_ptr.dtype.element_ty), mask=keep)
    part = (pid_b * n_tblocks + pid_t) * dim + offs_d
    for k in tl.static_range(W):
        if REVERSE:
            src = offs_t + (W - 1) - k
        else:
            src = offs_t - (W - 1) + k
        ok = (src >= 0) & (src < L)
        if HAS_MASK:
            ok = ok & (tl.load(mask_row + src, mask=ok, other=0) != 0)
        xk = tl.load(x_row + src[None, :], mask=d_ok[:, None] & ok[None, :], other=0.0).to(ACC)
        tl.store(dwp_ptr + part * W + k, tl.sum(g * xk, axis=1), mask=d_ok)
    if HAS_BIAS:
        tl.store(dbp_ptr + part, tl.sum(g, axis=1), mask=d_ok)


def _acc_dtype(*ts: torch.Tensor) -> tl.dtype:
    return tl.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else tl.float32


def conv_fwd(x, weight, bias, activation, mask, reverse, out_dtype=None) -> torch.Tensor:
    """x: (b, d, l) with unit stride along l; weight: (d, w) contiguous. Returns (b, d, l) contiguous."""
    batch, dim, L = x.shape
    out = _empty((batch, dim, L), out_dtype or x.dtype, x.device)
    mk = mask.view(torch.uint8) if mask is not None else x
    grid = (batch, triton.cdiv(dim, BLOCK_D), triton.cdiv(L, BLOCK_T))
    _conv_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, mk, out, dim, L, x.stride(0), x.stride(1),
        mk.stride(0) if mask is not None else 0,
        W=weight.shape[1], HAS_BIAS=bias is not None, SILU=activation == "silu", HAS_MASK=mask is not None,
        REVERSE=bool(reverse), ACC=_acc_dtype(x, weight), BLOCK_D=BLOCK_D, BLOCK_T=BLOCK_T,
    )
    return out


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mask, activation, reverse):
        w = weight.contiguous()
        ctx.save_for_backward(x, w, bias, mask)
        ctx.meta = (activation, reverse, weight.dtype)
        return conv_fwd(x, w, bias, activation, mask, reverse)

    @staticmethod
    def backward(ctx, dout):
        x, w, bias, mask = ctx.saved_tensors
        activation, reverse, w_dtype = ctx.meta
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        batch, dim, L = x.shape
        W = w.shape[1]
        acc = _acc_dtype(x, w)
        f = torch.float64 if acc == tl.float64 else torch.float32
        n_tblocks = triton.cdiv(L, BLOCK_T)
        g = _empty((batch, dim, L), f, x.device)
        dwp = _empty((batch * n_tblocks, dim, W), f, x.device)
        dbp = _empty((batch * n_tblocks, dim), f, x.device) if bias is not None else dwp
        mk = mask.view(torch.uint8) if mask is not None else x
        grid = (batch, triton.cdiv(dim, BLOCK_D), n_tblocks)
        _conv_bwd_kernel[grid](
            x, w, bias if bias is not None else w, mk, dout, g, dwp, dbp,
            dim, L, n_tblocks, x.stride(0), x.stride(1), mk.stride(0) if mask is not None else 0,
            dout.stride(0), dout.stride(1),
            W=W, HAS_BIAS=bias is not None, SILU=activation == "silu", HAS_MASK=mask is not None,
            REVERSE=bool(reverse), ACC=acc, BLOCK_D=BLOCK_D, BLOCK_T=BLOCK_T,
        )
        # dx_s = sum_k w_k g_{s + (w-1) - k}: the opposite-direction conv of g; its mask zeroes padded steps, whose
        # inputs were replaced by 0 and get no gradient
        dx = conv_fwd(g, w, None, None, mask, not reverse, out_dtype=x.dtype) if ctx.needs_input_grad[0] else None
        dw = dwp.sum(0).to(w_dtype)
        db = dbp.sum(0).to(bias.dtype) if bias is not None else None
        return dx, dw, db, None, None, None


def causal_conv1d_triton(x, weight, bias=None, activation=None, mask=None, reverse=False):
    """Depthwise causal conv through Triton (inputs validated by `causal_conv1d`). x: (batch, dim, L);
    weight: (dim, width); bias: (dim,); activation None or "silu"; mask: bool (batch, L).
    Returns (batch, dim, L) in x's dtype."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if mask is not None:
        mask = mask.contiguous()
    return _CausalConv1d.apply(x, weight, bias, mask, activation, bool(reverse))
