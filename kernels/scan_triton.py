"""Selective scan in Triton: chunked forward and backward kernels and their autograd Function.

Dimensions: b batch, d dim (channels), n N (states), l L (time), g groups of B/C, c chunks of BLOCK_T steps.

The default kernels are the sequential ones of `scan_seq_triton` (one channel per thread, time split into segments
so that enough warps run; the launchers are `_seq_fwd` and the sequential branch of `scan_bwd`). This module keeps
the tile kernels built on `tl.associative_scan` (faster only for small batch x dim when segments are off), the
launchers, the tile choice and the autograd Function.

The associative-scan kernels: one program owns (one batch row, BLOCK_D channels) and walks over L in chunks of BLOCK_T steps, in scan order.
Per chunk it loads (BLOCK_D, BLOCK_T) tiles of u, delta, z once, computes softplus and delta * u once per element,
then for each state n (a static loop) runs `tl.associative_scan` along time on (exp2(delta A_n log2 e), delta u B_n),
with the state entering the chunk folded into the first step, and accumulates y += h C_n. The state lives in
registers as a (BLOCK_D, N) fp32 tile between chunks; nothing per step is written to memory.

The forward saves the state entering each chunk, (b, c, d, n) fp32; the backward walks the chunks in the opposite
order, recomputes the chunk's states from that saved state, and runs the adjoint scan
g_t = a_{t+1} g_{t+1} + dy_t C_t (a_{t+1} from a shifted load of delta, so no register shift is needed). The term
a_t h_{t-1} equals h_t - b_t, which gives dA and ddelta without the previous state. dB and dC are written as partial
sums per channel block and reduced by `torch.sum`, so the backward is deterministic (no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# Tile configuration (BLOCK_D, BLOCK_T, num_warps); None picks by shape (`fwd_config`, `bwd_config`).
FWD_CONFIG: tuple[int, int, int] | None = None
BWD_CONFIG: tuple[int, int, int] | None = None


def fwd_config(batch: int, dim: int, L: int, training: bool = False) -> tuple[int, int, int]:
    """Forward tiles, chosen from H200 measurements (BENCHMARKS.md). BLOCK_T = 0 selects the sequential kernel
    (scan_seq_triton: one channel per thread, one warp per program), split into time segments until enough warps
    run; without segments, wide time tiles of the associative-scan kernel serve small batch x dim better."""
    if FWD_CONFIG is not None:
        return FWD_CONFIG
    if batch * dim >= 8192 or FWD_SEGMENTS:
        return (32, 0, 1)
    return (16, 64, 4) if training else (2, 512, 4)


# register-chunk length of the sequential backward kernel; 0 selects the tl.associative_scan backward kernel
BWD_SEQ_TR = 4
# the sequential backward splits time into groups until about this many warps run (a pass for each group's own
# adjoint sum, a chaining kernel, then the main pass per group); BWD_SHFL reduces dB / dC with warp shuffles
BWD_SEGMENTS = True
BWD_SEG_TARGET_WARPS = 4224
BWD_SHFL = True
# code shape of the sequential backward kernels (scan_seq_triton.BWD_VARIANTS): "chain" walks the 16 states' B / C rows
# with a pointer advanced by a stride the compiler cannot trace, so that it does not hoist 48 row pointers out of the
# time loop (sm_90, triton 3.6 offline: main backward 168 registers and no spills against 255 and 6 spills, 9% fewer
# instructions; the group pass 96 registers against 128); "base" is the former shape; "lean" (main backward) also
# keeps A log2 e in scratch memory and runs phase 1 state by state: 168 registers as well, but with no spills down to
# 144 and 10 spills (3 loads per register chunk) at 128, against 24 for "chain"; "fuse" and "ilp" (phase 2 with one
# instruction fewer per step and state; ilp also interleaves states in pairs) compile to 255 registers uncapped, 168
# with no spills under BWD_MAXNREG = 168 (sm_90 offline; the commit that added them has the instruction counts);
# "ilpp" also loads the next group of states' B / C rows and the next register chunk's inputs ahead. Default: "ilpp"
# with the cap at 168, fp32 B / C and the FMA-unit exp2 on 1 state of 16: on the H200 (2026-11-29, (8, 1536, 4096),
# bf16) the backward alone took 3,514 us against 4,176 for "chain" with the same fp32 B / C and exp2 split, forward +
# backward 4,325 us against 4,973 (BENCHMARKS.md)
BWD_VARIANT = "ilpp"
# states, in sixteenths of N, whose exp2 the group pass (`bwd_local_kernel`) computes on the FMA units
# (scan_seq_triton._exp2_fma, 10 instructions for one MUFU) to relieve the MUFU: 0 = none, 4 = 4 of 16. The MUFU does
# 1/8 of the FMA units' rate; sm_90 offline, per register chunk of 4 steps x 16 states the group pass issues 617
# instructions with 76 MUFU (608 MUFU cycles): balanced already with bf16 B / C, so this pays only with BWD_BC_FP32
# (537 instructions; the balance is near 1 state of 16)
BWD_LOCAL_SW_EXP2 = 1
# the sequential backward reads fp32 copies of B and C, made once per call ((b, g, N, L): 1/48 of u's bytes per group
# at N = 16), so that its kernels skip unpacking bf16, one integer instruction per value in every register chunk.
# sm_90 offline, instructions per register chunk: group pass 617 -> 537 (96 -> 110 registers); main backward phase 1
# 585 -> 503, phase 2 2,099 -> 1,942 ("chain", 168 registers but 24 bytes of spills), 2,074 -> 1,887 ("ilp" capped
# at 168: no spills)
BWD_BC_FP32 = True
# register cap (ptxas maxnreg) of the main backward kernel, None for the compiler's choice; one warp per program, so
# 65536 / (32 x registers) warps fit on an SM: 168 -> 12, 144 -> 14, 128 -> 16 (with a few spills at 128)
BWD_MAXNREG: int | None = 168


def bwd_config(batch: int, dim: int, L: int) -> tuple[int, int, int]:
    """Backward (BLOCK_D, chunk length, num_warps); the forward saves the state entering each chunk. With the
    sequential kernel: one channel per thread, chunks of BLOCK_T / BWD_SEQ_TR register chunks."""
    if BWD_CONFIG is not None:
        return BWD_CONFIG
    return (32, 64, 1) if BWD_SEQ_TR else (16, 64, 4)


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # log(1 + e^x) for x <= 20, x above (as upstream); exp/log2 forms keep it to two special functions.
    return tl.where(x <= 20.0, tl.log2(1.0 + tl.exp2(x * 1.4426950408889634)) * 0.6931471805599453, x)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, mask_ptr, h0_ptr,
    out_ptr, hlast_ptr, hsave_ptr,
    dim, L, n_chunks, dim_per_group,
    s_u_b, s_u_d, s_dl_b, s_dl_d, s_z_b, s_z_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    s_o_b, s_o_d, s_m_b,
    N: tl.constexpr, N_P2: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_H0: tl.constexpr, SAVE_H: tl.constexpr,
    WRITE_LAST: tl.constexpr, SAVE_EVERY: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < dim
    offs_d64 = offs_d.to(tl.int64)
    # every channel of a block shares one B/C group (the wrapper picks BLOCK_D so)
    grp = ((pid_d * BLOCK_D) // dim_per_group).to(tl.int64)
    offs_n = tl.arange(0, N_P2)
    n_ok = offs_n < N
    loc = tl.arange(0, BLOCK_T)
    FIRST: tl.constexpr = BLOCK_T - 1 if REVERSE else 0
    LAST: tl.constexpr = 0 if REVERSE else BLOCK_T - 1
    is_first = (loc == FIRST)[None, :]
    is_last = (loc == LAST)[None, :]

    state_offs = (pid_b * dim + offs_d64)[:, None] * N + offs_n[None, :]
    dn_ok = d_ok[:, None] & n_ok[None, :]
    if HAS_H0:
        H = tl.load(h0_ptr + state_offs, mask=dn_ok, other=0.0).to(tl.float32)
    else:
        H = tl.zeros([BLOCK_D, N_P2], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)

    u_row = u_ptr + pid_b * s_u_b + offs_d64[:, None] * s_u_d
    dl_row = delta_ptr + pid_b * s_dl_b + offs_d64[:, None] * s_dl_d
    z_row = z_ptr + pid_b * s_z_b + offs_d64[:, None] * s_z_d
    o_row = out_ptr + pid_b * s_o_b + offs_d64[:, None] * s_o_d
    B_row = B_ptr + pid_b * s_B_b + grp * s_B_g
    C_row = C_ptr + pid_b * s_C_b + grp * s_C_g

    for ci in range(n_chunks):
        if REVERSE:
            c = n_chunks - 1 - ci
        else:
            c = ci
        if SAVE_H:
            # the state entering each backward chunk (SAVE_EVERY forward chunks); in reverse order a backward
            # chunk is entered at its last forward chunk (or at the sequence's last one)
            if REVERSE:
                do_save = ((c + 1) % SAVE_EVERY == 0) | (c == n_chunks - 1)
            else:
                do_save = c % SAVE_EVERY == 0
            if do_save:
                n_saved = (n_chunks + SAVE_EVERY - 1) // SAVE_EVERY
                save_offs = ((pid_b * n_saved + c // SAVE_EVERY) * dim + offs_d64)[:, None] * N + offs_n[None, :]
                tl.store(hsave_ptr + save_offs, H, mask=dn_ok)
        offs_t = c * BLOCK_T + loc
        t_ok = offs_t < L
        valid = t_ok
        if HAS_MASK:
            mk = tl.load(mask_ptr + pid_b * s_m_b + offs_t, mask=t_ok, other=0)
            valid = valid & (mk != 0)
        m2 = d_ok[:, None] & t_ok[None, :]
        ok2 = d_ok[:, None] & valid[None, :]
        u = tl.load(u_row + offs_t[None, :], mask=ok2, other=0.0).to(tl.float32)
        dt = tl.load(dl_row + offs_t[None, :], mask=ok2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        # padded and out-of-range steps: delta = 0 and u = 0, so the state passes untouched
        dt = tl.where(ok2, dt, 0.0)
        u = tl.where(ok2, u, 0.0)
        du = dt * u
        y = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        for n in range(N):
            A2n = tl.load(A_ptr + offs_d * N + n, mask=d_ok, other=0.0) * 1.4426950408889634
            # masked loads (not products) keep whatever padded steps hold, even inf or nan, out of the sums
            Bn = tl.load(B_row + n * s_B_n + offs_t, mask=valid, other=0.0).to(tl.float32)
            Cn = tl.load(C_row + n * s_C_n + offs_t, mask=valid, other=0.0).to(tl.float32)
            a = tl.exp2(dt * A2n[:, None])
            b = du * Bn[None, :]
            hn = tl.sum(tl.where(offs_n[None, :] == n, H, 0.0), axis=1)
            b = tl.where(is_first, a * hn[:, None] + b, b)
            _, h = tl.associative_scan((a, b), 1, _combine, reverse=REVERSE)
            y += h * Cn[None, :]
            h_end = tl.sum(tl.where(is_last, h, 0.0), axis=1)
            H = tl.where(offs_n[None, :] == n, h_end[:, None], H)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_row + offs_t[None, :], mask=ok2, other=0.0).to(tl.float32)
            y = y * zz / (1.0 + tl.exp2(-zz * 1.4426950408889634))
        y = tl.where(ok2, y, 0.0)
        tl.store(o_row + offs_t[None, :], y.to(out_ptr.dtype.element_ty), mask=m2)

    if WRITE_LAST:
        tl.store(hlast_ptr + state_offs, H, mask=dn_ok)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, mask_ptr, hsave_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dBp_ptr, dCp_ptr, dAp_ptr, dDp_ptr, dbiasp_ptr, dh0_ptr,
    dim, L, n_chunks, dim_per_group, n_dblocks,
    s_u_b, s_u_d, s_dl_b, s_dl_d, s_z_b, s_z_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    s_do_b, s_do_d, s_m_b,
    N: tl.constexpr, N_P2: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DLAST: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < dim
    offs_d64 = offs_d.to(tl.int64)
    grp = ((pid_d * BLOCK_D) // dim_per_group).to(tl.int64)
    offs_n = tl.arange(0, N_P2)
    n_ok = offs_n < N
    loc = tl.arange(0, BLOCK_T)
    # FIRST / LAST in the scan's own order
    FIRST: tl.constexpr = BLOCK_T - 1 if REVERSE else 0
    LAST: tl.constexpr = 0 if REVERSE else BLOCK_T - 1
    STEP: tl.constexpr = -1 if REVERSE else 1
    is_first = (loc == FIRST)[None, :]
    is_last = (loc == LAST)[None, :]

    state_offs = (pid_b * dim + offs_d64)[:, None] * N + offs_n[None, :]
    dn_ok = d_ok[:, None] & n_ok[None, :]
    # G: gradient flowing into the state that leaves the chunk (scan order), i.e. into h entering the next chunk
    if HAS_DLAST:
        G = tl.load(dlast_ptr + state_offs, mask=dn_ok, other=0.0).to(tl.float32)
    else:
        G = tl.zeros([BLOCK_D, N_P2], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_D, N_P2], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)

    u_row = u_ptr + pid_b * s_u_b + offs_d64[:, None] * s_u_d
    dl_row = delta_ptr + pid_b * s_dl_b + offs_d64[:, None] * s_dl_d
    z_row = z_ptr + pid_b * s_z_b + offs_d64[:, None] * s_z_d
    do_row = dout_ptr + pid_b * s_do_b + offs_d64[:, None] * s_do_d
    # gradient outputs are contiguous (b, d, l)
    g_row = (pid_b * dim + offs_d64)[:, None] * L
    B_row = B_ptr + pid_b * s_B_b + grp * s_B_g
    C_row = C_ptr + pid_b * s_C_b + grp * s_C_g
    part_row = (pid_b * n_dblocks + pid_d) * N * L

    for ci in range(n_chunks):
        # chunks in the opposite order of the forward scan
        if REVERSE:
            c = ci
        else:
            c = n_chunks - 1 - ci
        offs_t = c * BLOCK_T + loc
        t_ok = offs_t < L
        valid = t_ok
        if HAS_MASK:
            mk = tl.load(mask_ptr + pid_b * s_m_b + offs_t, mask=t_ok, other=0)
            valid = valid & (mk != 0)
        m2 = d_ok[:, None] & t_ok[None, :]
        ok2 = d_ok[:, None] & valid[None, :]
        u = tl.load(u_row + offs_t[None, :], mask=ok2, other=0.0).to(tl.float32)
        dt_raw = tl.load(dl_row + offs_t[None, :], mask=ok2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt_raw = dt_raw + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt_raw)
        else:
            dt = dt_raw
        dt = tl.where(ok2, dt, 0.0)
        u = tl.where(ok2, u, 0.0)
        du = dt * u
        # delta of the step after t in scan order (a_{t+1}); 0 outside [0, L) or on padded steps
        offs_s = offs_t + STEP
        s_ok = (offs_s >= 0) & (offs_s < L)
        s_valid = s_ok
        if HAS_MASK:
            mks = tl.load(mask_ptr + pid_b * s_m_b + offs_s, mask=s_ok, other=0)
            s_valid = s_valid & (mks != 0)
        ms2 = d_ok[:, None] & s_valid[None, :]
        dts = tl.load(dl_row + offs_s[None, :], mask=ms2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dts = dts + bias[:, None]
        if SOFTPLUS:
            dts = _softplus(dts)
        dts = tl.where(ms2, dts, 0.0)

        dout = tl.load(do_row + offs_t[None, :], mask=ok2, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_row + offs_t[None, :], mask=ok2, other=0.0).to(tl.float32)
            sig = 1.0 / (1.0 + tl.exp2(-zz * 1.4426950408889634))
            dy = dout * zz * sig
        else:
            dy = dout

        y = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        acc_gB = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        acc_dA = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        for n in range(N):
            An = tl.load(A_ptr + offs_d * N + n, mask=d_ok, other=0.0)
            A2n = An * 1.4426950408889634
            # masked loads (not products) keep whatever padded steps hold, even inf or nan, out of the sums
            Bn = tl.load(B_row + n * s_B_n + offs_t, mask=valid, other=0.0).to(tl.float32)
            Cn = tl.load(C_row + n * s_C_n + offs_t, mask=valid, other=0.0).to(tl.float32)
            # recompute the chunk's states from the saved state entering it
            hn = tl.load(hsave_ptr + ((pid_b * n_chunks + c) * dim + offs_d64) * N + n, mask=d_ok, other=0.0)
            a = tl.exp2(dt * A2n[:, None])
            b = du * Bn[None, :]
            b0 = tl.where(is_first, a * hn[:, None] + b, b)
            _, h = tl.associative_scan((a, b0), 1, _combine, reverse=REVERSE)
            y += h * Cn[None, :]
            # adjoint: g_t = a_{t+1} g_{t+1} + dy_t C_t, scanned against the forward order
            a_s = tl.exp2(dts * A2n[:, None])
            cc = dy * Cn[None, :]
            Gn = tl.sum(tl.where(offs_n[None, :] == n, G, 0.0), axis=1)
            cc = tl.where(is_last, cc + Gn[:, None], cc)
            _, g = tl.associative_scan((a_s, cc), 1, _combine, reverse=not REVERSE)
            G_new = tl.sum(tl.where(is_first, a * g, 0.0), axis=1)
            G = tl.where(offs_n[None, :] == n, G_new[:, None], G)
            # dB_t = sum_d g du, dC_t = sum_d dy h (partial over this channel block)
            dBn = tl.sum(g * du, axis=0)
            dCn = tl.sum(dy * h, axis=0)
            tl.store(dBp_ptr + part_row + n * L + offs_t, dBn, mask=t_ok)
            tl.store(dCp_ptr + part_row + n * L + offs_t, dCn, mask=t_ok)
            acc_gB += g * Bn[None, :]
            # a_t h_{t-1} = h_t - b_t
            hg = (h - b) * g
            acc_dA += hg * An[:, None]
            dA_n = tl.sum(hg * dt, axis=1)
            dA_acc = tl.where(offs_n[None, :] == n, dA_acc + dA_n[:, None], dA_acc)

        ddt = acc_gB * u + acc_dA
        dug = acc_gB * dt
        if HAS_D:
            dug += dy * Dv[:, None]
            dD_acc += tl.sum(dy * u, axis=1)
            y += Dv[:, None] * u
        if SOFTPLUS:
            ddt = ddt / (1.0 + tl.exp2(-dt_raw * 1.4426950408889634))
        ddt = tl.where(ok2, ddt, 0.0)
        dug = tl.where(ok2, dug, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + g_row + offs_t[None, :], dug.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddelta_ptr + g_row + offs_t[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
        if HAS_Z:
            dz = dout * y * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_ptr + g_row + offs_t[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m2)

    tl.store(dAp_ptr + state_offs, dA_acc, mask=dn_ok)
    tl.store(dh0_ptr + state_offs, G, mask=dn_ok)
    if HAS_D:
        tl.store(dDp_ptr + pid_b * dim + offs_d, dD_acc, mask=d_ok)
    if HAS_BIAS:
        tl.store(dbiasp_ptr + pid_b * dim + offs_d, dbias_acc, mask=d_ok)


# the compiled kernels launched last (their n_regs / n_spills are read by the benchmark)
LAST_KERNEL: dict = {}


def _block_d(dim: int, groups: int, want: int) -> int:
    """Largest power of two <= want such that each channel block lies inside one B/C group."""
    if groups == 1:
        return max(1, min(want, triton.next_power_of_2(dim)))
    per = dim // groups
    bd = 1
    while bd * 2 <= want and per % (bd * 2) == 0:
        bd *= 2
    return bd


def _last_contig(x: torch.Tensor | None) -> torch.Tensor | None:
    if x is None or x.stride(-1) == 1:
        return x
    return x.contiguous()


def _poison() -> bool:
    # tests set this to fill outputs with NaN before the kernels write them (unwritten elements then show)
    return _POISON[0]


_POISON = [False]


def _empty(shape, dtype, device) -> torch.Tensor:
    if _poison():
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, mask, initial_state, save_states,
             write_last, config=None, save_block_t=None):
    """Launch the forward kernel. Returns (out, last_state or None, states entering each backward chunk of
    save_block_t steps (b, chunks, d, n) or None)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    groups = B.shape[1]
    bd_want, block_t, num_warps = config or fwd_config(batch, dim, L, training=save_states)
    seq = block_t == 0  # the sequential kernel: one channel per thread, register chunks of TR steps
    if seq:
        block_t = 8 if u.element_size() <= 2 else 4
    save_every = 1
    if seq and FWD_BC_FP32:
        B, C = B.float(), C.float()
    if save_states:
        # the backward recomputes chunks of save_block_t steps from the states saved here
        save_block_t = save_block_t or bwd_config(batch, dim, L)[1]
        if save_block_t % block_t == 0:
            save_every = save_block_t // block_t
        else:
            seq, block_t = False, save_block_t
    block_d = _block_d(dim, groups, bd_want)
    n_chunks = triton.cdiv(L, block_t)
    dev = u.device
    out = _empty((batch, dim, L), u.dtype, dev)
    hlast = _empty((batch, dim, N), torch.float32, dev) if write_last else out
    hsave = _empty((batch, triton.cdiv(n_chunks, save_every), dim, N), torch.float32, dev) if save_states else out
    zt = z if z is not None else u
    mk = mask.view(torch.uint8) if mask is not None else u
    grid = (batch, triton.cdiv(dim, block_d))
    args = (
        u, delta, A, B, C, D if D is not None else A, zt, delta_bias if delta_bias is not None else A, mk,
        initial_state if initial_state is not None else A,
        out, hlast, hsave,
        dim, L, n_chunks, dim // groups,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zt.stride(0), zt.stride(1),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        out.stride(0), out.stride(1), mk.stride(0) if mask is not None else 0,
    )
    flags = dict(
        BLOCK_D=block_d, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), REVERSE=bool(reverse), HAS_MASK=mask is not None,
        HAS_H0=initial_state is not None, SAVE_H=save_states, WRITE_LAST=write_last, SAVE_EVERY=save_every,
        num_warps=num_warps,
    )
    if seq:
        _seq_fwd(args, flags, grid, N, block_t, n_chunks, A, initial_state, hlast, write_last, reverse)
    else:
        LAST_KERNEL["fwd"] = _scan_fwd_kernel[grid](
            *args, N=N, N_P2=triton.next_power_of_2(N), BLOCK_T=block_t, **flags)
    return out, (hlast if write_last else None), (hsave if save_states else None)


