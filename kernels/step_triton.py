"""One decoding step of the selective scan in Triton, the state updated in place.

Dimensions: b batch, d dim (channels), n N (states), g groups of B/C, r R (dt rank). One program per (batch row,
BLOCK_D channels) holds a (BLOCK_D, N) tile of the fp32 state:
    dt = softplus(dt + dt_bias);  state = exp(dt A) state + dt B x;  out = (C . state + D x) * silu(z)
The fused form (a Mamba layer's step) also takes dt in low rank, dt = W dt_low with W (d, r) the dt_proj weight, and
A as A_log (A = -exp(A_log)), so the projection, the exp and the casts cost no kernels of their own.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .scan_triton import _empty

# channels per program; None picks by size and device (tests set a small value to cross block boundaries)
BLOCK_D: int | None = None


@triton.jit
def _step_kernel(state_ptr, x_ptr, dt_ptr, W_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
                 dim, N, R, dim_per_group,
                 s_st_b, s_st_d, s_st_n, s_x_b, s_dt_b, s_W_d, s_z_b, s_B_b, s_B_g, s_C_b, s_C_g,
                 HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                 DT_PROJ: tl.constexpr, A_LOG: tl.constexpr,
                 ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
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
    if DT_PROJ:
        # dt = W @ dt_low for this block of channels, rounded to the inputs' dtype as a separate matmul would be
        offs_r = tl.arange(0, BLOCK_R)
        r_ok = offs_r < R
        dt_low = tl.load(dt_ptr + pid_b * s_dt_b + offs_r, mask=r_ok, other=0.0).to(ACC)
        W = tl.load(W_ptr + offs_d.to(tl.int64)[:, None] * s_W_d + offs_r[None, :],
                    mask=d_ok[:, None] & r_ok[None, :], other=0.0).to(ACC)
        dt = tl.sum(W * dt_low[None, :], axis=1).to(dt_ptr.dtype.element_ty).to(ACC)
    else:
        dt = tl.load(dt_ptr + pid_b * s_dt_b + offs_d, mask=d_ok, other=0.0).to(ACC)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0).to(ACC)
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=ok, other=0.0).to(ACC)
    if A_LOG:
        A = -tl.exp(A)  # A = -exp(A_log), formed here rather than by a kernel of its own every step
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


@functools.cache
def _sm_count(device_type: str, index: int | None) -> int:
    if device_type != "cuda":
        return 1
    return torch.cuda.get_device_properties(index).multi_processor_count


def _block_d(batch: int, dim: int, block_n: int, block_r: int, device: torch.device) -> int:
    """Channels per program: the largest power of two up to 2048 / N state elements (and 4096 / R dt_proj weights)
    that still gives every SM two programs (batch 1 decoding has few rows, so smaller blocks spread the work), but at
    least 16."""
    if BLOCK_D is not None:
        return BLOCK_D
    block_d = max(1, min(triton.next_power_of_2(dim), 2048 // block_n, 4096 // block_r))
    want = 2 * _sm_count(device.type, device.index)
    while block_d > 16 and batch * triton.cdiv(dim, block_d) < want:
        block_d //= 2
    return block_d


def _launch(state, x, dt, W, A, B, C, D, z, dt_bias, dt_softplus, a_log):
    batch, dim, N = state.shape
    groups = B.shape[1]
    acc = tl.float64 if torch.float64 in (state.dtype, x.dtype, A.dtype) else tl.float32
    A = A.contiguous()
    x, dt, B, C = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, dt, B, C))
    z, W = (t if t is None or t.stride(-1) == 1 else t.contiguous() for t in (z, W))
    D, dt_bias = (t if t is None else t.contiguous() for t in (D, dt_bias))
    out = _empty((batch, dim), x.dtype, x.device)
    if batch == 0 or dim == 0:
        return out
    block_n = triton.next_power_of_2(N)
    rank = 1 if W is None else W.shape[1]
    block_r = triton.next_power_of_2(rank)
    block_d = _block_d(batch, dim, block_n, block_r, state.device)
    tile = block_d * max(block_n, block_r)
    grid = (batch, triton.cdiv(dim, block_d))
    zt = z if z is not None else x
    _step_kernel[grid](
        state, x, dt, W if W is not None else A, A, B, C, D if D is not None else A, zt,
        dt_bias if dt_bias is not None else A, out,
        dim, N, rank, dim // groups,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), dt.stride(0),
        W.stride(0) if W is not None else 0, zt.stride(0), B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        DT_PROJ=W is not None, A_LOG=bool(a_log), ACC=acc, BLOCK_D=block_d, BLOCK_N=block_n,
        BLOCK_R=block_r, num_warps=1 if tile <= 256 else (2 if tile <= 1024 else 4),
    )
    return out


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decoding step through Triton (inputs validated by `selective_state_update`). state: (batch, dim, N),
    updated in place; x, dt, z: (batch, dim); A: (dim, N); B, C: (batch, groups, N); D, dt_bias: (dim,).
    Returns (batch, dim) in x's dtype."""
    return _launch(state, x, dt, None, A, B, C, D, z, dt_bias, dt_softplus, a_log=False)


def selective_state_update_fused_triton(state, x, dt_low, dt_weight, A_log, B, C, D=None, z=None, dt_bias=None,
                                        dt_softplus=False):
    """The layer's whole SSM step in one kernel (inputs validated by `selective_state_update_fused`): dt = dt_low @
    dt_weight^T, then the state update with A = -exp(A_log), D skip and silu(z) gate. state: (batch, dim, N), updated
    in place; x, z: (batch, dim); dt_low: (batch, R); dt_weight: (dim, R); A_log: (dim, N); B, C: (batch, groups, N);
    D, dt_bias: (dim,). Any row strides (slices of a projection's output are read where they lie).
    Returns (batch, dim) in x's dtype."""
    return _launch(state, x, dt_low, dt_weight, A_log, B, C, D, z, dt_bias, dt_softplus, a_log=True)
