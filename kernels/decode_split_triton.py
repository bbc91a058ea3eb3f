"""The decoding step of decode_triton.py with two grid exchanges per layer instead of four (decode.TUNE's SPLIT=1).

Dimensions: as in decode_triton.py; B batch as a BLOCK_B tile dimension; C channels of Di per item (PER_C of them in
a BLOCK_C tile).

Every phase of a layer works on the same channel blocks, so in_proj, the conv step and the SSM step of a channel need
nothing from other blocks; the two sums across all channels, x_proj's and out_proj's, are split over the blocks and
added into per-layer fp32 accumulators with float atomics:

    per layer l, items = channel blocks of Di (one per program at the usual sizes):
      A   r = r + round(o_acc[l-1])      (every program alike, in registers; r = the embedding at l = 0)
          xn = rmsnorm(r);  u = xn @ W_in[blk]^T, z = xn @ W_in[Di + blk]^T;  conv window step, xc = silu(...)
          x_acc[l] += xc @ W_x[:, blk]^T                                        (B, X)
      --- grid barrier (TALLY: none; phase B polls x_acc[l]'s words until each counts all its contributions) ---
      B   dt_low, B, C = round(x_acc[l]);  dt = softplus(W_dt[blk] dt_low + bias);  h = exp(dt A) h + dt B xc
          y = (C . h + D xc) silu(z);  o_acc[l] += y @ W_out[:, blk]^T             (B, Dm)
      --- grid barrier ---
    head: r = r + round(o_acc[L-1]);  logits = rmsnorm_f(r) @ W_head^T (+ bias)    items: row blocks of the head

The accumulators are laid out (layers, COPIES, B, n): item i adds into copy i % COPIES and readers add the copies
(H200, 90M LM, batch 1, ARRIVE_FIRST: 258 us a step with 1 or 2 copies, 282 with 8, 373 with 32: past two, the
readers' extra loads cost more than the atomics' queueing saves). The residual stream never leaves registers: every
program computes the same r from the same accumulators. With one channel block a program (ONE_PASS, set by the host
from the grid) the block's conv output and gate stay in registers from phase A to phase B. Each accumulator is zero
before its layer's first atomic: in the head phase, after the last barrier, every program clears its share of all of
them but o_acc[L-1], which the head phase reads; that one each program clears its share of in phase A of layer 0 of
the next launch, many barriers before the last layer adds to it. The host allocates them zeroed once. (Before, one
program cleared each accumulator during the layers, and the release fences of its arrivals waited for those stores:
H200, batch 1, 250.7-253.7 us against 254.8-257.4 us in the same run.)

The roundings are the reference's (decode_triton.py). With fp32 accumulators only the order of the sums across channel
blocks changes from run to run with the atomics, so two runs agree to fp32 rounding before the activation-dtype
roundings, not bit for bit; FIXED=1 accumulates int64 multiples of 2^-24 instead, whose sums are exact in any order:
bit-identical runs. Each phase loads the weights of its first item before the barrier that guards its inputs. Under
the interpreter the host launches one working program, which loops over every item (and any prefetchers, idle there).

Measured (H200, batch 1, 2026-11-29, BENCHMARKS.md): 251-258 us a step with ARRIVE_FIRST (263-270 us with FIXED)
against 267-270 us for the default three-barrier kernel in the same runs. Without barrier waits and atomics it would
take 108 us, so the 48 exchanges (atomics, release fence, barrier, reading the sums) cost about 150 us. Two attempts
at them were slower and removed: loading each phase's weights a phase earlier (the work alone fell, then from 149 to
108-117 us, but the step rose to 293-335 us: the loads stood before the barrier's release fence, which waits for every
load in flight, or in the memory queue of the polls and atomics), and a variant without any grid barrier whose int64
sums carried their own count of contributions (260-265 us, no faster). Later: L2 prefetches of the next phase's
weights by the working programs themselves, at four points of each phase (297-300 us against 259), x_proj's sums
read through L1 (262 against 256-257 us), and, with prefetchers, polls by volatile loads and one acquire fence after
them, with or without a pause between polls (250-252 against 230 us).

With prefetchers (decode.TUNE's PREFETCHERS, decode_triton._prefetch_layers) the weights wait in L2 when a phase
loads them: 36 of them, leaving 96 working programs of 16 channels (aligned vector loads; 15 or 18 channels an item
took 318 and 449 us), 225-230 us a step against 250-255 us without, two layers ahead; the arrivals' spread fell from
~4 to ~1.2 us. Kept then as an opt-in variant (decode.TUNE's SPLIT=1), as its runs are not bit-identical without
FIXED; since 2026-11-30 the default at batch 1 on sm_90 (decode.split_default; FIXED under deterministic algorithms).
Which SM does which work is then left to a table (decode.TUNE's ROLES, decode_triton._role): the block scheduler puts
consecutive programs on the two SMs of a TPC and the last 36, the prefetchers, on a few TPCs of each GPC, differently
from process to process, and some of those placements cost 3-6 us a step (H200, BENCHMARKS.md).

At batch 1 with one channel block a program (_layers_in_warps, below) every sum over d_model stays in one warp:
192-194 us a step with 36 prefetchers against 229 us with the general tiles; with the residual stream read and kept
once a program (SUMS_1D) 174.6 us, then 164.4-165.0 us with 4 copies of each accumulator, and 214.2 us with FIXED
(H200, 2026-11-29, BENCHMARKS.md). There a program's out_proj and x_proj columns (16 channels: a 32-byte piece of
every row) come from copies in per-program blocks (BLOCKS, decode_blocks.ColumnBlocks), so that a warp's load takes
whole lines instead of touching 16: 157.0-159.2 against 168.7-171.1 us (H200, 2026-11-29).

The transcendental functions lie on each phase's critical path, so they take the short way: A = -exp(A_log) comes
from FusedDecodeStep's fp32 copy (no exp in the kernel), and on a GPU softplus, silu and e^x go through PTX's
ex2.approx.ftz and lg2.approx (decode_triton._softplus, _silu, _fast_exp; tl.log alone is a 25-instruction polynomial),
relative error ~1e-7 against the bf16 roundings around them. H200, batch 1, alternating runs (2026-11-30,
BENCHMARKS.md): 147.4-150.2 against 156.9-158.1 us a step; with FIXED, TMA_SUMS and SPIN 160.3 against 184.2-184.5.

With TALLY (the default at batch 1 since 2026-11-30) the first exchange has no grid barrier: x_proj's sums are fp64
words into which each contribution adds its value plus 2^24, so a word shows how many contributions it holds, and
phase B polls its words until every one is whole (no release fence, no counter, no second read). Phase A's release
fence alone had taken ~4.6 us a step. H200, 768 x 24, four processes on two machines: 124.9-127.0 against 133.4-134.9
us a step in the same processes, with TALLY's 4 copies and 4 of out_proj's sums. The same for out_proj's sums (768 words a program, not 80) was much slower: 179-248
us (BENCHMARKS.md).

Greedy steps (GREEDY, FusedDecodeStep.__call__(greedy=True)) pick each row's token in the head phase: every program
keeps the largest of its logits' argmax keys (_argmax_keys) and adds it to the launch's by an atomic maximum, and the
last program to count itself in writes the token where the next launch reads its input (_greedy_pick), so that
greedy generation runs nothing between its steps.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .decode_triton import (
    _barriers_done,
    _cols_dot,
    _conv_window_tail,
    _fast_exp,
    _grid_barrier,
    _layer_ptr,
    _prefetch_layers,
    _role,
    _round,
    _rows_dot,
    _silu,
    _sm_id,
    _softplus,
    _ssm_state_ptrs,
    _stamp,
    _timestamps,
    _traced_arrive,
    _traced_wait,
)

# FIXED: an accumulator holds the sum of its contributions in units of 2^-24, each truncated towards zero. A
# contribution that is not finite or not below _FIXED_LIMIT in magnitude adds _FIXED_POISON instead, and a total at or
# past _FIXED_BAD in magnitude reads as NaN: the good part of a total stays below 256 * 2^44 = 2^52 (at most 256
# contributions a word, decode.plan_split_constexprs checks), every poisoned one adds 2^53 (256 of them stay below
# 2^63), so a bad value shows as NaN, never as a finite sum
_FIXED_ONE: tl.constexpr = tl.constexpr(2.0 ** 24)
_FIXED_LIMIT: tl.constexpr = tl.constexpr(2.0 ** 20)
_FIXED_POISON: tl.constexpr = tl.constexpr(2 ** 53)
_FIXED_BAD: tl.constexpr = tl.constexpr(2 ** 52)

# TALLY: x_proj's sums count their own contributions, so phase B reads them without a grid barrier. Each contribution
# adds its value plus _TALLY_ONE into an fp64 word; a word that received all n of its copy's contributions holds
# n * _TALLY_ONE + the sum, and below (n - 1/2) * _TALLY_ONE it is still waiting. A contribution that is not finite or
# not below _TALLY_LIMIT in magnitude adds NaN, which ends the wait and reads as NaN: at most _TALLY_MAX_ADDS (64)
# contributions a word (decode.plan_split_passes) keep every partial sum below _TALLY_ONE / 2 in magnitude, so the
# count is never misread. Near 2^30 an fp64 add rounds by at most 2^-23, finer than the fp32 sums it replaces.
_TALLY_ONE: tl.constexpr = tl.constexpr(2.0 ** 24)
_TALLY_LIMIT: tl.constexpr = tl.constexpr(2.0 ** 17)


@triton.jit
def _channels(item, BLOCK_C: tl.constexpr, PER_C: tl.constexpr, Di):
    """Item `item`'s channels (BLOCK_C, the lanes past PER_C masked) and their mask. Contiguous from item * PER_C, so
    that the compiler sees runs of PER_C channels for vector loads of the weight columns."""
    lane = tl.arange(0, BLOCK_C)
    ch = item * PER_C + lane
    return ch, (lane < PER_C) & (ch < Di)


@triton.jit
def _embedded(tok_ptr, emb_ptr, offs_b, b_ok, offs_m, m_ok, Dm):
    """The embedding rows of the batch's tokens, fp32: (BLOCK_B, BLOCK_DM)."""
    tok = tl.load(tok_ptr + offs_b, mask=b_ok, other=0).to(tl.int64)
    return tl.load(emb_ptr + tok[:, None] * Dm + offs_m[None, :], mask=b_ok[:, None] & m_ok[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _acc_load(acc_ptr, layer, batch, offs_b, b_ok, offs, ok, n, COPIES: tl.constexpr):
    """Layer `layer`'s accumulated sums, every copy: (COPIES, BLOCK_B, len(offs)) from an accumulator laid out
    (layers, COPIES, batch, n) (_acc_total adds them; apart, so that several loads go out before any sum)."""
    g = tl.arange(0, COPIES)[:, None, None]
    ptrs = acc_ptr + ((layer * COPIES + g) * batch + offs_b[None, :, None]) * n + offs[None, None, :]
    return tl.load(ptrs, mask=(b_ok[:, None] & ok[None, :])[None, :, :], other=0, cache_modifier=".cg")


@triton.jit
def _acc_total(parts, FIXED: tl.constexpr):
    """The copies from _acc_load added: (BLOCK_B, n) fp32; under FIXED the copies are int64 fixed-point sums
    (_FIXED_ONE units), added exactly before the one rounding to fp32."""
    total = tl.sum(parts, axis=0)
    if FIXED:
        total = _fixed_value(total)
    return total


@triton.jit
def _fixed_value(total):
    """A FIXED accumulator's int64 total as fp32: NaN where it holds a poisoned contribution or overflowed."""
    return tl.where(tl.abs(total) < _FIXED_BAD, total.to(tl.float32) * (1.0 / _FIXED_ONE), float("nan"))


@triton.jit
def _acc_add(ptrs, part, mask, FIXED: tl.constexpr):
    """Adds the fp32 partial sums `part` into an accumulator with relaxed atomics: as fp32 (the order of the adds, which
    varies from run to run, rounds the total), or under FIXED as int64 multiples of 2^-24 (truncated towards zero),
    whose sum is exact and so the same in any order: bit-identical runs. Under FIXED a contribution that is not
    finite or reaches 2^20 in magnitude poisons the sum, which then reads as NaN (_fixed_value)."""
    if FIXED:
        tl.atomic_add(ptrs, _fixed_words(part), mask=mask, sem="relaxed")
    else:
        tl.atomic_add(ptrs, part, mask=mask, sem="relaxed")


@triton.jit
def _fixed_words(part):
    """FIXED's int64 contributions for the fp32 partial sums `part` (_acc_add)."""
    good = tl.abs(part) < _FIXED_LIMIT  # false for a NaN
    return tl.where(good, (tl.where(good, part, 0.0) * _FIXED_ONE).to(tl.int64), _FIXED_POISON)


@triton.jit
def _bulk_reduce_done(pid):
    """Waits until this thread's bulk reductions (TMA_SUMS) have written global memory, and orders them before its
    later accesses (the barrier's release), across the async proxy. `pid` only gives the asm an operand."""
    tl.inline_asm_elementwise("cp.async.bulk.wait_group 0; fence.proxy.async.global; mov.u32 $0, 0;", "=r,r", [pid],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _add_mixer_out(r, oacc_ptr, layer, batch, offs_b, b_ok, offs_m, m_ok, Dm, ADT: tl.constexpr,
                   COPIES: tl.constexpr, FIXED: tl.constexpr):
    """r + layer `layer`'s out_proj output (its accumulator, rounded to the activation dtype): (BLOCK_B, BLOCK_DM)."""
    parts = _acc_load(oacc_ptr, layer, batch, offs_b, b_ok, offs_m, m_ok, Dm, COPIES)
    return r + _round(_acc_total(parts, FIXED), ADT)


@triton.jit
def _meet(bar_ptr, ticket, nprog, NO_WAIT: tl.constexpr, ARRIVE_FIRST: tl.constexpr, pid, trace_ptr, trace_base, n_slots,
          TRACE: tl.constexpr, ASM: tl.constexpr, SPIN: tl.constexpr = False):
    """The grid barrier: its polls alone under ARRIVE_FIRST (the arrival came before the weight loads; TRACE records
    when this program left), else whole. SPIN (on a GPU): the polls by decode_triton._spin_wait."""
    if ARRIVE_FIRST:
        _traced_wait(bar_ptr, ticket, nprog, NO_WAIT, pid, trace_ptr, trace_base, n_slots, TRACE, ASM, SPIN)
    else:
        _grid_barrier(bar_ptr, nprog, NO_WAIT)


@triton.jit
def _after_phase_b(r, layer, bar_ptr, ticket, nprog, oacc_ptr, batch, offs_b, b_ok, offs_m, m_ok, Dm,
                   ADT: tl.constexpr, COPIES: tl.constexpr, NO_WAIT: tl.constexpr, ARRIVE_FIRST: tl.constexpr,
                   FIXED: tl.constexpr, pid, trace_ptr, trace_base, n_slots, TRACE: tl.constexpr, ASM: tl.constexpr,
                   SPIN: tl.constexpr = False):
    """Waits until every program has added its out_proj sums of `layer`, returns r + that layer's output."""
    _meet(bar_ptr, ticket, nprog, NO_WAIT, ARRIVE_FIRST, pid, trace_ptr, trace_base, n_slots, TRACE, ASM, SPIN)
    return _add_mixer_out(r, oacc_ptr, layer, batch, offs_b, b_ok, offs_m, m_ok, Dm, ADT, COPIES, FIXED)


@triton.jit
def _normed(r, norm_w, Dm, eps, ADT: tl.constexpr):
    """rmsnorm of every row of r (BLOCK_B, BLOCK_DM), rounded to the activation dtype."""
    rstd = tl.math.rsqrt(tl.sum(r * r, axis=1) / Dm + eps)
    return _round(r * rstd[:, None] * norm_w[None, :], ADT)


@triton.jit
def _zero_share(ptr, n, pid, nprog, BLOCK: tl.constexpr):
    """Program pid's share of ptr[:n] = 0: ceil(n / nprog) elements from pid * that."""
    per = tl.cdiv(n, nprog)
    end = tl.minimum(pid * per + per, n)
    for start in range(pid * per, end, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        tl.store(ptr + offs, tl.zeros([BLOCK], dtype=ptr.dtype.element_ty), mask=offs < end)


@triton.jit
def _a_tiles(in_tab, convw_tab, convb_tab, conv_tab, xproj_tab, layer, ch, c_ok, offs_b, b_ok, offs_m, m_ok, offs_w,
             offs_x, x_ok, Dm, Di, W, ADT: tl.constexpr, CONV_DT: tl.constexpr, CB_DT: tl.constexpr,
             HAS_CONV_BIAS: tl.constexpr):
    """What phase A of `layer` reads for channels `ch`: in_proj's u and z rows (C, BLOCK_DM), the conv taps
    (C, BLOCK_W) fp32, the conv bias (C,) fp32 (zeros without one), x_proj's columns (C, BLOCK_X) fp32 and the conv
    windows' newest W - 1 entries (B, C, BLOCK_W), shifted to the front."""
    w_in = _layer_ptr(in_tab, layer, ADT)
    cm_ok = c_ok[:, None] & m_ok[None, :]
    wu = tl.load(w_in + ch.to(tl.int64)[:, None] * Dm + offs_m[None, :], mask=cm_ok, other=0.0)
    wz = tl.load(w_in + (Di + ch).to(tl.int64)[:, None] * Dm + offs_m[None, :], mask=cm_ok, other=0.0)
    taps = tl.load(_layer_ptr(convw_tab, layer, ADT) + ch[:, None] * W + offs_w[None, :],
                   mask=c_ok[:, None] & (offs_w[None, :] < W), other=0.0).to(tl.float32)
    wx = tl.load(_layer_ptr(xproj_tab, layer, ADT) + offs_x[None, :] * Di + ch[:, None],
                 mask=c_ok[:, None] & x_ok[None, :], other=0.0).to(tl.float32)
    older = _conv_window_tail(_layer_ptr(conv_tab, layer, CONV_DT), ch, c_ok, offs_b, b_ok, offs_w, Di, W)
    if HAS_CONV_BIAS:
        cbias = tl.load(_layer_ptr(convb_tab, layer, CB_DT) + ch, mask=c_ok, other=0.0).to(tl.float32)
    else:
        cbias = tl.zeros(ch.shape, dtype=tl.float32)
    return wu, wz, taps, cbias, wx, older


@triton.jit
def _b_tiles(out_tab, dtw_tab, dtb_tab, a_tab, d_tab, ssm_tab, layer, ch, c_ok, offs_b, b_ok, offs_m, m_ok, offs_n,
             n_ok, offs_r, r_ok, Di, N, R, ADT: tl.constexpr, A_DT: tl.constexpr, D_DT: tl.constexpr,
             DTB_DT: tl.constexpr):
    """What phase B of `layer` reads for channels `ch`: out_proj's columns (BLOCK_DM, C), dt_proj's rows (C, BLOCK_R)
    and bias (C,) fp32, A = -exp(A_log) (C, BLOCK_N) fp32 (from FusedDecodeStep's copy), D (C,) fp32 and the SSM states
    (B, C, BLOCK_N) fp32."""
    wout = tl.load(_layer_ptr(out_tab, layer, ADT) + offs_m.to(tl.int64)[:, None] * Di + ch[None, :],
                   mask=m_ok[:, None] & c_ok[None, :], other=0.0)
    wdt = tl.load(_layer_ptr(dtw_tab, layer, ADT) + ch[:, None] * R + offs_r[None, :],
                  mask=c_ok[:, None] & r_ok[None, :], other=0.0)
    A = tl.load(_layer_ptr(a_tab, layer, A_DT) + ch[:, None] * N + offs_n[None, :],
                mask=c_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
    h_ptrs, h_ok = _ssm_state_ptrs(_layer_ptr(ssm_tab, layer, tl.float32), ch, c_ok, offs_b, b_ok, offs_n, n_ok, Di, N)
    h = tl.load(h_ptrs, mask=h_ok, other=0.0)
    dtb = tl.load(_layer_ptr(dtb_tab, layer, DTB_DT) + ch, mask=c_ok, other=0.0).to(tl.float32)
    Dv = tl.load(_layer_ptr(d_tab, layer, D_DT) + ch, mask=c_ok, other=0.0).to(tl.float32)
    return wout, wdt, dtb, A, Dv, h


@triton.jit
def _layers(tok_ptr, emb_ptr, norm_tab, in_tab, convw_tab, convb_tab, xproj_tab, dtw_tab, dtb_tab, a_tab, d_tab,
            out_tab, conv_tab, ssm_tab, xc_ptr, z_ptr, xacc_ptr, oacc_ptr, bar_ptr, trace_ptr, ticket, trace_base,
            n_slots, pid, nprog, batch, n_layer, Dm: tl.constexpr, Di, N, R, W, eps, ADT: tl.constexpr,
            CONV_DT: tl.constexpr, A_DT: tl.constexpr, D_DT: tl.constexpr, DTB_DT: tl.constexpr, CB_DT: tl.constexpr,
            HAS_CONV_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_DM: tl.constexpr, BLOCK_N: tl.constexpr,
            BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr,
            PER_C: tl.constexpr, COPIES: tl.constexpr, NO_WAIT: tl.constexpr, SKIP_ATOMICS: tl.constexpr,
            ARRIVE_FIRST: tl.constexpr, FIXED: tl.constexpr, ONE_PASS: tl.constexpr, TRACE: tl.constexpr,
            ASM: tl.constexpr, SPIN: tl.constexpr = False):
    """Every layer of the split kernel, any batch, on channel blocks that a program loops over (the phases drawn at
    the top of the file): returns the residual stream entering the last layer's output, (BLOCK_B, BLOCK_DM) fp32,
    and the ticket."""
    X = R + 2 * N
    offs_b = tl.arange(0, BLOCK_B)
    b_ok = offs_b < batch
    offs_m = tl.arange(0, BLOCK_DM)
    m_ok = offs_m < Dm
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    offs_w = tl.arange(0, BLOCK_W)
    w3 = offs_w[None, None, :]
    offs_x = tl.arange(0, BLOCK_X)
    x_ok = offs_x < X
    n_items = tl.cdiv(Di, PER_C)

    item = pid
    ch, c_ok = _channels(item, BLOCK_C, PER_C, Di)
    wu, wz, taps, cbias, wx, older = _a_tiles(in_tab, convw_tab, convb_tab, conv_tab, xproj_tab, 0, ch, c_ok, offs_b,
                                              b_ok, offs_m, m_ok, offs_w, offs_x, x_ok, Dm, Di, W, ADT, CONV_DT, CB_DT,
                                              HAS_CONV_BIAS)
    r = _embedded(tok_ptr, emb_ptr, offs_b, b_ok, offs_m, m_ok, Dm)  # the residual stream, (B, BLOCK_DM) fp32
    for layer in range(n_layer):
        # ---- A: norm, in_proj rows of the block, conv step, x_proj partial sums ---------------------------------
        norm_w = tl.load(_layer_ptr(norm_tab, layer, ADT) + offs_m, mask=m_ok, other=0.0).to(tl.float32)
        conv_st = _layer_ptr(conv_tab, layer, CONV_DT)
        if layer > 0:
            r = _after_phase_b(r, layer - 1, bar_ptr, ticket, nprog, oacc_ptr, batch, offs_b, b_ok, offs_m, m_ok, Dm,
                               ADT, COPIES, NO_WAIT, ARRIVE_FIRST, FIXED, pid, trace_ptr, trace_base, n_slots, TRACE,
                               ASM, SPIN)
        else:  # o_acc[L-1], read in the last launch's head phase
            _zero_share(oacc_ptr + (n_layer - 1) * COPIES * batch * Dm, COPIES * batch * Dm, pid, nprog, BLOCK_DM)
        xn = _normed(r, norm_w, Dm, eps, ADT)
        # ONE_PASS: this program's only item's conv output and gate stay in registers for phase B
        x_kept = tl.zeros([BLOCK_B, BLOCK_C], dtype=tl.float32)
        z_kept = tl.zeros([BLOCK_B, BLOCK_C], dtype=tl.float32)
        while item < n_items:
            bc_ok = b_ok[:, None] & c_ok[None, :]
            u = _round(_rows_dot(wu, xn), ADT)  # (B, C)
            z = _round(_rows_dot(wz, xn), ADT)
            window = tl.where(w3 == W - 1, u.to(CONV_DT)[:, :, None], older)
            row3 = conv_st + offs_b[:, None, None] * Di * W + ch[None, :, None] * W  # (B, C, 1), oldest first
            tl.store(row3 + w3, window, mask=bc_ok[:, :, None] & (w3 < W))
            out = tl.sum(window.to(tl.float32) * taps[None, :, :], axis=2)
            if HAS_CONV_BIAS:
                out += cbias[None, :]
            xc = tl.where(bc_ok, _round(_silu(out, ASM), ADT), 0.0)
            if ONE_PASS:
                x_kept = xc
                z_kept = z
            else:
                tl.store(xc_ptr + offs_b[:, None] * Di + ch[None, :], xc, mask=bc_ok)
                tl.store(z_ptr + offs_b[:, None] * Di + ch[None, :], z, mask=bc_ok)
            part = _cols_dot(wx, xc)  # (B, BLOCK_X)
            if SKIP_ATOMICS & 2 == 0:
                _acc_add(xacc_ptr + ((layer * COPIES + item % COPIES) * batch + offs_b[:, None]) * X + offs_x[None, :],
                         part, b_ok[:, None] & x_ok[None, :], FIXED)
            item += nprog
            ch, c_ok = _channels(item, BLOCK_C, PER_C, Di)
            wu, wz, taps, cbias, wx, older = _a_tiles(in_tab, convw_tab, convb_tab, conv_tab, xproj_tab, layer, ch,
                                                      c_ok, offs_b, b_ok, offs_m, m_ok, offs_w, offs_x, x_ok, Dm, Di,
                                                      W, ADT, CONV_DT, CB_DT, HAS_CONV_BIAS)

        # ---- B: dt, SSM state update, gate, out_proj partial sums -----------------------------------------------
        if ARRIVE_FIRST:
            ticket = _traced_arrive(bar_ptr, ticket, nprog, NO_WAIT, pid, trace_ptr, trace_base, n_slots, TRACE, ASM)
        item = pid
        ch, c_ok = _channels(item, BLOCK_C, PER_C, Di)
        wout, wdt, dtb, A, Dv, h = _b_tiles(out_tab, dtw_tab, dtb_tab, a_tab, d_tab, ssm_tab, layer, ch, c_ok,
                                            offs_b, b_ok, offs_m, m_ok, offs_n, n_ok, offs_r, r_ok, Di, N, R, ADT,
                                            A_DT, D_DT, DTB_DT)
        # phase A filled x_acc[layer]
        _meet(bar_ptr, ticket, nprog, NO_WAIT, ARRIVE_FIRST, pid, trace_ptr, trace_base, n_slots, TRACE, ASM, SPIN)
        # x_dbl's three parts requested together, then added
        parts_r = _acc_load(xacc_ptr, layer, batch, offs_b, b_ok, offs_r, r_ok, X, COPIES)
        parts_b = _acc_load(xacc_ptr + R, layer, batch, offs_b, b_ok, offs_n, n_ok, X, COPIES)
        parts_c = _acc_load(xacc_ptr + R + N, layer, batch, offs_b, b_ok, offs_n, n_ok, X, COPIES)
        dt_low = _round(_acc_total(parts_r, FIXED), ADT)  # (B, R)
        Bv = _round(_acc_total(parts_b, FIXED), ADT)  # (B, N)
        Cv = _round(_acc_total(parts_c, FIXED), ADT)
        ssm = _layer_ptr(ssm_tab, layer, tl.float32)
        while item < n_items:
            bc_ok = b_ok[:, None] & c_ok[None, :]
            if ONE_PASS:
                x = x_kept
                z = z_kept
            else:
                x = tl.load(xc_ptr + offs_b[:, None] * Di + ch[None, :], mask=bc_ok, other=0.0, cache_modifier=".cg")
                z = tl.load(z_ptr + offs_b[:, None] * Di + ch[None, :], mask=bc_ok, other=0.0, cache_modifier=".cg")
            dt = _round(_rows_dot(wdt, dt_low), ADT) + dtb[None, :]  # (B, C)
            dt = _softplus(dt, ASM)
            h = _fast_exp(dt[:, :, None] * A[None, :, :], ASM) * h + (dt * x)[:, :, None] * Bv[:, None, :]
            h_ptrs, h_ok = _ssm_state_ptrs(ssm, ch, c_ok, offs_b, b_ok, offs_n, n_ok, Di, N)
            tl.store(h_ptrs, h, mask=h_ok)
            y = tl.sum(h * Cv[:, None, :], axis=2) + Dv[None, :] * x
            y = tl.where(bc_ok, _round(y * _silu(z, ASM), ADT), 0.0)
            part = _rows_dot(wout, y)  # (B, BLOCK_DM)
            if SKIP_ATOMICS & 1 == 0:
                _acc_add(oacc_ptr + ((layer * COPIES + item % COPIES) * batch + offs_b[:, None]) * Dm
                         + offs_m[None, :], part, b_ok[:, None] & m_ok[None, :], FIXED)
            item += nprog
            ch, c_ok = _channels(item, BLOCK_C, PER_C, Di)
            wout, wdt, dtb, A, Dv, h = _b_tiles(out_tab, dtw_tab, dtb_tab, a_tab, d_tab, ssm_tab, layer, ch, c_ok,
                                                offs_b, b_ok, offs_m, m_ok, offs_n, n_ok, offs_r, r_ok, Di, N, R, ADT,
                                                A_DT, D_DT, DTB_DT)

        item = pid
        ch, c_ok = _channels(item, BLOCK_C, PER_C, Di)
        if ARRIVE_FIRST:
            # for the next layer's first barrier or the head's
            ticket = _traced_arrive(bar_ptr, ticket, nprog, NO_WAIT, pid, trace_ptr, trace_base, n_slots, TRACE, ASM)
        # the next layer's phase A tiles of this program's first item (after the last layer: its own again, unused)
        wu, wz, taps, cbias, wx, older = _a_tiles(in_tab, convw_tab, convb_tab, conv_tab, xproj_tab,
                                                  tl.minimum(layer + 1, n_layer - 1), ch, c_ok, offs_b, b_ok, offs_m,
                                                  m_ok, offs_w, offs_x, x_ok, Dm, Di, W, ADT, CONV_DT, CB_DT,
                                                  HAS_CONV_BIAS)
    return r, ticket


# ---- batch 1, one channel block a program (WARP_CH > 0): every sum of a phase inside one warp -------------------------
#
# The layout the compiler gives a tile follows from its shape: in a (WARPS, WARP_CH, NK, KCH) tile of 4-element runs
# it puts WARPS on the warps, WARP_CH and NK in each thread's registers and KCH on the lanes (4 a lane). So each warp
# holds whole in_proj rows (WARP_CH channels of its own), and a vector over d_model kept as (WARPS, 1, NK, KCH), equal
# in every warp, meets them without moving: the norm's and in_proj's sums are in-thread adds and shuffles, with no
# block barrier. The per-channel values (conv, dt, the SSM state over VW-wide lanes) share the same parent layout;
# only x_proj's and out_proj's sums across the block's channels, and the atomics, cross warps.
#
# The residual stream and its out_proj sums are kept once a program (SUMS_1D, the default: (BLOCK_DM,) over all its
# threads), and the normed vector goes to every warp by one layout conversion through shared memory. The compiler
# converts that small vector, not the in_proj rows it meets, only if the rows' load comes after it in the program:
# so they are loaded a layer ahead, in phase B of the layer before (loaded at the top of the layer, the rows took
# the vector's layout, their sums crossed warps, and 2 KB a thread spilled). H200, 90M LM, 36 prefetchers: 174.6
# against 197.0 us a step, and with FIXED 214.2 against 273.1 us (2026-11-29, BENCHMARKS.md).
#
# With SUMS_1D=0 every warp reads the vectors it needs (the residual's sums, norm weights, dt_low, B, C) itself,
# through L1: the barrier's acquire has made the sums visible, and the first warp's miss serves the other seven.
# Through L2 (.cg, as the general tiles read them) the 8 warps of 96 programs would queue on the same few L2 lines
# (H200: 241 against 232 us a step for the general tiles, 364 us with FIXED's int64 sums).


@triton.jit
def _widen(t):
    """(WARPS, C) -> (WARPS, C, 1, 1), inserting the dims in the order that gives back the layout the two sums over
    axis 2 took them from (t[:, :, None, None] would cost a layout conversion)."""
    return tl.expand_dims(tl.expand_dims(t, 2), 2)


@triton.jit
def _every_warp(v, WARPS: tl.constexpr, C: tl.constexpr, NK: tl.constexpr, LANES: tl.constexpr):
    """A vector over the program's threads, (NK * LANES,), as (WARPS, C, NK, LANES) with every warp holding all of it
    (SUMS_1D: the one layout conversion, through shared memory, that hands a sum read once to every warp)."""
    return tl.broadcast_to(tl.reshape(v, (1, 1, NK, LANES)), (WARPS, C, NK, LANES))


@triton.jit
def _columns(rows, lanes, pid, n_rows, n_cols, PER_C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCKED: tl.constexpr):
    """Offsets of program pid's PER_C columns (`lanes`) in `rows` (int64 where the weight may pass 2^31 elements)
    of a (n_rows, n_cols) row-major weight, or under BLOCKED in its copy (ceil(n_cols / PER_C), n_rows, BLOCK_C) of
    column blocks (decode_blocks.ColumnBlocks), where they lie together: whole 128-byte lines instead of a 32-byte
    piece of a line a row, and every row of a block starts aligned for vector loads."""
    if BLOCKED:
        return pid * (n_rows * BLOCK_C) + rows * BLOCK_C + lanes
    return rows * n_cols + (pid * PER_C + lanes)


@triton.jit
def _in_rows(w_in, first, ch4, offs_m, ok, Dm):
    """Rows first + ch4 of the in_proj weight at w_in in the warp layout, (WARPS, WARP_CH, NK, KCH): first 0 for the
    u rows, d_inner for the gate's."""
    return tl.load(w_in + (first + ch4).to(tl.int64) * Dm + offs_m, mask=ok, other=0.0)


@triton.jit
def _acc_sum(acc_ptr, layer, batch, offs, ok, n, COPIES: tl.constexpr, FIXED: tl.constexpr):
    """Batch row 0 of layer `layer`'s accumulated sums at `offs` (any shape), the copies added: fp32. Through L1
    (after a barrier's acquire: the layout note above)."""
    base = acc_ptr + layer * COPIES * batch * n
    total = tl.load(base + offs, mask=ok, other=0)
    for cp in tl.static_range(1, COPIES):
        total += tl.load(base + cp * batch * n + offs, mask=ok, other=0)
    if FIXED:
        total = _fixed_value(total)
    return total


@triton.jit
def _tally_add(ptrs, part, mask):
    """TALLY's contributions: the fp32 partial sums `part` plus _TALLY_ONE each, added as fp64 with relaxed atomics;
    NaN for a contribution that is not finite or not below _TALLY_LIMIT (the note at _TALLY_ONE)."""
    good = tl.abs(part) < _TALLY_LIMIT  # false for a NaN
    tl.atomic_add(ptrs, tl.where(good, part, float("nan")).to(tl.float64) + _TALLY_ONE, mask=mask, sem="relaxed")


@triton.jit
def _doubled(v, n: tl.constexpr):
    """(n,) -> (2n,): v, then n zeros."""
    return tl.reshape(tl.trans(tl.join(v, tl.zeros([n], v.dtype))), (2 * n,))


@triton.jit
def _padded(v, ROWS: tl.constexpr, VW: tl.constexpr):
    """(ROWS,) -> (VW,), zeros after v: VW is at most 8 ROWS (decode.plan_split_passes' TALLY_ROWS)."""
    if ROWS < VW:
        v = _doubled(v, ROWS)
    if 2 * ROWS < VW:
        v = _doubled(v, 2 * ROWS)
    if 4 * ROWS < VW:
        v = _doubled(v, 4 * ROWS)
    return v


@triton.jit
def _tally_read(xacc_ptr, layer, nprog, R, N, X, ROWS: tl.constexpr, VW: tl.constexpr, COPIES: tl.constexpr,
                ASM: tl.constexpr):
    """Layer `layer`'s x_proj sums under TALLY (batch 1), each read once every contribution to it has landed:
    (dt_low, B, C), each (VW,) fp32 with zeros past R or N. Lane j of a (ROWS, COPIES) tile polls copy c's words j of
    dt_low, B and C; on a GPU in one PTX loop of relaxed loads (all three in flight each round), so that a thread waits
    one round trip a round, not one a word. ROWS covers R and N; a tile of one word a thread polls fastest (H200, d_model
    768: 64 x 4 lanes 125.4-128.2 against 129.9-133.5 us a step with 128 x 4)."""
    j = tl.arange(0, ROWS)[:, None]
    cp = tl.arange(0, COPIES)[None, :]
    base = xacc_ptr + (layer * COPIES + cp) * X + j  # (ROWS, COPIES)
    whole = ((nprog - cp + COPIES - 1) // COPIES).to(tl.float64) * _TALLY_ONE  # this copy's contributions, counted
    ready = whole - 0.5 * _TALLY_ONE
    dt_ok = (j < R) & (cp < COPIES)  # (the second test only widens the mask to the tile)
    bc_ok = (j < N) & (cp < COPIES)
    if ASM:
        flags = dt_ok.to(tl.int32) + 2 * bc_ok.to(tl.int32)
        # fp64 goes through the asm as its bits: inline asm broadcasts its operands like a sum, and a pointer does
        # not add to a float
        limit = ready.to(tl.int64, bitcast=True) + tl.zeros([ROWS, COPIES], tl.int64)
        dt, b, c = tl.inline_asm_elementwise(
            "{ .reg .pred pd, pb, w; .reg .b32 f; .reg .f64 a, b, c, t; "
            "and.b32 f, $7, 1; setp.ne.b32 pd, f, 0; and.b32 f, $7, 2; setp.ne.b32 pb, f, 0; "
            "mov.b64 t, $6; mov.f64 a, t; mov.f64 b, t; mov.f64 c, t; "
            "poll_${:uid}: @pd ld.relaxed.gpu.global.f64 a, [$3]; @pb ld.relaxed.gpu.global.f64 b, [$4]; "
            "@pb ld.relaxed.gpu.global.f64 c, [$5]; "
            "setp.lt.f64 w, a, t; setp.lt.or.f64 w, b, t, w; setp.lt.or.f64 w, c, t, w; @w bra poll_${:uid}; "
            "mov.b64 $0, a; mov.b64 $1, b; mov.b64 $2, c; }",
            "=l,=l,=l,l,l,l,l,r", [base, base + R, base + R + N, limit, flags],
            dtype=(tl.int64, tl.int64, tl.int64), is_pure=False, pack=1)
        dt, b, c = dt.to(tl.float64, bitcast=True), b.to(tl.float64, bitcast=True), c.to(tl.float64, bitcast=True)
    else:
        waiting = 1
        while waiting > 0:
            dt = tl.load(base, mask=dt_ok, other=0, volatile=True)
            b = tl.load(base + R, mask=bc_ok, other=0, volatile=True)
            c = tl.load(base + R + N, mask=bc_ok, other=0, volatile=True)
            late = (dt_ok & (dt < ready)) | (bc_ok & ((b < ready) | (c < ready)))
            waiting = tl.max(tl.max(late.to(tl.int32), axis=1), axis=0)
    dt = _padded(tl.sum(tl.where(dt_ok, dt - whole, 0.0), axis=1).to(tl.float32), ROWS, VW)
    b = _padded(tl.sum(tl.where(bc_ok, b - whole, 0.0), axis=1).to(tl.float32), ROWS, VW)
    c = _padded(tl.sum(tl.where(bc_ok, c - whole, 0.0), axis=1).to(tl.float32), ROWS, VW)
    return dt, b, c


@triton.jit
def _layers_in_warps(tok_ptr, emb_ptr, norm_tab, in_tab, convw_tab, convb_tab, xproj_tab, dtw_tab, dtb_tab, a_tab,
                     d_tab, out_tab, conv_tab, ssm_tab, xacc_ptr, oacc_ptr, bar_ptr, trace_ptr, ticket, trace_base,
                     n_slots, pid, nprog, batch, n_layer, Dm: tl.constexpr, Di, N, R, W, eps, ADT: tl.constexpr,
                     CONV_DT: tl.constexpr, A_DT: tl.constexpr, D_DT: tl.constexpr, DTB_DT: tl.constexpr,
                     CB_DT: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, BLOCK_DM: tl.constexpr, BLOCK_W: tl.constexpr,
                     BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr, PER_C: tl.constexpr, WARP_CH: tl.constexpr,
                     KCH: tl.constexpr, VW: tl.constexpr, COPIES: tl.constexpr, NO_WAIT: tl.constexpr,
                     SKIP_ATOMICS: tl.constexpr, ARRIVE_FIRST: tl.constexpr, FIXED: tl.constexpr, TRACE: tl.constexpr,
                     ASM: tl.constexpr, SUMS_1D: tl.constexpr, TMA_SUMS: tl.constexpr, oacc_desc,
                     SPIN: tl.constexpr, BLOCKS: tl.constexpr, GATE_EARLY: tl.constexpr, TALLY: tl.constexpr,
                     TALLY_ROWS: tl.constexpr):
    """Every layer of the split kernel for batch 1 with one channel block a program (its loop, same results), in the
    layout above: returns the residual stream entering the last layer's output, (1, BLOCK_DM) fp32, and the ticket."""
    WARPS: tl.constexpr = BLOCK_C // WARP_CH
    NK: tl.constexpr = BLOCK_DM // KCH
    X = R + 2 * N
    lane = tl.arange(0, WARPS)[:, None] * WARP_CH + tl.arange(0, WARP_CH)[None, :]  # (WARPS, WARP_CH)
    ch = pid * PER_C + lane
    c_ok = (lane < PER_C) & (ch < Di)
    ch3, c_ok3 = ch[:, :, None], c_ok[:, :, None]
    ch4, c_ok4 = ch3[:, :, :, None], c_ok3[:, :, :, None]
    every_warp = tl.zeros([WARPS, 1, 1, 1], dtype=tl.int32)
    # offsets said to run in groups of 4 from multiples of 4: bf16 loads of 8 bytes, so that bf16 and fp32 tiles of one
    # shape get the same layout (16-byte bf16 loads would give a lane 8 elements); inline: a hint on a jit function's
    # argument is lost
    offs_m = tl.arange(0, NK)[None, None, :, None] * KCH + tl.arange(0, KCH)[None, None, None, :]
    offs_m = tl.max_contiguous(tl.multiple_of(offs_m, [1, 1, 1, 4]), [1, 1, 1, 4])
    vec_m = offs_m + every_warp  # (WARPS, 1, NK, KCH): a d_model vector in every warp
    m_ok = vec_m < Dm
    offs_v = tl.max_contiguous(tl.multiple_of(tl.arange(0, VW)[None, None, None, :], [1, 1, 1, 4]), [1, 1, 1, 4])
    vec_v = offs_v + every_warp  # (WARPS, 1, 1, VW): dt_low, B or C in every warp
    w3 = tl.arange(0, BLOCK_W)[None, None, :]
    offs_x = tl.arange(0, BLOCK_X)
    x_ok = offs_x < X
    offs_d = tl.arange(0, BLOCK_DM)
    d_ok = offs_d < Dm
    lane_c = tl.arange(0, BLOCK_C)
    ch_c = pid * PER_C + lane_c
    cc_ok = (lane_c < PER_C) & (ch_c < Di)

    tok = tl.load(tok_ptr).to(tl.int64)
    row_ok = c_ok4 & (offs_m < Dm)
    if SUMS_1D:
        r = tl.load(emb_ptr + tok * Dm + offs_d, mask=d_ok, other=0.0).to(tl.float32)
        wu = _in_rows(_layer_ptr(in_tab, 0, ADT), 0, ch4, offs_m, row_ok, Dm)
    else:
        r = tl.load(emb_ptr + tok * Dm + vec_m, mask=m_ok, other=0.0).to(tl.float32)
    for layer in range(n_layer):
        # ---- A's reads (before the wait) -------------------------------------------------------------------------
        w_in = _layer_ptr(in_tab, layer, ADT)
        if SUMS_1D:
            norm_w = tl.load(_layer_ptr(norm_tab, layer, ADT) + offs_d, mask=d_ok, other=0.0).to(tl.float32)
        else:
            wu = _in_rows(w_in, 0, ch4, offs_m, row_ok, Dm)
            norm_w = tl.load(_layer_ptr(norm_tab, layer, ADT) + vec_m, mask=m_ok, other=0.0).to(tl.float32)
        taps = tl.load(_layer_ptr(convw_tab, layer, ADT) + ch3 * W + w3, mask=c_ok3 & (w3 < W),
                       other=0.0).to(tl.float32)  # (WARPS, WARP_CH, BLOCK_W)
        conv_st = _layer_ptr(conv_tab, layer, CONV_DT)
        older = tl.load(conv_st + ch3 * W + w3 + 1, mask=c_ok3 & (w3 + 1 < W), other=0.0)  # shifted to the front
        if HAS_CONV_BIAS:
            cbias = tl.load(_layer_ptr(convb_tab, layer, CB_DT) + ch, mask=c_ok, other=0.0).to(tl.float32)
        else:
            cbias = tl.zeros([WARPS, WARP_CH], dtype=tl.float32)
        # x_proj's columns as loaded, (BLOCK_X, BLOCK_C): in the warp layout this tile would need a conversion, which
        # the compiler puts before the barrier's polls, so that they wait for the load
        wx = tl.load(_layer_ptr(xproj_tab, layer, ADT) + _columns(offs_x[:, None], lane_c[None, :], pid, X, Di,
                                                                  PER_C, BLOCK_C, BLOCKS & 2 != 0),
                     mask=x_ok[:, None] & cc_ok[None, :], other=0.0)
        if layer > 0:
            _meet(bar_ptr, ticket, nprog, NO_WAIT, ARRIVE_FIRST, pid, trace_ptr, trace_base, n_slots, TRACE, ASM, SPIN)
            if SUMS_1D:
                r += _round(_acc_sum(oacc_ptr, layer - 1, batch, offs_d, d_ok, Dm, COPIES, FIXED), ADT)
            else:
                r += _round(_acc_sum(oacc_ptr, layer - 1, batch, vec_m, m_ok, Dm, COPIES, FIXED), ADT)
        else:  # o_acc[L-1], read in the last launch's head phase
            _zero_share(oacc_ptr + (n_layer - 1) * COPIES * batch * Dm, COPIES * batch * Dm, pid, nprog, BLOCK_DM)
        if GATE_EARLY:
            # in_proj's gate rows, behind the sums: they arrive during phase A's work instead of in front of phase B's
            # polls, where z would wait for them (H200, d_model 768: 132.8-135.0 against 136.6 us a step; phase A's
            # barrier released in 0.99 against 1.62 us)
            wz = _in_rows(w_in, Di, ch4, offs_m, row_ok, Dm)
        # ---- A: norm, in_proj, conv step, x_proj's partial sums ---------------------------------------------------
        if SUMS_1D:
            xn = r * tl.math.rsqrt(tl.sum(r * r) / Dm + eps) * norm_w
            xn = _round(_every_warp(xn, WARPS, 1, NK, KCH), ADT)
        else:
            ss = tl.sum(tl.sum(r * r, axis=2), axis=2)  # (WARPS, 1), the same in every warp
            xn = _round(r * _widen(tl.math.rsqrt(ss / Dm + eps)) * norm_w, ADT)
        u = _round(tl.sum(tl.sum(wu.to(tl.float32) * xn, axis=2), axis=2), ADT)  # (WARPS, WARP_CH)
        window = tl.where(w3 == W - 1, u.to(CONV_DT)[:, :, None], older)
        out = tl.sum(window.to(tl.float32) * taps, axis=2) + cbias
        xc = tl.where(c_ok, _round(_silu(out, ASM), ADT), 0.0)
        part = tl.sum(wx.to(tl.float32) * tl.reshape(xc, (BLOCK_C,))[None, :], axis=1)  # (BLOCK_X,)
        if TALLY:
            _tally_add(xacc_ptr + (layer * TALLY + pid % TALLY) * X + offs_x, part, x_ok)
        elif SKIP_ATOMICS & 2 == 0:
            _acc_add(xacc_ptr + (layer * COPIES + pid % COPIES) * batch * X + offs_x, part, x_ok, FIXED)
        # after the atomics: the store's layout conversion is not on their way
        tl.store(conv_st + ch3 * W + w3, window, mask=c_ok3 & (w3 < W))
        if ARRIVE_FIRST and not TALLY:
            # its release fence waits one L2 round trip for the atomics and the store above: ~0.19 us a layer (H200,
            # timing only, without it: 129.3 against 133.9 us a step, and 135.9 against 142.3 with no weight loads in
            # flight at it, GATE_EARLY=0)
            ticket = _traced_arrive(bar_ptr, ticket, nprog, NO_WAIT, pid, trace_ptr, trace_base, n_slots, TRACE, ASM,
                                    SKIP_ATOMICS & 4 != 0)
        # ---- B's reads (before the wait) -------------------------------------------------------------------------
        wout_cols = _columns(offs_d.to(tl.int64)[:, None], lane_c[None, :], pid, Dm, Di, PER_C, BLOCK_C,
                             BLOCKS & 1 != 0)
        wout = tl.load(_layer_ptr(out_tab, layer, ADT) + wout_cols, mask=d_ok[:, None] & cc_ok[None, :],
                       other=0.0)  # (BLOCK_DM, BLOCK_C)
        # without GATE_EARLY in_proj's gate rows wait for phase B, which alone needs z: half of in_proj's loads leave
        # the window before phase A's polls (H200: 197-199 against 210 us a step)
        if not GATE_EARLY:
            wz = _in_rows(w_in, Di, ch4, offs_m, row_ok, Dm)
        wdt = tl.load(_layer_ptr(dtw_tab, layer, ADT) + ch4 * R + offs_v, mask=c_ok4 & (offs_v < R),
                      other=0.0)  # (WARPS, WARP_CH, 1, VW)
        dtb = tl.load(_layer_ptr(dtb_tab, layer, DTB_DT) + ch, mask=c_ok, other=0.0).to(tl.float32)
        n_ok4 = c_ok4 & (offs_v < N)
        A = tl.load(_layer_ptr(a_tab, layer, A_DT) + ch4 * N + offs_v, mask=n_ok4, other=0.0).to(tl.float32)
        Dv = tl.load(_layer_ptr(d_tab, layer, D_DT) + ch, mask=c_ok, other=0.0).to(tl.float32)
        h_ptrs = _layer_ptr(ssm_tab, layer, tl.float32) + ch4 * N + offs_v
        h = tl.load(h_ptrs, mask=n_ok4, other=0.0)
        # the gate needs nothing from the barrier: taken before its polls, so that the gate rows' registers are free
        # for the rest of the phase (sm_90a: 185 against 225 registers; H200, FIXED with TMA_SUMS: 182.7 against
        # 197.6 us a step; float sums unchanged)
        z = _round(tl.sum(tl.sum(wz.to(tl.float32) * xn, axis=2), axis=2), ADT)
        if TALLY:
            dt_low, Bv, Cv = _tally_read(xacc_ptr, layer, nprog, R, N, X, TALLY_ROWS, VW, TALLY, ASM)
        else:
            _meet(bar_ptr, ticket, nprog, NO_WAIT, ARRIVE_FIRST, pid, trace_ptr, trace_base, n_slots, TRACE, ASM,
                  SPIN)
        if SUMS_1D:  # the next layer's in_proj u rows (the layout note above)
            # here, not after phase B's arrival: they arrive during phase B's work instead of in front of the next
            # phase A's polls and sums (H200, alternating measurements: 0.8-3.4 us a step less in each of three runs,
            # 152.4 against 154.6 us in the last; with FIXED, TMA_SUMS and SPIN 178.5 against 184.6 us); after the last
            # layer none, from the tables' spare row (FusedDecodeStep)
            wu = _in_rows(_layer_ptr(in_tab, layer + 1, ADT), 0, ch4, offs_m, row_ok & (layer + 1 < n_layer), Dm)
        # ---- B: dt, the SSM state, gate, out_proj's partial sums --------------------------------------------------
        if TALLY:
            dt_low = _round(_every_warp(dt_low, WARPS, 1, 1, VW), ADT)
            Bv = _round(_every_warp(Bv, WARPS, 1, 1, VW), ADT)
            Cv = _round(_every_warp(Cv, WARPS, 1, 1, VW), ADT)
        elif SUMS_1D:
            lanes = tl.arange(0, VW)
            dt_low = _round(_every_warp(_acc_sum(xacc_ptr, layer, batch, lanes, lanes < R, X, COPIES, FIXED),
                                        WARPS, 1, 1, VW), ADT)
            Bv = _round(_every_warp(_acc_sum(xacc_ptr + R, layer, batch, lanes, lanes < N, X, COPIES, FIXED),
                                    WARPS, 1, 1, VW), ADT)
            Cv = _round(_every_warp(_acc_sum(xacc_ptr + R + N, layer, batch, lanes, lanes < N, X, COPIES, FIXED),
                                    WARPS, 1, 1, VW), ADT)
        else:
            dt_low = _round(_acc_sum(xacc_ptr, layer, batch, vec_v, vec_v < R, X, COPIES, FIXED), ADT)
            Bv = _round(_acc_sum(xacc_ptr + R, layer, batch, vec_v, vec_v < N, X, COPIES, FIXED), ADT)
            Cv = _round(_acc_sum(xacc_ptr + R + N, layer, batch, vec_v, vec_v < N, X, COPIES, FIXED), ADT)
        dt = _round(tl.sum(tl.sum(wdt.to(tl.float32) * dt_low, axis=2), axis=2), ADT) + dtb  # (WARPS, WARP_CH)
        dt = _softplus(dt, ASM)
        h = _fast_exp(_widen(dt) * A, ASM) * h + _widen(dt * xc) * Bv
        tl.store(h_ptrs, h, mask=n_ok4)
        y = tl.sum(tl.sum(h * Cv, axis=2), axis=2) + Dv * xc
        y = tl.where(c_ok, _round(y * _silu(z, ASM), ADT), 0.0)
        part = tl.sum(wout.to(tl.float32) * tl.reshape(y, (BLOCK_C,))[None, :], axis=1)  # (BLOCK_DM,)
        if TMA_SUMS:
            # one bulk reduction of the whole vector by the TMA unit (its rows of KCH lanes past d_model fall outside
            # the descriptor's bounds and are dropped), waited for before the arrival
            if FIXED:
                words = tl.reshape(_fixed_words(part).to(tl.uint64, bitcast=True), (1, NK, KCH))
            else:
                words = tl.reshape(part, (1, NK, KCH))
            oacc_desc.atomic_add([layer * COPIES + pid % COPIES, 0, 0], words)
            _bulk_reduce_done(pid)
        elif SKIP_ATOMICS & 1 == 0:
            _acc_add(oacc_ptr + (layer * COPIES + pid % COPIES) * batch * Dm + offs_d, part, d_ok, FIXED)
        if ARRIVE_FIRST:
            ticket = _traced_arrive(bar_ptr, ticket, nprog, NO_WAIT, pid, trace_ptr, trace_base, n_slots, TRACE, ASM,
                                    SKIP_ATOMICS & 8 != 0)
    if SUMS_1D:
        r_out = tl.reshape(r, (1, BLOCK_DM))
    else:
        r_out = tl.reshape(tl.max(r, axis=0), (1, BLOCK_DM))
    return r_out, ticket


@triton.jit
def _argmax_keys(lg, rows, rows_ok, b_ok, V):
    """Keys of the logits lg (BLOCK_B, ROWS) at vocabulary rows `rows` whose int64 maximum is torch.argmax's choice:
    the value's order in the high 32 bits (-0.0 as 0.0, NaN above every number, as torch treats them), V - 1 - row
    in the low ones (the first of equal values wins); rows out of range and padding batch rows the smallest key."""
    bits = (lg + 0.0).to(tl.int32, bitcast=True)  # (+ 0.0: -0.0 becomes 0.0)
    order = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # int32 order = float order
    order = tl.where(lg != lg, 0x7FFFFFFF, order)
    keys = (order.to(tl.int64) << 32) | (V - 1 - rows).to(tl.int64)[None, :]
    return tl.where(b_ok[:, None] & rows_ok[None, :], keys, -0x7FFFFFFFFFFFFFFF - 1)


@triton.jit
def _greedy_pick(greedy_ptr, best, tok_ptr, hist_ptr, offs_b, b_ok, nprog, V, CAP):
    """GREEDY: this program's best keys (BLOCK_B,) into the launch's (greedy_ptr[2 + b], atomic maximum); the last
    program to count itself in (greedy_ptr[0], acquire-release) then takes each row's token (torch.argmax of its
    logits plus the bias), writes it to tok_ptr for the next launch and to history column greedy_ptr[1] (hist_ptr:
    (batch, CAP)), advances that column (mod CAP) and resets the keys. Every program has read tok_ptr at its start."""
    tl.atomic_max(greedy_ptr + 2 + offs_b, best, mask=b_ok, sem="relaxed", scope="gpu")
    tl.debug_barrier()
    done = tl.atomic_add(greedy_ptr, 1, sem="acq_rel", scope="gpu")
    if (done + 1) % nprog == 0:
        key = tl.atomic_xchg(greedy_ptr + 2 + offs_b, tl.full(offs_b.shape, -0x7FFFFFFFFFFFFFFF - 1, tl.int64),
                             mask=b_ok, sem="acquire", scope="gpu")
        token = V - 1 - (key & 0xFFFFFFFF)
        column = tl.load(greedy_ptr + 1, cache_modifier=".cg")
        tl.store(tok_ptr + offs_b, token, mask=b_ok)
        tl.store(hist_ptr + offs_b * CAP + column, token, mask=b_ok)
        tl.store(greedy_ptr + 1, (column + 1) % CAP)


@triton.jit(do_not_specialize=["batch"])
def _decode_split_kernel(
    tok_ptr, emb_ptr, head_ptr, head_bias_ptr, norm_f_ptr, logits_ptr,
    norm_tab, in_tab, convw_tab, convb_tab, xproj_tab, dtw_tab, dtb_tab, a_tab, d_tab, out_tab,
    conv_tab, ssm_tab,
    xc_ptr, z_ptr, xacc_ptr, oacc_ptr, bar_ptr, trace_ptr, greedy_ptr, hist_ptr, bias_ptr, role_ptr,
    batch, n_layer, Dm: tl.constexpr, Di, N, R, W, V, eps, CAP,
    ADT: tl.constexpr, CONV_DT: tl.constexpr, A_DT: tl.constexpr, D_DT: tl.constexpr, DTB_DT: tl.constexpr,
    CB_DT: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_HEAD_BIAS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_DM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr, PER_C: tl.constexpr,
    ROWS_HEAD: tl.constexpr, COPIES: tl.constexpr, NO_WAIT: tl.constexpr, SKIP_ATOMICS: tl.constexpr = 0,
    ARRIVE_FIRST: tl.constexpr = False, FIXED: tl.constexpr = False, ONE_PASS: tl.constexpr = False,
    TRACE: tl.constexpr = False, ASM: tl.constexpr = False, PREFETCHERS: tl.constexpr = 0, AHEAD: tl.constexpr = 1,
    WARP_CH: tl.constexpr = 0, KCH: tl.constexpr = 128, VW: tl.constexpr = 128, SUMS_1D: tl.constexpr = False,
    TMA_SUMS: tl.constexpr = False, oacc_desc=None, SPIN: tl.constexpr = False, BLOCKS: tl.constexpr = 0,
    GATE_EARLY: tl.constexpr = False, GREEDY: tl.constexpr = False, ROLES: tl.constexpr = False,
    TALLY: tl.constexpr = 0, TALLY_ROWS: tl.constexpr = 128,
):
    # NO_WAIT, SKIP_ATOMICS (timing only, results wrong): no barrier waits; no out_proj (bit 1) or x_proj (bit 2)
    # atomics; in the warp layout, phase A's (bit 4) or phase B's (bit 8) arrivals without their release fence
    pid = tl.program_id(0)
    if ROLES:  # the work and the prefetching by a table of the SMs, not by where the scheduler put each program
        pid = _role(pid, role_ptr, tl.num_programs(0), ASM)
    nprog = tl.num_programs(0) - PREFETCHERS  # the programs that work and meet at the barriers
    if PREFETCHERS > 0 and pid >= nprog:
        _prefetch_layers(bar_ptr, pid - nprog, PREFETCHERS, nprog, head_ptr, norm_tab, in_tab, convw_tab, convb_tab,
                         xproj_tab, dtw_tab, dtb_tab, a_tab, d_tab, out_tab, conv_tab, ssm_tab, batch, n_layer, Dm,
                         Di, N, R, W, V, ADT, CONV_DT, A_DT, D_DT, DTB_DT, CB_DT, HAS_CONV_BIAS, 2 - (TALLY > 0), AHEAD,
                         NO_WAIT, 256, 4096, ASM)
        return
    X = R + 2 * N
    offs_b = tl.arange(0, BLOCK_B)
    b_ok = offs_b < batch
    offs_m = tl.arange(0, BLOCK_DM)
    m_ok = offs_m < Dm

    # ARRIVE_FIRST (decode_triton._arrive): each barrier's arrival before the next phase's weight loads, its polls
    # after them; `ticket` is the count the current barrier waits for
    ticket = nprog.to(tl.int64) * 0
    if ARRIVE_FIRST:
        ticket = _barriers_done(bar_ptr, nprog) * nprog
    # TRACE (with ARRIVE_FIRST): when each program started, arrived at and left each barrier, and ended (trace_ptr:
    # (programs, n_slots, 4) int64, decode_triton's layout; slot 0 the start (its second entry the program's SM), 1 + i
    # the launch's i-th barrier, the last slot the end)
    n_slots = 2 * n_layer + 2
    trace_base = ticket // nprog
    if TRACE:
        clk, ns = _timestamps(pid, ASM)
        _stamp(trace_ptr, pid, 0, n_slots, clk, _sm_id(pid, ASM), ns, ns)
    if WARP_CH > 0:
        r, ticket = _layers_in_warps(tok_ptr, emb_ptr, norm_tab, in_tab, convw_tab, convb_tab, xproj_tab, dtw_tab,
                                     dtb_tab, a_tab, d_tab, out_tab, conv_tab, ssm_tab, xacc_ptr, oacc_ptr, bar_ptr,
                                     trace_ptr, ticket, trace_base, n_slots, pid, nprog, batch, n_layer, Dm, Di, N, R,
                                     W, eps, ADT, CONV_DT, A_DT, D_DT, DTB_DT, CB_DT, HAS_CONV_BIAS, BLOCK_DM,
                                     BLOCK_W, BLOCK_X, BLOCK_C, PER_C, WARP_CH, KCH, VW, COPIES, NO_WAIT,
                                     SKIP_ATOMICS, ARRIVE_FIRST, FIXED, TRACE, ASM, SUMS_1D, TMA_SUMS, oacc_desc,
                                     SPIN, BLOCKS, GATE_EARLY, TALLY, TALLY_ROWS)
    else:
        r, ticket = _layers(tok_ptr, emb_ptr, norm_tab, in_tab, convw_tab, convb_tab, xproj_tab, dtw_tab, dtb_tab,
                            a_tab, d_tab, out_tab, conv_tab, ssm_tab, xc_ptr, z_ptr, xacc_ptr, oacc_ptr, bar_ptr,
                            trace_ptr, ticket, trace_base, n_slots, pid, nprog, batch, n_layer, Dm, Di, N, R, W, eps,
                            ADT, CONV_DT, A_DT, D_DT, DTB_DT, CB_DT, HAS_CONV_BIAS, BLOCK_B, BLOCK_DM, BLOCK_N,
                            BLOCK_R, BLOCK_W, BLOCK_X, BLOCK_C, PER_C, COPIES, NO_WAIT, SKIP_ATOMICS, ARRIVE_FIRST,
                            FIXED, ONE_PASS, TRACE, ASM, SPIN)

    # ---- final norm and head ---------------------------------------------------------------------------------
    norm_f = tl.load(norm_f_ptr + offs_m, mask=m_ok, other=0.0).to(tl.float32)
    item = pid
    rows = item * ROWS_HEAD + tl.arange(0, ROWS_HEAD)
    tile = tl.load(head_ptr + rows.to(tl.int64)[:, None] * Dm + offs_m[None, :],
                   mask=(rows < V)[:, None] & m_ok[None, :], other=0.0)
    r = _after_phase_b(r, n_layer - 1, bar_ptr, ticket, nprog, oacc_ptr, batch, offs_b, b_ok, offs_m, m_ok, Dm, ADT,
                       COPIES, NO_WAIT, ARRIVE_FIRST, FIXED, pid, trace_ptr, trace_base, n_slots, TRACE, ASM, SPIN)
    # every program has read every accumulator but o_acc[L-1] (cleared at the next launch's start)
    x_copies = COPIES
    if TALLY:
        x_copies = TALLY
    _zero_share(xacc_ptr, n_layer * x_copies * batch * X, pid, nprog, BLOCK_DM)
    _zero_share(oacc_ptr, (n_layer - 1) * COPIES * batch * Dm, pid, nprog, BLOCK_DM)
    hidden = _normed(r, norm_f, Dm, eps, ADT)
    n_head = tl.cdiv(V, ROWS_HEAD)
    best = tl.full([BLOCK_B], -0x7FFFFFFFFFFFFFFF - 1, tl.int64)  # GREEDY: this program's argmax keys
    while item < n_head:
        rows_ok = rows < V
        lg = _rows_dot(tile, hidden)  # (B, ROWS_HEAD)
        if HAS_HEAD_BIAS:
            lg += tl.load(head_bias_ptr + rows, mask=rows_ok, other=0.0).to(tl.float32)[None, :]
        lg = _round(lg, ADT)
        tl.store(logits_ptr + offs_b[:, None] * V + rows[None, :], lg, mask=b_ok[:, None] & rows_ok[None, :])
        if GREEDY:  # the token is picked from the logits as stored, plus the bias (-inf for suppressed tokens)
            lg += tl.load(bias_ptr + rows, mask=rows_ok, other=0.0)[None, :]
            best = tl.maximum(best, tl.max(_argmax_keys(lg, rows, rows_ok, b_ok, V), axis=1))
        item += nprog
        rows = item * ROWS_HEAD + tl.arange(0, ROWS_HEAD)
        tile = tl.load(head_ptr + rows.to(tl.int64)[:, None] * Dm + offs_m[None, :],
                       mask=(rows < V)[:, None] & m_ok[None, :], other=0.0)
    if GREEDY:
        _greedy_pick(greedy_ptr, best, tok_ptr, hist_ptr, offs_b, b_ok, nprog, V, CAP)
    if TRACE:
        tl.debug_barrier()
        clk, ns = _timestamps(pid, ASM)
        _stamp(trace_ptr, pid, n_slots - 1, n_slots, clk, clk, ns, ns)


def launch(grid: int, args: tuple, constexprs: dict, num_warps: int) -> None:
    """Runs the split step kernel on `grid` programs (at most one per SM: they meet at grid barriers)."""
    _decode_split_kernel[(grid,)](*args, **constexprs, num_warps=num_warps)


def compiled(grid: int, args: tuple, constexprs: dict, num_warps: int):
    """The split step kernel compiled for these arguments, without running it (Triton's CompiledKernel, its handles
    loaded: n_regs, metadata.shared)."""
    kernel = _decode_split_kernel.warmup(*args, grid=(grid,), **constexprs, num_warps=num_warps)
    kernel._init_handles()
    return kernel