# the sequential forward splits L into segments until about this many warps run (32 per SM on an H200); a first pass
# finds each segment's own end state, a small kernel chains them, and the main pass starts each segment from its state
# (H200: 853 us against 955 us unsplit at (8, 1536, 4096), 3.3 ms against 29 ms at (1, 1536, 131072))
SEG_TARGET_WARPS = 4224
FWD_SEGMENTS = True
# code shape of the sequential forward kernel, as BWD_VARIANT (sm_90, triton 3.6 offline, bf16: main pass 167 registers
# and no spills against 255 and 2 spills, 5% fewer instructions; the segment pass 128 registers against 167)
FWD_VARIANT = "chain"
# the sequential forward reads fp32 copies of B and C (as BWD_BC_FP32). sm_90a offline, bf16: the main pass issues
# 1,668 instructions per register chunk of 8 steps x 16 states, 442 of them integer unpacking (SHF / PRMT), against
# 152 MUFU (1,216 MUFU cycles), so it is issue-bound; with fp32 B / C 1,402 instructions, but the 16 states' B / C
# tiles of 8 fp32 values take 255 registers and 84 bytes of spills (bf16: 167, none; the segment pass 182 against
# 128), so this would want 4-step register chunks or B / C loaded state by state
FWD_BC_FP32 = False


