"""One decoding step of the selective scan in Triton, the state updated in place.

Dimensions: b batch, d dim (channels), n N (states), g groups of B/C. One program per (batch row, BLOCK_D channels)
holds a (BLOCK_D, N) tile of the fp32 state:
    dt = softplus(dt + dt_bias);  state = exp(dt A) state + dt B x;  out = (C . state + D x) * silu(z)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .scan_triton import _empty


@triton.jit
def _step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
                 dim, N, dim_per_group,
                 s_st_b, s_st_d, s_st_n, s_x_b, s_dt_b, s_z_b, s_B_b, s_B_g, s_C_b, s_C_g,
                 HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                 ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < dim
    n_ok = offs_n < N
    ok = d_ok[:, None] & n_ok[None, :]
    grp = (offs_d // dim_per_group).to(tl.int64)
    st_offs = pid_b * s_st_b + offs_d.to(tl.int64)[:, None] * s_st_d + offs_n[None, :] * s_st_n
    h = tl.load(state_ptr + st_offs, mask=ok, other=0.0).to(ACC)
    x = tl.load(x_ptr + pid_b * s_x_b + offs_d, mask=d_ok, other=0.0).to(ACC)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + offs_d, mask=d_ok, other=0.0).to(ACC)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0).to(ACC)
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=ok, other=0.0).to(ACC)
    Bm = tl.load(B_ptr + pid_b * s_B_b + grp[:, None] * s_B_g + offs_n[None, :], mask=ok, other=0.0).to(ACC)
    Cm = tl.load(C_ptr + pid_b * s_C_b + grp[:, None] * s_C_g + offs_n[None, :], mask=ok, other=0.0).to(ACC)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bm
    tl.store(state_ptr + st_offs, h.to(state_ptr.dtype.element_ty), mask=ok)
    out = tl.sum(h * Cm, axis=1)
    if HAS_D:
        out += tl.load(D_ptr + offs_d, mask=d_ok, other=0.0).to(ACC) * x
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * s_z_b + offs_d, mask=d_ok, other=0.0).to(ACC)
        out = out * z / (1.0 + tl.exp(-z))
    tl.store(out_ptr + pid_b * dim + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decoding step through Triton (inputs validated by `selective_state_update`). state: (batch, dim, N),
    updated in place; x, dt, z: (batch, dim); A: (dim, N); B, C: (batch, groups, N); D, dt_bias: (dim,).
    Returns (batch, dim) in x's dtype."""
    batch, dim, N = state.shape
    groups = B.shape[1]
    acc = tl.float64 if torch.float64 in (state.dtype, x.dtype, A.dtype) else tl.float32
    A = A.contiguous()
    x, dt = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, dt))
    z = z if z is None or z.stride(-1) == 1 else z.contiguous()
    B, C = (t if t.stride(-1) == 1 else t.contiguous() for t in (B, C))
    out = _empty((batch, dim), x.dtype, x.device)
    block_n = triton.next_power_of_2(N)
    block_d = max(1, min(triton.next_power_of_2(dim), 2048 // block_n))
    grid = (batch, triton.cdiv(dim, block_d))
    zt = z if z is not None else x
    _step_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else A, zt, dt_bias if dt_bias is not None else A, out,
        dim, N, dim // groups,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), dt.stride(0), zt.stride(0),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        ACC=acc, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=4,
    )
    return out
