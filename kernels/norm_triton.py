"""Fused residual add + RMSNorm in Triton, forward and backward (autograd Function).

s = x + residual (fp32),  out = s * rstd * weight,  rstd = 1 / sqrt(mean(s^2) + eps), one program per block of rows.
Backward: ds = rstd (w dout - s_hat mean(s_hat w dout)) + d(residual_out), s_hat = s rstd; dweight from per-program
partial sums reduced by torch.sum (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .scan_triton import _empty


@triton.jit
def _rms_fwd_kernel(x_ptr, res_ptr, w_ptr, out_ptr, resout_ptr, rstd_ptr, n_rows, H, eps,
                    HAS_RES: tl.constexpr, STORE_RES: tl.constexpr, ACC: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    ok = cols < H
    s = tl.load(x_ptr + row * H + cols, mask=ok, other=0.0).to(ACC)
    if HAS_RES:
        s += tl.load(res_ptr + row * H + cols, mask=ok, other=0.0).to(ACC)
    if STORE_RES:
        tl.store(resout_ptr + row * H + cols, s.to(resout_ptr.dtype.element_ty), mask=ok)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=0) / H + eps)
    tl.store(rstd_ptr + row, rstd)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(ACC)
    tl.store(out_ptr + row * H + cols, (s * rstd * w).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _rms_bwd_kernel(x_ptr, res_ptr, w_ptr, rstd_ptr, dout_ptr, dres_out_ptr, dx_ptr, dres_ptr, dwp_ptr,
                    n_rows, H, rows_per_prog,
                    HAS_RES: tl.constexpr, HAS_DRES_OUT: tl.constexpr, STORE_DRES: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_H: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)
    ok = cols < H
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(ACC)
    dw = tl.zeros([BLOCK_H], dtype=ACC)
    for i in range(rows_per_prog):
        row = (pid * rows_per_prog + i).to(tl.int64)
        if row < n_rows:
            s = tl.load(x_ptr + row * H + cols, mask=ok, other=0.0).to(ACC)
            if HAS_RES:
                s += tl.load(res_ptr + row * H + cols, mask=ok, other=0.0).to(ACC)
            rstd = tl.load(rstd_ptr + row).to(ACC)
            s_hat = s * rstd
            dout = tl.load(dout_ptr + row * H + cols, mask=ok, other=0.0).to(ACC)
            dw += dout * s_hat
            wd = w * dout
            ds = rstd * (wd - s_hat * (tl.sum(s_hat * wd, axis=0) / H))
            if HAS_DRES_OUT:
                ds += tl.load(dres_out_ptr + row * H + cols, mask=ok, other=0.0).to(ACC)
            tl.store(dx_ptr + row * H + cols, ds.to(dx_ptr.dtype.element_ty), mask=ok)
            if STORE_DRES:
                tl.store(dres_ptr + row * H + cols, ds.to(dres_ptr.dtype.element_ty), mask=ok)
    tl.store(dwp_ptr + pid * H + cols, dw, mask=ok)


def _acc(*ts) -> tuple[tl.dtype, torch.dtype]:
    if any(t is not None and t.dtype == torch.float64 for t in ts):
        return tl.float64, torch.float64
    return tl.float32, torch.float32


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, residual, eps, prenorm, residual_in_fp32):
        H = x.shape[-1]
        x2 = x.reshape(-1, H).contiguous()
        res2 = residual.reshape(-1, H).contiguous() if residual is not None else None
        n_rows = x2.shape[0]
        acc, f = _acc(x, weight, residual)
        out = _empty(x2.shape, x2.dtype, x2.device)
        res_dtype = torch.promote_types(torch.float32, x.dtype) if residual_in_fp32 else x.dtype
        resout = _empty((n_rows, H), res_dtype, x.device) if prenorm else out
        rstd = _empty((n_rows,), f, x.device)
        if n_rows:
            _rms_fwd_kernel[(n_rows,)](
                x2, res2 if res2 is not None else x2, weight, out, resout, rstd, n_rows, H, eps,
                HAS_RES=res2 is not None, STORE_RES=prenorm, ACC=acc, BLOCK_H=triton.next_power_of_2(H),
                num_warps=4 if H <= 4096 else 8,
            )
        ctx.save_for_backward(x2, res2, weight, rstd)
        ctx.meta = (x.shape, residual.dtype if residual is not None else None, acc, f)
        out = out.view(x.shape)
        if prenorm:
            return out, resout.view(x.shape)
        return out

    @staticmethod
    def backward(ctx, dout, dres_out=None):
        x2, res2, weight, rstd = ctx.saved_tensors
        shape, res_dtype, acc, f = ctx.meta
        H = x2.shape[1]
        n_rows = x2.shape[0]
        dout = dout.reshape(-1, H).contiguous()
        dres_out = dres_out.reshape(-1, H).contiguous() if dres_out is not None else None
        dx = _empty(x2.shape, x2.dtype, x2.device)
        store_dres = res2 is not None  # its own buffer: the two gradients must not alias
        dres = _empty((n_rows, H), res_dtype, x2.device) if store_dres else dx
        n_prog = max(1, min(n_rows, 4 * _sm_count(x2.device)))
        rows_per_prog = triton.cdiv(max(n_rows, 1), n_prog)
        dwp = _empty((n_prog, H), f, x2.device)
        _rms_bwd_kernel[(n_prog,)](
            x2, res2 if res2 is not None else x2, weight, rstd, dout, dres_out if dres_out is not None else dout,
            dx, dres, dwp, n_rows, H, rows_per_prog,
            HAS_RES=res2 is not None, HAS_DRES_OUT=dres_out is not None, STORE_DRES=store_dres, ACC=acc,
            BLOCK_H=triton.next_power_of_2(H), num_warps=4 if H <= 4096 else 8,
        )
        dw = dwp.sum(0).to(weight.dtype)
        dres_grad = None
        if res2 is not None:
            dres_grad = (dres if store_dres else dx).view(shape)
        return dx.view(shape), dw, dres_grad, None, None, None


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


def rms_norm_triton(x, weight, eps=1e-5, residual=None, prenorm=False, residual_in_fp32=False):
    """RMSNorm over the last dim of x (+ residual) through Triton (inputs validated by `rms_norm`).
    x, residual: (..., hidden); weight: (hidden,). Returns out in x's dtype; with prenorm also x + residual, fp32 when
    residual_in_fp32 else x's dtype."""
    return _RMSNorm.apply(x, weight, residual, float(eps), bool(prenorm), bool(residual_in_fp32))