def _seq_fwd(args, flags, grid, N, block_t, n_chunks, A, initial_state, hlast, write_last, reverse):
    from .scan_seq_triton import _seg_combine_kernel, fwd_kernel

    kern = fwd_kernel(N, block_t, FWD_VARIANT)
    flags = {**flags, "PTX": A.device.type == "cuda"}
    batch, n_dblocks = grid
    dim = args[13]
    dev = A.device
    n_seg = 1
    if FWD_SEGMENTS:
        n_seg = max(1, min(n_chunks, triton.cdiv(SEG_TARGET_WARPS, batch * n_dblocks * flags["num_warps"])))
    per_seg = triton.cdiv(n_chunks, n_seg)
    n_seg = triton.cdiv(n_chunks, per_seg)
    if n_seg == 1:
        LAST_KERNEL["fwd"] = kern[(batch, n_dblocks, 1)](*args, A, n_chunks, LOCAL=False, **flags)
        return
    f32 = torch.float32
    S = torch.empty((batch, n_seg, dim, N), dtype=f32, device=dev)
    sdt = torch.empty((batch, n_seg, dim), dtype=f32, device=dev)
    init = torch.empty((batch, n_seg, dim, N), dtype=f32, device=dev)
    last = hlast if write_last else torch.empty((batch, dim, N), dtype=f32, device=dev)
    a = list(args)
    a[11] = S
    kern[(batch, n_dblocks, n_seg)](*a, sdt, per_seg, LOCAL=True, **{**flags, "HAS_H0": False, "SAVE_H": False,
                                                                     "WRITE_LAST": True})
    _seg_combine_kernel[(batch, triton.cdiv(dim, 32))](
        S, sdt, A, initial_state if initial_state is not None else A, init, last, dim, n_seg,
        N=N, N_P2=triton.next_power_of_2(N), BLOCK_D=32, HAS_H0=initial_state is not None, REVERSE=bool(reverse),
    )
    a = list(args)
    a[9] = init
    LAST_KERNEL["fwd"] = kern[(batch, n_dblocks, n_seg)](*a, sdt, per_seg, LOCAL=False,
                                                         **{**flags, "HAS_H0": True, "WRITE_LAST": False})


def group_adjoints(dout, dlast, delta, A, C, z, delta_bias, delta_softplus, reverse, mask, dh0, block_d, num_warps,
                   n_chunks, per_q, n_q, K):
    """The adjoint entering each time group of the sequential backward, (b, n_q, d, n) fp32: each group's own sum
    (from zero at its far end) and delta sum, chained against the scan order from dlast; writes dh0 on the way."""
    from .scan_seq_triton import _seg_combine_kernel, bwd_local_kernel

    batch, dim, L = delta.shape
    N = A.shape[1]
    groups = C.shape[1]
    dev, f32 = delta.device, torch.float32
    zt = z if z is not None else delta
    mk = mask.view(torch.uint8) if mask is not None else delta
    gloc = torch.empty((batch, n_q, dim, N), dtype=f32, device=dev)
    sdt = torch.empty((batch, n_q, dim), dtype=f32, device=dev)
    gin = torch.empty((batch, n_q, dim, N), dtype=f32, device=dev)
    tr = BWD_SEQ_TR
    n_sw = min(N, (BWD_LOCAL_SW_EXP2 * N + 15) // 16)
    LAST_KERNEL["bwd_local"] = bwd_local_kernel(N, tr, BWD_VARIANT, n_sw)[(batch, triton.cdiv(dim, block_d), n_q)](
        delta, A, C, zt, delta_bias if delta_bias is not None else A, mk, dout, gloc, sdt,
        dim, L, n_chunks, dim // groups, per_q, delta.stride(0), delta.stride(1), zt.stride(0), zt.stride(1),
        C.stride(0), C.stride(1), C.stride(2), dout.stride(0), dout.stride(1),
        mk.stride(0) if mask is not None else 0,
        BLOCK_D=block_d, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        REVERSE=bool(reverse), HAS_MASK=mask is not None, K=K, PTX=dev.type == "cuda", num_warps=num_warps,
    )
    _seg_combine_kernel[(batch, triton.cdiv(dim, 32))](
        gloc, sdt, A, dlast if dlast is not None else A, gin, dh0, dim, n_q,
        N=N, N_P2=triton.next_power_of_2(N), BLOCK_D=32, HAS_H0=dlast is not None, REVERSE=not reverse,
    )
    return gin


def scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, mask, hsave, config=None):
    """Launch the backward kernel and reduce its partial sums. Returns the gradients of every input."""
    batch, dim, L = u.shape
    N = A.shape[1]
    groups = B.shape[1]
    bd_want, block_t, num_warps = config or bwd_config(batch, dim, L)
    block_d = _block_d(dim, groups, bd_want)
    n_chunks = hsave.shape[1]
    assert triton.cdiv(L, block_t) == n_chunks
    n_dblocks = triton.cdiv(dim, block_d)
    dev = u.device
    f32 = torch.float32
    du = _empty((batch, dim, L), u.dtype, dev)
    ddelta = _empty((batch, dim, L), delta.dtype, dev)
    dz = _empty((batch, dim, L), z.dtype, dev) if z is not None else du
    dBp = _empty((batch, n_dblocks, N, L), f32, dev)
    dCp = _empty((batch, n_dblocks, N, L), f32, dev)
    zt = z if z is not None else u
    mk = mask.view(torch.uint8) if mask is not None else u
    tr = BWD_SEQ_TR
    seq = bool(tr) and block_t % tr == 0
    # time groups of the sequential backward (grid axis 2), enough for about BWD_SEG_TARGET_WARPS warps
    n_q = 1
    if seq and BWD_SEGMENTS:
        n_q = max(1, min(n_chunks, triton.cdiv(BWD_SEG_TARGET_WARPS, batch * n_dblocks * num_warps)))
    per_q = triton.cdiv(n_chunks, n_q)
    n_q = triton.cdiv(n_chunks, per_q)
    dAp = _empty((batch * n_q, dim, N), f32, dev)
    dDp = _empty((batch * n_q, dim), f32, dev) if D is not None else dAp
    dbiasp = _empty((batch * n_q, dim), f32, dev) if delta_bias is not None else dAp
    dh0 = _empty((batch, dim, N), f32, dev)
    grid = (batch, n_dblocks)
    if seq:
        from .scan_seq_triton import bwd_kernel

        K = block_t // tr
        if BWD_BC_FP32:
            B, C = B.float(), C.float()
        gin = dAp
        if n_q > 1:
            gin = group_adjoints(dout, dlast, delta, A, C, z, delta_bias, delta_softplus, reverse, mask, dh0,
                                 block_d, num_warps, n_chunks, per_q, n_q, K)
        # per program: the state entering each register chunk of the current chunk (only its own thread reads it)
        # (and, after them, A log2 e for the "lean" kernel shape)
        scratch = torch.empty((batch, n_dblocks, n_q, K + 1, N, block_d), dtype=f32, device=dev)
        use_shfl = BWD_SHFL and block_d == 32 and num_warps == 1 and dev.type == "cuda" and 2 * tr <= 32
        opts = {"maxnreg": BWD_MAXNREG} if BWD_MAXNREG and dev.type == "cuda" else {}
        LAST_KERNEL["bwd"] = bwd_kernel(N, tr, BWD_VARIANT)[(batch, n_dblocks, n_q)](
            u, delta, A, B, C, D if D is not None else A, zt, delta_bias if delta_bias is not None else A, mk, hsave,
            dout, dlast if dlast is not None else A,
            du, ddelta, dz, dBp, dCp, dAp, dDp, dbiasp, dh0, scratch, gin,
            dim, L, n_chunks, dim // groups, n_dblocks, per_q,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zt.stride(0), zt.stride(1),
            B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
            dout.stride(0), dout.stride(1), mk.stride(0) if mask is not None else 0,
            BLOCK_D=block_d, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), REVERSE=bool(reverse), HAS_MASK=mask is not None,
            HAS_DLAST=dlast is not None, HAS_GIN=n_q > 1, K=K, USE_SHFL=use_shfl, PTX=dev.type == "cuda",
            num_warps=num_warps, **opts,
        )
    else:
        _assoc_bwd = _scan_bwd_kernel
        LAST_KERNEL["bwd"] = _assoc_bwd[grid](
            u, delta, A, B, C, D if D is not None else A, zt, delta_bias if delta_bias is not None else A, mk, hsave,
            dout, dlast if dlast is not None else A,
            du, ddelta, dz, dBp, dCp, dAp, dDp, dbiasp, dh0,
            dim, L, n_chunks, dim // groups, n_dblocks,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zt.stride(0), zt.stride(1),
            B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
            dout.stride(0), dout.stride(1), mk.stride(0) if mask is not None else 0,
            N=N, N_P2=triton.next_power_of_2(N), BLOCK_D=block_d, BLOCK_T=block_t,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
            REVERSE=bool(reverse), HAS_MASK=mask is not None, HAS_DLAST=dlast is not None, num_warps=num_warps,
        )
    # channel blocks of one group are consecutive: (b, groups, blocks per group, n, l) -> sum over the blocks
    dB = dBp.view(batch, groups, n_dblocks // groups, N, L).sum(2) if groups > 1 else dBp.sum(1, keepdim=True)
    dC = dCp.view(batch, groups, n_dblocks // groups, N, L).sum(2) if groups > 1 else dCp.sum(1, keepdim=True)
    dA = dAp.sum(0)
    dD = dDp.sum(0) if D is not None else None
    dbias = dbiasp.sum(0) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, (dz if z is not None else None), dbias, dh0


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False,
                          mask=None, initial_state=None, return_last_state=False):
    """Selective scan through the Triton kernels (inputs already validated by `selective_scan`).

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, groups, N, L); D, delta_bias: (dim,);
    mask: bool (batch, L) or None; initial_state: (batch, dim, N) or None.
    Returns out (batch, dim, L) in u's dtype, and the last state (batch, dim, N) fp32 when return_last_state.
    """
    if u.dtype == torch.float64:
        raise TypeError("selective_scan_triton: u has dtype float64; the Triton scan supports fp32/bf16/fp16 "
                        "(the fp64 path runs in PyTorch)")
    u, delta, z, B, C = (_last_contig(t) for t in (u, delta, z, B, C))
    A32 = A.float().contiguous()
    D32 = D.float().contiguous() if D is not None else None
    bias32 = delta_bias.float().contiguous() if delta_bias is not None else None
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    mask = mask.contiguous() if mask is not None else None
    out, last = _ScanApply.apply(u, delta, A, B, C, D, z, delta_bias, mask, initial_state, A32, D32, bias32, h0,
                                 bool(delta_softplus), bool(reverse))
    return (out, last) if return_last_state else out


class _ScanApply(torch.autograd.Function):
    """Autograd entry: keeps the caller's parameter dtypes for the gradients, runs the kernels on fp32 copies."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, mask, initial_state, A32, D32, bias32, h0,
                delta_softplus, reverse):
        needs_grad = any(ctx.needs_input_grad[:10])
        out, last, hsave = scan_fwd(u, delta, A32, B, C, D32, z, bias32, delta_softplus, reverse, mask, h0,
                                       save_states=needs_grad, write_last=True)
        if needs_grad:
            ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, mask, hsave)
        ctx.meta = (delta_softplus, reverse, A.dtype, B.dtype, C.dtype,
                    D.dtype if D is not None else None, delta_bias.dtype if delta_bias is not None else None,
                    initial_state.dtype if initial_state is not None else None)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A32, B, C, D32, z, bias32, mask, hsave = ctx.saved_tensors
        softplus, reverse, A_dt, B_dt, C_dt, D_dt, bias_dt, h0_dt = ctx.meta
        if dout is None:
            dout = torch.zeros_like(u)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = scan_bwd(
            _last_contig(dout), dlast.contiguous() if dlast is not None else None, u, delta, A32, B, C, D32, z,
            bias32, softplus, reverse, mask, hsave)
        return (du, ddelta, dA.to(A_dt), dB.to(B_dt), dC.to(C_dt), dD.to(D_dt) if dD is not None else None, dz,
                dbias.to(bias_dt) if dbias is not None else None, None,
                dh0.to(h0_dt) if h0_dt is not None else None, None, None, None, None, None, None)
