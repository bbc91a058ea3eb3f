"""One whole decoding step of a Mamba language model in a single persistent Triton kernel.

Dimensions: B batch (a run-time loop over the rows inside each item, so each weight tile is read once; BATCH_TILE: one
tile dimension), Dm d_model, Di d_inner,
N d_state, R dt_rank, W d_conv, X = R + 2N (x_proj's outputs), V vocabulary.

One program per SM; every phase spreads its items over the programs (`item = pid, pid + P, ...`) and a grid-wide
barrier separates the phases that depend on each other's results:

    per layer l:   P1 in_proj   xz = rmsnorm(residual) @ W_in^T            items: row blocks of W_in (2Di x Dm)
                   P2 conv      window rolls, xc = silu(conv + bias),       items: channel blocks
                                partial x_proj sums W_x[:, blk] @ xc (one slot per item, no float atomics)
                   P3 SSM       x_dbl = sum of partials, dt = softplus(W_dt dt_low + bias), h = exp(dt A) h + dt B xc,
                                y = (C . h + D xc) silu(z)                  items: channel blocks
                   P4 out_proj  residual += y @ W_out^T                    items: row blocks of W_out (Dm x Di)
    then:          logits = rmsnorm_f(residual) @ W_head^T (+ bias)         items: row blocks of the head

Under MERGE_IN_CONV (the default at batch 1) P1 runs inside P2: each conv item computes the u and z rows of its own
channels from the normed residual, so a layer has three barriers.

Layer 0 reads its residual straight from the embedding (the prenorm block's "residual is None" case), so no phase
runs before P1. Weights are reached through int64 tables of each layer's data pointer (no stacked copies: a model
trained on in place stays current). Every result that the reference rounds to the activation dtype (a projection's
output, the normed hidden, the conv output, the SSM output) is rounded here too; sums run in fp32.

Each phase loads its first weight tile before it waits at the barrier that guards its activations, so the weight
latency hides behind the barrier. Loads of data other programs wrote use cache_modifier ".cg" (L2, never a stale L1
line). Under the interpreter the programs run one after another, so the host launches a single program there.

Variants (constexpr switches set from decode.TUNE over decode.DEFAULT_TUNE; off, a switch leaves the kernel's PTX as
without it):
BARRIER=1 grid barriers on per-program epoch flags (release store, one vector of acquire loads) instead of the
shared counter; ONE_ITEM=1 items of any row count (masked to a power-of-two tile) planned so that each program has one;
BATCH_TILE=1 the batch rows as a (BLOCK_B, ...) tile dimension in every phase; LOCAL_P2=1 (with BARRIER=1) the conv
phase waits on ready flags of the in_proj items it reads instead of a grid barrier; ARRIVE_FIRST=1 each counter
barrier split in two (_arrive, _wait) around the next phase's weight loads; EARLY_LOADS=1 (with BATCH_TILE) the conv
window, conv bias, SSM state, D and dt bias of a conv or SSM item loaded with its weights, before the barrier;
TRACE=1 timestamps at every barrier; PREFETCH=k the weights of the layer k ahead asked into L2; FLAGGED=1 (with
BATCH_TILE, not with MERGE_IN_CONV, LOCAL_P2, BARRIER=1 or the SKIP flags) no grid barrier at all: every value one
program writes for others goes out as a 64-bit word with the writing layer's tag beside it (_put), and a reader
reads again until every word it needs carries the tag it expects (_get), so a phase waits for exactly the data it
reads, with no release fence and no counter. JOINT_READS=1 (with BATCH_TILE) requests all of a phase's reads of other
programs' values at once after the barrier (a reduction across warps ends in bar.sync, which no load is moved over)
and out_proj's residual rows, the program's own, before it; L2_TILES=1 asks L2 for in_proj's and out_proj's tiles
before the barrier and loads them after it. Buffers are reused a layer later only after every reader of the
previous layer is done, which the dependencies guarantee: a layer's in_proj needs all of the residual, hence every
out_proj item of the layer before, hence all of its y, partial sums and xz.
"""

from __future__ import annotations

import triton
import triton.language as tl  # noqa: F401 (triton: the jit decorator)

# where the prefetchers' launch counts start in the barrier's buffer (PREFETCHERS): a cache line past the counter
_LAUNCHES: tl.constexpr = tl.constexpr(16)


@triton.jit
def _grid_barrier(bar_ptr, nprog, NO_WAIT: tl.constexpr):
    """Grid barrier on one monotonic int64 counter: every program adds 1 and waits until the count reaches the next
    multiple of nprog. No reset is needed (each episode starts at a multiple of nprog, across launches and graph
    replays too), and it takes two round trips to L2 (the arrival, then the polls) rather than the four or five of
    a count + generation pair. Needs every program resident at once (grid <= SM count, one program per SM).
    NO_WAIT (timing only) drops it: no arrival, no wait, so the counter is left as it was."""
    if not NO_WAIT:
        tl.debug_barrier()
        old = tl.atomic_add(bar_ptr, 1, sem="acq_rel", scope="gpu")
        target = (old // nprog + 1) * nprog
        while tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu") < target:
            pass
        tl.debug_barrier()


@triton.jit
def _flag_barrier(flag_ptr, pid, nprog, epoch, NO_WAIT: tl.constexpr, BLOCK_P: tl.constexpr, ASM: tl.constexpr):
    """Grid barrier on per-program arrival flags (decode.TUNE's BARRIER=1): program p stores its epoch (the count of
    barriers it has met, ever growing: int64) into slot p with a release store, then loads every slot in one vector
    of acquire loads until all have reached it. No contended atomic; a fast program may store the next epoch before
    a slow one has looked, so the test is "at least". Every program meets the same barriers, so all slots are equal
    between launches and across graph replays: no reset. Returns the new epoch. ASM=False (the interpreter, which
    cannot run PTX) uses plain loads and stores."""
    if not NO_WAIT:
        epoch += 1
        _raise_flag(flag_ptr + pid, epoch, ASM)
        # lanes past the grid re-read the last slot
        _wait_flags(flag_ptr + tl.minimum(tl.arange(0, BLOCK_P), nprog - 1), epoch, ASM)
    return epoch


@triton.jit
def _raise_flag(flag, value, ASM: tl.constexpr):
    """Publishes what this program wrote so far: after every thread's writes, flag = value (int64) with a release
    store at GPU scope (plain under the interpreter)."""
    tl.debug_barrier()  # this program's threads have issued their writes
    if ASM:
        tl.inline_asm_elementwise("st.release.gpu.global.b64 [$1], $2; mov.u32 $0, 0;", "=r,l,l",
                                  [flag, value], dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.store(flag, value)


@triton.jit
def _wait_flags(flags, target, ASM: tl.constexpr):
    """Spins until every flag of the vector `flags` has reached `target`: acquire loads at GPU scope (volatile under
    the interpreter), so that what their programs wrote before raising them is visible after."""
    behind = 1
    while behind > 0:
        if ASM:
            seen = tl.inline_asm_elementwise("ld.acquire.gpu.global.b64 $0, [$1];", "=l,l", [flags],
                                             dtype=tl.int64, is_pure=False, pack=1)
        else:
            seen = tl.load(flags, volatile=True)
        behind = tl.max((seen < target).to(tl.int32), axis=0)
    tl.debug_barrier()


@triton.jit
def _arrive(bar_ptr, target, nprog, NO_WAIT: tl.constexpr, RELAXED: tl.constexpr = False):
    """The first half of _grid_barrier (decode.TUNE's ARRIVE_FIRST=1): publishes this program's writes and counts it
    in; returns the count to wait for (_wait), the previous barrier's `target` + nprog (the launch's first from the
    count at its start), so the arrival's result is not waited for. The release fence before the arrival waits for
    every load the program has in flight, so weight loads issued before it do not overlap the barrier: with the
    halves apart they go between, after the fence and before the polls. RELAXED (timing only): no fence, so the
    pollers may read the sums before they are complete."""
    if not NO_WAIT:
        tl.debug_barrier()
        if RELAXED:
            tl.atomic_add(bar_ptr, 1, sem="relaxed", scope="gpu")
        else:
            tl.atomic_add(bar_ptr, 1, sem="release", scope="gpu")
        target += nprog
    return target


@triton.jit
def _wait(bar_ptr, target, NO_WAIT: tl.constexpr, SPIN: tl.constexpr = False, ASM: tl.constexpr = False):
    """The second half of _grid_barrier: polls until the count reaches `target` (from _arrive); with SPIN and ASM
    (a GPU) by _spin_wait."""
    if not NO_WAIT:
        if SPIN and ASM:
            _spin_wait(bar_ptr, target)
        else:
            while tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu") < target:
                pass
            tl.debug_barrier()


@triton.jit
def _spin_wait(bar_ptr, target):
    """Polls the barrier counter until it reaches `target`: the first warp spins in one PTX loop of acquire loads
    (no block barrier and no shared-memory broadcast a round, as the scalar poll of _wait has), then the block waits
    for it. Only on a GPU (PTX)."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p, q; .reg .b64 v; .reg .u32 t; mov.u32 t, %tid.x; setp.ge.u32 q, t, 32; @q bra done_${:uid}; "
        "spin_${:uid}: ld.acquire.gpu.global.b64 v, [$1]; setp.lt.s64 p, v, $2; @p bra spin_${:uid}; "
        "done_${:uid}: mov.u32 $0, 0; }", "=r,l,l", [bar_ptr, target], dtype=tl.int32, is_pure=False, pack=1)
    tl.debug_barrier()


@triton.jit
def _prefetch_share(base, n_elems, pid, nprog, STRIDE: tl.constexpr, BLOCK_LINES: tl.constexpr, ASM: tl.constexpr):
    """Asks L2 to fetch this program's share of the n_elems elements at `base` (decode.TUNE's PREFETCH): the
    128-byte lines pid * per .. (pid + 1) * per - 1 of them, STRIDE elements a line, BLOCK_LINES at a time, with PTX
    prefetch.global.L2 (nothing waits for it; nothing under the interpreter, which cannot run PTX)."""
    if ASM:
        lines = tl.cdiv(n_elems, STRIDE)
        per = tl.cdiv(lines, nprog)
        for start in range(pid * per, tl.minimum(pid * per + per, lines), BLOCK_LINES):
            idx = start + tl.arange(0, BLOCK_LINES)
            ok = (idx < tl.minimum(pid * per + per, lines)).to(tl.int32)
            ptrs = base + idx.to(tl.int64) * STRIDE
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.u32 $0, 0; }", "=r,l,r",
                [ptrs, ok], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _prefetch_rows(base, first, count, row_len, STRIDE: tl.constexpr, ASM: tl.constexpr):
    """Asks L2 for rows first .. first + count - 1 (none if count <= 0) of the row-major matrix at `base`, row_len
    elements a row: one item's weight tile (decode.TUNE's L2_TILES)."""
    _prefetch_share(base + first.to(tl.int64) * row_len, tl.maximum(count, 0) * row_len, 0, 1, STRIDE, 256, ASM)


@triton.jit
def _prefetch_layer(layer, in_tab, xproj_tab, dtw_tab, out_tab, pid, nprog, Dm, Di, R, X, ADT: tl.constexpr,
                    STRIDE: tl.constexpr, ASM: tl.constexpr):
    """This program's share of layer `layer`'s in_proj, x_proj, dt_proj and out_proj weights (all but a few
    hundred KB of the layer) into L2, so that the phases' weight loads of that layer hit L2."""
    _prefetch_share(_layer_ptr(in_tab, layer, ADT), 2 * Di * Dm, pid, nprog, STRIDE, 256, ASM)
    _prefetch_share(_layer_ptr(xproj_tab, layer, ADT), X * Di, pid, nprog, STRIDE, 256, ASM)
    _prefetch_share(_layer_ptr(dtw_tab, layer, ADT), Di * R, pid, nprog, STRIDE, 256, ASM)
    _prefetch_share(_layer_ptr(out_tab, layer, ADT), Dm * Di, pid, nprog, STRIDE, 256, ASM)


@triton.jit
def _traced_arrive(bar_ptr, target, nprog, NO_WAIT: tl.constexpr, pid, trace_ptr, base, n_slots,
                   TRACE: tl.constexpr, ASM: tl.constexpr, RELAXED: tl.constexpr = False):
    """_arrive; under TRACE it first records when this program arrived (the clock and the global time of the
    barrier's row: slot 1 + its number in the launch, from `target`, the count of the barriers before it)."""
    if TRACE:
        tl.debug_barrier()
        clk, ns = _timestamps(pid, ASM)
        row = trace_ptr + (pid * n_slots + target // nprog - base + 1) * 4
        tl.store(row, clk)
        tl.store(row + 2, ns)
    return _arrive(bar_ptr, target, nprog, NO_WAIT, RELAXED)


@triton.jit
def _traced_wait(bar_ptr, target, nprog, NO_WAIT: tl.constexpr, pid, trace_ptr, base, n_slots,
                 TRACE: tl.constexpr, ASM: tl.constexpr, SPIN: tl.constexpr = False):
    """_wait (SPIN: its PTX poll); under TRACE it then records when this program left (the row's other two
    entries)."""
    _wait(bar_ptr, target, NO_WAIT, SPIN, ASM)
    if TRACE:
        clk, ns = _timestamps(pid, ASM)
        row = trace_ptr + (pid * n_slots + target // nprog - base) * 4
        tl.store(row + 1, clk)
        tl.store(row + 3, ns)


@triton.jit
def _barriers_done(bar_ptr, nprog):
    """How many grid barriers the counter has completed (int64), read at a launch's start: exact then, since no
    barrier can complete before this program has arrived at it."""
    return tl.atomic_add(bar_ptr, 0, sem="relaxed", scope="gpu") // nprog


@triton.jit
def _sm_id(pid, ASM: tl.constexpr):
    """The SM this program runs on (PTX %smid), int64; 0 under the interpreter. `pid` only gives the asm an
    operand."""
    if ASM:
        return tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [pid], dtype=tl.int32, is_pure=False,
                                         pack=1).to(tl.int64)
    return pid.to(tl.int64) * 0


@triton.jit
def _role(pid, role_ptr, n, ASM: tl.constexpr):
    """Program pid's role (decode.TUNE's ROLES): role_ptr[the SM it runs on], a permutation of range(n) by SM id,
    where the GPU numbers its SMs 0..n-1 (PTX %nsmid == n, the grid: one program an SM); else, and under the
    interpreter, pid. The block scheduler's own placement puts consecutive programs on the two SMs of a TPC and
    the last ones (the prefetchers) on a few TPCs of each GPC; a table spreads them over the chip."""
    if ASM:
        n_sm = tl.inline_asm_elementwise("mov.u32 $0, %nsmid;", "=r,r", [pid], dtype=tl.int32, is_pure=True, pack=1)
        if n_sm == n:
            pid = tl.load(role_ptr + _sm_id(pid, ASM)).to(tl.int32)
    return pid


@triton.jit
def _timestamps(pid, ASM: tl.constexpr):
    """(SM clock cycles, global timer ns) now, int64: PTX %clock64 and %globaltimer; (0, 0) under the interpreter.
    `pid` only gives the asm an operand (its value is unused)."""
    if ASM:
        clk = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [pid], dtype=tl.int64, is_pure=False, pack=1)
        ns = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [pid], dtype=tl.int64, is_pure=False,
                                       pack=1)
    else:
        clk = pid.to(tl.int64) * 0
        ns = clk
    return clk, ns


@triton.jit
def _stamp(trace_ptr, pid, slot, n_slots, clk0, clk1, ns0, ns1):
    """Row (pid, slot) of the trace (programs, n_slots, 4) int64: clocks and global times before and after."""
    row = trace_ptr + (pid * n_slots + slot) * 4
    tl.store(row, clk0)
    tl.store(row + 1, clk1)
    tl.store(row + 2, ns0)
    tl.store(row + 3, ns1)


@triton.jit
def _trace_now(pid, TRACE: tl.constexpr, ASM: tl.constexpr):
    """(clock, global time) once every thread of the program has got here (TRACE under FLAGGED: before and after
    each wait for other programs' values); (0, 0) without TRACE."""
    clk = pid.to(tl.int64) * 0
    ns = clk
    if TRACE:
        tl.debug_barrier()
        clk, ns = _timestamps(pid, ASM)
    return clk, ns


@triton.jit
def _trace_wait(trace_ptr, pid, slot, n_slots, clk0, ns0, TRACE: tl.constexpr, ASM: tl.constexpr):
    """Records a wait under FLAGGED (TRACE): it began at (clk0, ns0) and ends now; slot as a barrier's would be."""
    if TRACE:
        clk1, ns1 = _trace_now(pid, TRACE, ASM)
        _stamp(trace_ptr, pid, slot, n_slots, clk0, clk1, ns0, ns1)


@triton.jit
def _traced_grid_barrier(bar_ptr, nprog, pid, trace_ptr, base, n_slots, ASM: tl.constexpr):
    """_grid_barrier that also records when this program arrived and left (decode.TUNE's TRACE=1): in slot 1 + the
    barrier's number in this launch (its episode of the counter less `base`, the episode at launch)."""
    tl.debug_barrier()
    clk0, ns0 = _timestamps(pid, ASM)
    old = tl.atomic_add(bar_ptr, 1, sem="acq_rel", scope="gpu")
    target = (old // nprog + 1) * nprog
    while tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu") < target:
        pass
    tl.debug_barrier()
    clk1, ns1 = _timestamps(pid, ASM)
    _stamp(trace_ptr, pid, 1 + old // nprog - base, n_slots, clk0, clk1, ns0, ns1)


@triton.jit
def _barrier(bar_ptr, pid, nprog, epoch, NO_WAIT: tl.constexpr, BARRIER: tl.constexpr, BLOCK_P: tl.constexpr,
             ASM: tl.constexpr, trace_ptr, base, n_slots, TRACE: tl.constexpr):
    """The grid barrier BARRIER selects: 0 the counter (_grid_barrier; _traced_grid_barrier under TRACE), 1 the flags
    (_flag_barrier). Returns the program's epoch (only the flags use it)."""
    if BARRIER == 1:
        epoch = _flag_barrier(bar_ptr, pid, nprog, epoch, NO_WAIT, BLOCK_P, ASM)
    elif TRACE and not NO_WAIT:
        _traced_grid_barrier(bar_ptr, nprog, pid, trace_ptr, base, n_slots, ASM)
    else:
        _grid_barrier(bar_ptr, nprog, NO_WAIT)
    return epoch


@triton.jit
def _phase_wait(bar_ptr, ticket, pid, nprog, epoch, NO_WAIT: tl.constexpr, BARRIER: tl.constexpr,
                BLOCK_P: tl.constexpr, ASM: tl.constexpr, trace_ptr, base, n_slots, TRACE: tl.constexpr,
                ARRIVE_FIRST: tl.constexpr):
    """What ends a phase's prologue: under ARRIVE_FIRST the polls of the barrier this program already arrived at
    (`ticket`, from _traced_arrive), else the whole barrier BARRIER selects. Returns the epoch (flags only)."""
    if ARRIVE_FIRST:
        _traced_wait(bar_ptr, ticket, nprog, NO_WAIT, pid, trace_ptr, base, n_slots, TRACE, ASM)
    else:
        epoch = _barrier(bar_ptr, pid, nprog, epoch, NO_WAIT, BARRIER, BLOCK_P, ASM, trace_ptr, base, n_slots, TRACE)
    return epoch


@triton.jit
def _item_rows(item, BLOCK: tl.constexpr, PER: tl.constexpr, n, ONE_ITEM: tl.constexpr):
    """The rows (or channels) of work item `item`: BLOCK of them; under ONE_ITEM PER of them (any count <= BLOCK,
    planned from the grid so that each program has one item), the lanes past PER set to n so that every `< n` mask
    drops them."""
    if ONE_ITEM:
        lane = tl.arange(0, BLOCK)
        rows = tl.where(lane < PER, item * PER + lane, n)
    else:
        rows = item * BLOCK + tl.arange(0, BLOCK)
    return rows


@triton.jit
def _layer_ptr(tab, layer, DT: tl.constexpr):
    """Layer `layer`'s tensor from an int64 table of data pointers. PyTorch allocations start on 16-byte (in fact
    512-byte) boundaries and the host checks every table entry for it, so the compiler is told: without that it cannot
    prove any alignment of a pointer read from memory and loads every element on its own."""
    return tl.multiple_of(tl.load(tab + layer).to(tl.pointer_type(DT)), 16)


@triton.jit
def _round(x, ADT: tl.constexpr):
    """fp32 -> the activation dtype -> fp32 (what storing and reloading a torch result would do)."""
    return x.to(ADT).to(tl.float32)


@triton.jit
def _exp2_ftz(x, ASM: tl.constexpr):
    """2^x (fp32): on a GPU one ex2.approx.ftz.f32, whose results below 2^-126 flush to zero (tl.exp2 spends three
    more instructions a value keeping them); tl.exp2 under the interpreter, which cannot run PTX."""
    if ASM:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    return tl.exp2(x)


@triton.jit
def _fast_exp(x, ASM: tl.constexpr):
    """e^x (fp32) by _exp2_ftz."""
    return _exp2_ftz(x * 1.4426950408889634, ASM)


@triton.jit
def _silu(x, ASM: tl.constexpr):
    """x * sigmoid(x) (fp32), e^-x by _fast_exp."""
    return x / (1.0 + _fast_exp(-x, ASM))


@triton.jit
def _softplus(x, ASM: tl.constexpr):
    """log(1 + e^x) (fp32), x itself past 20 (torch's threshold). On a GPU by ex2.approx and lg2.approx, relative
    error ~1e-7: tl.log is libdevice's 25-instruction polynomial, and the softplus of dt lies on the decoding step's
    critical path."""
    if ASM:
        log2 = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + _fast_exp(x, ASM)],
                                         dtype=tl.float32, is_pure=True, pack=1)
        return tl.where(x <= 20.0, log2 * 0.6931471805599453, x)
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _put(ptrs, value, mask, tag, FLAGGED: tl.constexpr, ASM: tl.constexpr):
    """Stores the fp32 `value` for other programs to read with _get. Under FLAGGED (decode.TUNE) as 64-bit words, the
    value's bits below `tag` (the writing layer's tag, < 2^31), so that a reader takes a word as written once it
    carries the tag: no fence and no barrier between writer and reader (an aligned 8-byte access is seen whole). On
    the GPU each word goes out as a relaxed store at GPU scope, so that the reader's polling is not a data race."""
    if FLAGGED:
        word = (value.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF) | (tag << 32)
        if ASM:
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.relaxed.gpu.global.b64 [$1], $2; mov.u32 $0, 0; }",
                "=r,l,l,r", [ptrs, word, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
        else:
            tl.store(ptrs, word, mask=mask)
    else:
        tl.store(ptrs, value, mask=mask)


@triton.jit
def _get(ptrs, mask, tag, FLAGGED: tl.constexpr):
    """fp32 values written by _put (0 where masked); under FLAGGED it reads again until every masked word carries
    `tag`. Without FLAGGED the grid barrier before the phase has made them visible; read from L2 (.cg)."""
    if FLAGGED:
        words = tl.load(ptrs, mask=mask, other=0, volatile=True)
        stale = tl.sum((mask & ((words >> 32) != tag)).to(tl.int32))
        while stale > 0:
            words = tl.load(ptrs, mask=mask, other=0, volatile=True)
            stale = tl.sum((mask & ((words >> 32) != tag)).to(tl.int32))
        values = tl.where(mask, (words & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
    else:
        values = tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg")
    return values


@triton.jit
def _residual_row(layer, b, tok_ptr, emb_ptr, resid_ptr, offs, ok, Dm, ADT: tl.constexpr):
    """Row b of the fp32 residual stream entering `layer` (the embedding for layer 0)."""
    if layer == 0:
        tok = tl.load(tok_ptr + b).to(tl.int64)
        s = tl.load(emb_ptr + tok * Dm + offs, mask=ok, other=0.0).to(tl.float32)
    else:
        s = tl.load(resid_ptr + b * Dm + offs, mask=ok, other=0.0, cache_modifier=".cg")
    return s


@triton.jit
def _normed_row(layer, b, tok_ptr, emb_ptr, resid_ptr, norm_w, offs, ok, Dm, eps, ADT: tl.constexpr):
    """rmsnorm of residual row b, rounded to the activation dtype (as the norm module returns it)."""
    s = _residual_row(layer, b, tok_ptr, emb_ptr, resid_ptr, offs, ok, Dm, ADT)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=0) / Dm + eps)
    return _round(s * rstd * norm_w, ADT)


@triton.jit
def _residual_tile(layer, tok_ptr, emb_ptr, resid_ptr, offs_b, b_ok, offs, ok, Dm, tag, FLAGGED: tl.constexpr):
    """The fp32 residual stream entering `layer` (the embedding for layer 0), every batch row: (BLOCK_B, len(offs));
    `tag`: the tag of the layer that wrote it (FLAGGED)."""
    mask = b_ok[:, None] & ok[None, :]
    if layer == 0:
        tok = tl.load(tok_ptr + offs_b, mask=b_ok, other=0).to(tl.int64)
        s = tl.load(emb_ptr + tok[:, None] * Dm + offs[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        s = _get(resid_ptr + offs_b[:, None] * Dm + offs[None, :], mask, tag, FLAGGED)
    return s


@triton.jit
def _normed_tile(layer, tok_ptr, emb_ptr, resid_ptr, norm_w, offs_b, b_ok, offs, ok, Dm, eps, ADT: tl.constexpr,
                 tag, FLAGGED: tl.constexpr):
    """rmsnorm of every batch row of the residual, rounded to the activation dtype: (BLOCK_B, BLOCK_DM)."""
    s = _residual_tile(layer, tok_ptr, emb_ptr, resid_ptr, offs_b, b_ok, offs, ok, Dm, tag, FLAGGED)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / Dm + eps)
    return _round(s * rstd[:, None] * norm_w[None, :], ADT)


@triton.jit
def _conv_window_tail(conv_st, ch, c_ok, offs_b, b_ok, offs_w, Di, W):
    """The newest W - 1 entries of every batch row's conv window for channels `ch`, shifted to the front (the last
    lane is 0): (BLOCK_B, CH, BLOCK_W)."""
    w3 = offs_w[None, None, :]
    row3 = conv_st + offs_b[:, None, None] * Di * W + ch[None, :, None] * W
    return tl.load(row3 + w3 + 1, mask=(b_ok[:, None] & c_ok[None, :])[:, :, None] & (w3 + 1 < W), other=0.0)


@triton.jit
def _ssm_state_ptrs(ssm, ch, c_ok, offs_b, b_ok, offs_n, n_ok, Di, N):
    """Pointers to every batch row's SSM state of channels `ch` and their mask: (BLOCK_B, CH, BLOCK_N)."""
    ptrs = ssm + offs_b[:, None, None] * Di * N + ch[None, :, None] * N + offs_n[None, None, :]
    return ptrs, (b_ok[:, None] & c_ok[None, :])[:, :, None] & n_ok[None, None, :]


@triton.jit
def _rows_dot(w, x):
    """(BLOCK_B, ROWS): every batch row of x (BLOCK_B, K) against every row of the weight tile w (ROWS, K), fp32."""
    if x.shape[0] == 1:  # a batch of one as a 2-d product: the 3-d one's layout spreads the sum over more lanes
        out = tl.sum(w.to(tl.float32) * tl.reshape(x, (x.shape[1],))[None, :], axis=1)[None, :]
    else:
        out = tl.sum(w.to(tl.float32)[None, :, :] * x[:, None, :], axis=2)
    return out


@triton.jit
def _cols_dot(w, x):
    """(BLOCK_B, COLS): every batch row of x (BLOCK_B, ROWS) against every column of w (ROWS, COLS), fp32 (as
    _rows_dot, a batch of one without the 3-d product, whose layout spreads the reduction over more lanes)."""
    if x.shape[0] == 1:
        out = tl.sum(w * tl.reshape(x, (x.shape[1],))[:, None], axis=0)[None, :]
    else:
        out = tl.sum(w[None, :, :] * x[:, :, None], axis=1)
    return out


@triton.jit
def _l2_prefetch(ptr, nbytes, part, parts, LANES: tl.constexpr, CHUNK: tl.constexpr, ASM: tl.constexpr):
    """Asks L2 for share `part` of `parts` of the `nbytes` bytes at ptr (16-byte aligned): bulk prefetches
    (cp.async.bulk.prefetch.L2, sm_90) of CHUNK bytes, LANES at a time; nothing waits for them. A last piece under 16
    bytes is left out; nothing under the interpreter, which cannot run PTX."""
    if ASM:
        base = ptr.to(tl.pointer_type(tl.int8))
        per = tl.cdiv(tl.cdiv(nbytes, parts), CHUNK) * CHUNK
        start = part * per
        end = tl.minimum(start + per, nbytes)
        for first in range(start, end, LANES * CHUNK):
            offs = first + tl.arange(0, LANES).to(tl.int64) * CHUNK
            size = tl.minimum(end - offs, CHUNK) // 16 * 16
            go = (offs < end) & (size > 0)
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
                "=r,l,r,r", [base + offs, size.to(tl.int32), go.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _nap(ASM: tl.constexpr):
    """A pause of about 0.2 us between polls that need not be prompt (nothing under the interpreter)."""
    if ASM:
        tl.inline_asm_elementwise("nanosleep.u32 200; mov.u32 $0, 0;", "=r", [], dtype=tl.int32, is_pure=False,
                                  pack=1)


@triton.jit
def _prefetch_layers(bar_ptr, part, parts, n_cons, head_ptr, norm_tab, in_tab, convw_tab, convb_tab, xproj_tab,
                     dtw_tab, dtb_tab, alog_tab, d_tab, out_tab, conv_tab, ssm_tab, batch, n_layer, Dm, Di, N, R, W,
                     V, ADT: tl.constexpr, CONV_DT: tl.constexpr, ALOG_DT: tl.constexpr, D_DT: tl.constexpr,
                     DTB_DT: tl.constexpr, CB_DT: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
                     PER_LAYER: tl.constexpr, AHEAD: tl.constexpr, NO_WAIT: tl.constexpr, LANES: tl.constexpr,
                     CHUNK: tl.constexpr, ASM: tl.constexpr):
    """Prefetcher `part` of `parts` (decode.TUNE's PREFETCHERS: the kernel's last programs, which do no other work and
    meet no barrier): asks L2 for its share of every tensor a layer reads, in the order the layer reads them, once the
    n_cons working programs have begun layer - AHEAD (the first AHEAD + 1 layers at once), then for the head. The
    working programs meet PER_LAYER barriers a layer. A prefetcher counts the launches it has served in its own word,
    bar_ptr[_LAUNCHES + part], so it knows the barrier count at the launch's start exactly, however late it starts: it
    never waits for a barrier of a later launch, which could not come while this one runs."""
    launch = tl.load(bar_ptr + _LAUNCHES + part)
    done_before = launch * PER_LAYER * n_layer  # the barriers of the earlier launches
    a = ADT.primitive_bitwidth // 8
    X = R + 2 * N
    for layer in range(n_layer):
        if layer > AHEAD and not NO_WAIT:  # NO_WAIT (timing only): no arrivals to pace by
            need = (done_before + PER_LAYER * (layer - AHEAD)) * n_cons  # arrivals
            while tl.load(bar_ptr, volatile=True) < need:
                _nap(ASM)
        _l2_prefetch(_layer_ptr(norm_tab, layer, ADT), Dm * a, part, parts, LANES, CHUNK, ASM)
        _l2_prefetch(_layer_ptr(in_tab, layer, ADT), 2 * Di * Dm * a, part, parts, LANES, CHUNK, ASM)
        _l2_prefetch(_layer_ptr(convw_tab, layer, ADT), Di * W * a, part, parts, LANES, CHUNK, ASM)
        if HAS_CONV_BIAS:
            _l2_prefetch(_layer_ptr(convb_tab, layer, CB_DT), Di * (CB_DT.primitive_bitwidth // 8), part, parts,
                         LANES, CHUNK, ASM)
        _l2_prefetch(_layer_ptr(conv_tab, layer, CONV_DT), batch * Di * W * (CONV_DT.primitive_bitwidth // 8), part,
                     parts, LANES, CHUNK, ASM)
        _l2_prefetch(_layer_ptr(xproj_tab, layer, ADT), X * Di * a, part, parts, LANES, CHUNK, ASM)
        _l2_prefetch(_layer_ptr(dtw_tab, layer, ADT), Di * R * a, part, parts, LANES, CHUNK, ASM)
        _l2_prefetch(_layer_ptr(dtb_tab, layer, DTB_DT), Di * (DTB_DT.primitive_bitwidth // 8), part, parts, LANES,
                     CHUNK, ASM)
        _l2_prefetch(_layer_ptr(alog_tab, layer, ALOG_DT), Di * N * (ALOG_DT.primitive_bitwidth // 8), part, parts,
                     LANES, CHUNK, ASM)
        _l2_prefetch(_layer_ptr(d_tab, layer, D_DT), Di * (D_DT.primitive_bitwidth // 8), part, parts, LANES, CHUNK,
                     ASM)
        _l2_prefetch(_layer_ptr(ssm_tab, layer, tl.float32), batch * Di * N * 4, part, parts, LANES, CHUNK, ASM)
        _l2_prefetch(_layer_ptr(out_tab, layer, ADT), Dm * Di * a, part, parts, LANES, CHUNK, ASM)
    _l2_prefetch(head_ptr, V * Dm * a, part, parts, LANES, CHUNK, ASM)
    tl.store(bar_ptr + _LAUNCHES + part, launch + 1)


@triton.jit(do_not_specialize=["batch"])  # batch 1 as a constant lets the compiler hoist too much
def _decode_step_kernel(
    tok_ptr, emb_ptr, head_ptr, head_bias_ptr, norm_f_ptr, logits_ptr,
    norm_tab, in_tab, convw_tab, convb_tab, xproj_tab, dtw_tab, dtb_tab, alog_tab, d_tab, out_tab,
    conv_tab, ssm_tab,
    resid_ptr, xz_ptr, xc_ptr, part_ptr, y_ptr, bar_ptr, trace_ptr,
    batch, n_layer, Dm, Di, N, R, W, V, eps,
    ADT: tl.constexpr, CONV_DT: tl.constexpr, ALOG_DT: tl.constexpr, D_DT: tl.constexpr, DTB_DT: tl.constexpr,
    CB_DT: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_HEAD_BIAS: tl.constexpr,
    BLOCK_DM: tl.constexpr, BLOCK_DI: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_J: tl.constexpr,
    ROWS_IN: tl.constexpr, CH_CONV: tl.constexpr, CH_SSM: tl.constexpr, ROWS_OUT: tl.constexpr,
    ROWS_HEAD: tl.constexpr, MERGE_IN_CONV: tl.constexpr,
    NO_WAIT: tl.constexpr, SKIP_P1: tl.constexpr, SKIP_P2: tl.constexpr, SKIP_P3: tl.constexpr,
    SKIP_P4: tl.constexpr, SKIP_HEAD: tl.constexpr,
    BARRIER: tl.constexpr = 0, BLOCK_P: tl.constexpr = 1, ASM: tl.constexpr = True,
    ONE_ITEM: tl.constexpr = False, PER_IN: tl.constexpr = 1, PER_CONV: tl.constexpr = 1, PER_SSM: tl.constexpr = 1,
    PER_OUT: tl.constexpr = 1, PER_HEAD: tl.constexpr = 1,
    BATCH_TILE: tl.constexpr = False, BLOCK_B: tl.constexpr = 1,
    LOCAL_P2: tl.constexpr = False, BLOCK_Q: tl.constexpr = 1, TRACE: tl.constexpr = False,
    ARRIVE_FIRST: tl.constexpr = False, EARLY_LOADS: tl.constexpr = False, PREFETCH: tl.constexpr = 0,
    LINE_ELEMS: tl.constexpr = 64, FLAGGED: tl.constexpr = False, JOINT_READS: tl.constexpr = False,
    L2_TILES: tl.constexpr = False, PREFETCHERS: tl.constexpr = 0, AHEAD: tl.constexpr = 1,
):
    # NO_WAIT and SKIP_*: a breakdown of the step time, results wrong (decode.TUNE). A skipped phase drops its loads
    # and its work but keeps its barrier, so every program still meets every barrier and nothing can deadlock.
    # BARRIER, ONE_ITEM, BATCH_TILE, LOCAL_P2: opt-in variants (decode.TUNE); with their defaults the code below is
    # the kernel as it was (PER_* equal the block sizes when ONE_ITEM is off).
    # LOCAL_P2 (with BARRIER=1): no grid barrier between in_proj and the conv phase; each in_proj item raises its
    # ready flag (slot nprog + item of bar_ptr) to the program's epoch + 1 once its rows are stored, and a conv item
    # waits for the flags of the in_proj items that wrote its channels' u rows. Epochs are equal across programs at
    # the same point and grow by 3 a layer, so a flag left from an earlier layer or launch is always behind.
    pid = tl.program_id(0)
    nprog = tl.num_programs(0) - PREFETCHERS  # the programs that work and meet at the barriers
    if PREFETCHERS > 0 and pid >= nprog:  # (the counter barrier only: decode.plan_constexprs)
        _prefetch_layers(bar_ptr, pid - nprog, PREFETCHERS, nprog, head_ptr, norm_tab, in_tab, convw_tab, convb_tab,
                         xproj_tab, dtw_tab, dtb_tab, alog_tab, d_tab, out_tab, conv_tab, ssm_tab, batch, n_layer, Dm,
                         Di, N, R, W, V, ADT, CONV_DT, ALOG_DT, D_DT, DTB_DT, CB_DT, HAS_CONV_BIAS,
                         3 if MERGE_IN_CONV else 4, AHEAD, NO_WAIT, 256, 4096, ASM)
        return
    X = R + 2 * N
    offs_m = tl.arange(0, BLOCK_DM)
    m_ok = offs_m < Dm
    offs_i = tl.arange(0, BLOCK_DI)
    i_ok = offs_i < Di
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    offs_w = tl.arange(0, BLOCK_W)
    w_ok = offs_w < W
    offs_x = tl.arange(0, BLOCK_X)
    x_ok = offs_x < X
    offs_j = tl.arange(0, BLOCK_J)
    n_in = tl.cdiv(2 * Di, PER_IN)
    n_conv = tl.cdiv(Di, PER_CONV)
    n_ssm = tl.cdiv(Di, PER_SSM)
    n_out = tl.cdiv(Dm, PER_OUT)
    if BATCH_TILE:  # the batch rows as one tile dimension
        offs_b = tl.arange(0, BLOCK_B)
        b_ok = offs_b < batch
    # FLAGGED: what layer l writes for other programs carries the tag tag0 + l + 1 (mod 2^31), tag0 from the count
    # of launches so far (every program adds one to slot 0 of bar_ptr as it ends, so that count // nprog is exact
    # at a program's start whatever the others have done): a word left from an earlier layer or launch never carries
    # the tag a reader waits for
    tag0 = pid.to(tl.int64) * 0
    if FLAGGED:
        tag0 = _barriers_done(bar_ptr, nprog) * (n_layer + 1)
    if BARRIER == 1:
        epoch = tl.load(bar_ptr + pid, cache_modifier=".cg")  # this program's flag: the barriers met so far
    else:
        epoch = pid.to(tl.int64)  # unused
    # TRACE: when each program started, arrived at and left each barrier, and ended (trace_ptr: (programs, n_slots,
    # 4) int64; slot 0 the start (its second entry the program's SM), 1 + i the launch's i-th barrier, the last slot
    # the end)
    n_slots = 4 * n_layer + 2
    if MERGE_IN_CONV:  # three barriers a layer
        n_slots = 3 * n_layer + 2
    trace_base = 0
    if TRACE:
        trace_base = _barriers_done(bar_ptr, nprog)
        clk, ns = _timestamps(pid, ASM)
        _stamp(trace_ptr, pid, 0, n_slots, clk, _sm_id(pid, ASM), ns, ns)

    # ARRIVE_FIRST: the count the current barrier waits for, from the barriers completed before the launch
    ticket = nprog.to(tl.int64) * 0
    if ARRIVE_FIRST:
        ticket = _barriers_done(bar_ptr, nprog) * nprog
    # PREFETCH = k: the weights of layers 0 .. k - 1 now; each layer then asks for those of the layer k ahead while
    # its own phases run
    for ahead in tl.static_range(PREFETCH):
        if ahead < n_layer:
            _prefetch_layer(ahead, in_tab, xproj_tab, dtw_tab, out_tab, pid, nprog, Dm, Di, R, X, ADT, LINE_ELEMS,
                            ASM)
    for layer in range(n_layer):
        tag_in = (tag0 + layer) & 0x7FFFFFFF  # FLAGGED: the residual entering this layer carries it
        tag_out = (tag0 + layer + 1) & 0x7FFFFFFF  # and all this layer writes for other programs
        # ---- P1: xz = rmsnorm(residual) @ W_in^T, rounded -------------------------------------------------------
        if not MERGE_IN_CONV:
            if ARRIVE_FIRST:
                if layer > 0:
                    ticket = _traced_arrive(bar_ptr, ticket, nprog, NO_WAIT,
                                            pid, trace_ptr, trace_base, n_slots, TRACE, ASM)
            if not SKIP_P1:
                w_in = _layer_ptr(in_tab, layer, ADT)
                norm_w = tl.load(_layer_ptr(norm_tab, layer, ADT) + offs_m, mask=m_ok, other=0.0).to(tl.float32)
                item = pid
                rows = _item_rows(item, ROWS_IN, PER_IN, 2 * Di, ONE_ITEM)
                if L2_TILES:
                    _prefetch_rows(w_in, item * PER_IN, tl.minimum(PER_IN, 2 * Di - item * PER_IN), Dm, LINE_ELEMS,
                                   ASM)
                else:
                    tile = tl.load(w_in + rows.to(tl.int64)[:, None] * Dm + offs_m[None, :],
                                   mask=(rows < 2 * Di)[:, None] & m_ok[None, :], other=0.0)
            if PREFETCH > 0:
                if layer + PREFETCH < n_layer:
                    _prefetch_layer(layer + PREFETCH, in_tab, xproj_tab, dtw_tab, out_tab, pid, nprog, Dm, Di, R, X,
                                    ADT, LINE_ELEMS, ASM)
            if layer > 0:
                # the previous layer's P4 wrote the residual
                epoch = _phase_wait(bar_ptr, ticket, pid, nprog, epoch, NO_WAIT, BARRIER, BLOCK_P, ASM,
                                    trace_ptr, trace_base, n_slots, TRACE, ARRIVE_FIRST)
            if not SKIP_P1:
                if L2_TILES:  # from L2 now, with the residual: no poll of the barrier queued behind these loads
                    tile = tl.load(w_in + rows.to(tl.int64)[:, None] * Dm + offs_m[None, :],
                                   mask=(rows < 2 * Di)[:, None] & m_ok[None, :], other=0.0)
                if BATCH_TILE:
                    if FLAGGED:
                        # only a program with an item may wait for the residual: nothing waits for one without, so
                        # the next layer could overwrite the residual before it had read it
                        xn_t = tl.zeros([BLOCK_B, BLOCK_DM], dtype=tl.float32)
                        clk0, ns0 = _trace_now(pid, TRACE, ASM)
                        if item < n_in:
                            xn_t = _normed_tile(layer, tok_ptr, emb_ptr, resid_ptr, norm_w, offs_b, b_ok, offs_m,
                                                m_ok, Dm, eps, ADT, tag_in, FLAGGED)
                        if layer > 0:  # (layer 0 reads the embedding)
                            _trace_wait(trace_ptr, pid, 4 * layer, n_slots, clk0, ns0, TRACE, ASM)
                    else:
                        xn_t = _normed_tile(layer, tok_ptr, emb_ptr, resid_ptr, norm_w, offs_b, b_ok, offs_m, m_ok,
                                            Dm, eps, ADT, tag0, FLAGGED)
                while item < n_in:
                    rows_ok = rows < 2 * Di
                    if BATCH_TILE:
                        acc = _rows_dot(tile, xn_t)
                        _put(xz_ptr + offs_b[:, None] * 2 * Di + rows[None, :], _round(acc, ADT),
                             b_ok[:, None] & rows_ok[None, :], tag_out, FLAGGED, ASM)
                    else:
                        wt = tile.to(tl.float32)
                        for b in range(batch):
                            xn = _normed_row(layer, b, tok_ptr, emb_ptr, resid_ptr, norm_w, offs_m, m_ok, Dm, eps,
                                             ADT)
                            acc = tl.sum(wt * xn[None, :], axis=1)
                            tl.store(xz_ptr + b * 2 * Di + rows, _round(acc, ADT), mask=rows_ok)
                    if LOCAL_P2:
                        _raise_flag(bar_ptr + nprog + item, epoch + 1, ASM)
                    item += nprog
                    rows = _item_rows(item, ROWS_IN, PER_IN, 2 * Di, ONE_ITEM)
                    tile = tl.load(w_in + rows.to(tl.int64)[:, None] * Dm + offs_m[None, :],
                                   mask=(rows < 2 * Di)[:, None] & m_ok[None, :], other=0.0)

        # ---- P2: conv window step and partial x_proj sums ------------------------------------------------------
        if ARRIVE_FIRST:
            if MERGE_IN_CONV:
                if layer > 0:  # the previous layer's P4 wrote the residual
                    ticket = _traced_arrive(bar_ptr, ticket, nprog, NO_WAIT,
                                            pid, trace_ptr, trace_base, n_slots, TRACE, ASM)
            else:
                ticket = _traced_arrive(bar_ptr, ticket, nprog, NO_WAIT,
                                        pid, trace_ptr, trace_base, n_slots, TRACE, ASM)  # P1 wrote xz
        if not SKIP_P2:
            conv_w = _layer_ptr(convw_tab, layer, ADT)
            conv_st = _layer_ptr(conv_tab, layer, CONV_DT)
            w_x = _layer_ptr(xproj_tab, layer, ADT)
            if HAS_CONV_BIAS:  # once a phase: a table read per item would be one more round trip before the next
                conv_b = _layer_ptr(convb_tab, layer, CB_DT)
            item = pid
            ch = _item_rows(item, CH_CONV, PER_CONV, Di, ONE_ITEM)
            c_ok = ch < Di
            taps = tl.load(conv_w + ch[:, None] * W + offs_w[None, :], mask=c_ok[:, None] & w_ok[None, :], other=0.0)
            wxt = tl.load(w_x + offs_x[None, :] * Di + ch[:, None], mask=c_ok[:, None] & x_ok[None, :], other=0.0)
            if EARLY_LOADS:  # this program's own channels: nothing another program writes in this phase
                older = _conv_window_tail(conv_st, ch, c_ok, offs_b, b_ok, offs_w, Di, W)
                if HAS_CONV_BIAS:
                    cbias = tl.load(conv_b + ch, mask=c_ok, other=0.0).to(tl.float32)
            if MERGE_IN_CONV:
                # in_proj's u and z rows of this block's channels here, so no barrier between in_proj and the conv
                w_in = _layer_ptr(in_tab, layer, ADT)
                norm_w = tl.load(_layer_ptr(norm_tab, layer, ADT) + offs_m, mask=m_ok, other=0.0).to(tl.float32)
                wu = tl.load(w_in + ch.to(tl.int64)[:, None] * Dm + offs_m[None, :], mask=c_ok[:, None] & m_ok[None, :],
                             other=0.0)
                wz = tl.load(w_in + (Di + ch).to(tl.int64)[:, None] * Dm + offs_m[None, :],
                             mask=c_ok[:, None] & m_ok[None, :], other=0.0)
        if MERGE_IN_CONV:
            if layer > 0:
                # the previous layer's P4 wrote the residual
                epoch = _phase_wait(bar_ptr, ticket, pid, nprog, epoch, NO_WAIT, BARRIER, BLOCK_P, ASM,
                                    trace_ptr, trace_base, n_slots, TRACE, ARRIVE_FIRST)
        else:
            if ARRIVE_FIRST:
                _traced_wait(bar_ptr, ticket, nprog, NO_WAIT,
                             pid, trace_ptr, trace_base, n_slots, TRACE, ASM)
            elif not LOCAL_P2:
                epoch = _barrier(bar_ptr, pid, nprog, epoch, NO_WAIT, BARRIER, BLOCK_P, ASM,
                                 trace_ptr, trace_base, n_slots, TRACE)  # P1 wrote xz
        if not SKIP_P2:
            if BATCH_TILE and MERGE_IN_CONV:
                xn_t = _normed_tile(layer, tok_ptr, emb_ptr, resid_ptr, norm_w, offs_b, b_ok, offs_m, m_ok, Dm, eps,
                                    ADT, tag_in, FLAGGED)
            if TRACE and FLAGGED:  # a program without a conv item waits for nothing here
                clk0, ns0 = _trace_now(pid, TRACE, ASM)
                clk1, ns1 = clk0, ns0
            while item < n_conv:
                c_ok = ch < Di
                if LOCAL_P2 and not MERGE_IN_CONV and not NO_WAIT and not SKIP_P1:
                    # the in_proj items that wrote u rows item * PER_CONV .. + PER_CONV - 1
                    first = item * PER_CONV // PER_IN
                    last = tl.minimum(item * PER_CONV + PER_CONV, Di) - 1
                    producers = tl.minimum(first + tl.arange(0, BLOCK_Q), last // PER_IN)
                    _wait_flags(bar_ptr + nprog + producers, epoch + 1, ASM)
                taps32 = taps.to(tl.float32)
                wx32 = wxt.to(tl.float32)
                if HAS_CONV_BIAS and not EARLY_LOADS:
                    cbias = tl.load(conv_b + ch, mask=c_ok, other=0.0).to(tl.float32)
                if BATCH_TILE:
                    bc_ok = b_ok[:, None] & c_ok[None, :]
                    w3 = offs_w[None, None, :]
                    row3 = conv_st + offs_b[:, None, None] * Di * W + ch[None, :, None] * W  # (B, CH, 1)
                    if not EARLY_LOADS:
                        older = tl.load(row3 + w3 + 1, mask=bc_ok[:, :, None] & (w3 + 1 < W), other=0.0)
                    if MERGE_IN_CONV:
                        zv = _round(_rows_dot(wz, xn_t), ADT)  # (B, CH)
                        tl.store(xz_ptr + offs_b[:, None] * 2 * Di + Di + ch[None, :], zv, mask=bc_ok)
                        u = _round(_rows_dot(wu, xn_t), ADT).to(CONV_DT)
                    else:
                        if TRACE and FLAGGED:
                            clk0, ns0 = _trace_now(pid, TRACE, ASM)
                        u = _get(xz_ptr + offs_b[:, None] * 2 * Di + ch[None, :], bc_ok, tag_out, FLAGGED).to(CONV_DT)
                        if TRACE and FLAGGED:
                            clk1, ns1 = _trace_now(pid, TRACE, ASM)
                    window = tl.where(w3 == W - 1, u[:, :, None], older)
                    tl.store(row3 + w3, window, mask=bc_ok[:, :, None] & (w3 < W))
                    out = tl.sum(window.to(tl.float32) * taps32[None, :, :], axis=2)  # (B, CH)
                    if HAS_CONV_BIAS:
                        out += cbias[None, :]
                    out = _round(out / (1.0 + tl.exp(-out)), ADT)
                    out = tl.where(bc_ok, out, 0.0)
                    _put(xc_ptr + offs_b[:, None] * Di + ch[None, :], out, bc_ok, tag_out, FLAGGED, ASM)
                    part = _cols_dot(wx32, out)  # (B, BLOCK_X)
                    _put(part_ptr + (item * batch + offs_b[:, None]) * X + offs_x[None, :], part,
                         b_ok[:, None] & x_ok[None, :], tag_out, FLAGGED, ASM)
                if not BATCH_TILE:
                    for b in range(batch):
                        row = conv_st + b * Di * W + ch[:, None] * W  # (CH, 1) window starts, oldest first
                        older = tl.load(row + offs_w[None, :] + 1, mask=c_ok[:, None] & (offs_w[None, :] + 1 < W),
                                        other=0.0)
                        if MERGE_IN_CONV:
                            xn = _normed_row(layer, b, tok_ptr, emb_ptr, resid_ptr, norm_w, offs_m, m_ok, Dm, eps, ADT)
                            zv = _round(tl.sum(wz.to(tl.float32) * xn[None, :], axis=1), ADT)
                            tl.store(xz_ptr + b * 2 * Di + Di + ch, zv, mask=c_ok)
                            u = _round(tl.sum(wu.to(tl.float32) * xn[None, :], axis=1), ADT).to(CONV_DT)
                        else:
                            u = tl.load(xz_ptr + b * 2 * Di + ch, mask=c_ok, other=0.0,
                                        cache_modifier=".cg").to(CONV_DT)
                        window = tl.where(offs_w[None, :] == W - 1, u[:, None], older)
                        tl.store(row + offs_w[None, :], window, mask=c_ok[:, None] & w_ok[None, :])
                        out = tl.sum(window.to(tl.float32) * taps32, axis=1)
                        if HAS_CONV_BIAS:
                            out += cbias
                        out = _round(out / (1.0 + tl.exp(-out)), ADT)
                        out = tl.where(c_ok, out, 0.0)
                        tl.store(xc_ptr + b * Di + ch, out, mask=c_ok)
                        part = tl.sum(wx32 * out[:, None], axis=0)  # (BLOCK_X,)
                        tl.store(part_ptr + (item * batch + b) * X + offs_x, part, mask=x_ok)
                item += nprog
                ch = _item_rows(item, CH_CONV, PER_CONV, Di, ONE_ITEM)
                c_ok = ch < Di
                taps = tl.load(conv_w + ch[:, None] * W + offs_w[None, :], mask=c_ok[:, None] & w_ok[None, :],
                               other=0.0)
                wxt = tl.load(w_x + offs_x[None, :] * Di + ch[:, None], mask=c_ok[:, None] & x_ok[None, :], other=0.0)
                if EARLY_LOADS:
                    older = _conv_window_tail(conv_st, ch, c_ok, offs_b, b_ok, offs_w, Di, W)
                    if HAS_CONV_BIAS:
                        cbias = tl.load(conv_b + ch, mask=c_ok, other=0.0).to(tl.float32)
                if MERGE_IN_CONV:
                    wu = tl.load(w_in + ch.to(tl.int64)[:, None] * Dm + offs_m[None, :],
                                 mask=c_ok[:, None] & m_ok[None, :], other=0.0)
                    wz = tl.load(w_in + (Di + ch).to(tl.int64)[:, None] * Dm + offs_m[None, :],
                                 mask=c_ok[:, None] & m_ok[None, :], other=0.0)
            if TRACE and FLAGGED:
                _stamp(trace_ptr, pid, 4 * layer + 1, n_slots, clk0, clk1, ns0, ns1)

        # ---- P3: SSM state update ------------------------------------------------------------------------------
        if ARRIVE_FIRST:
            ticket = _traced_arrive(bar_ptr, ticket, nprog, NO_WAIT,
                                    pid, trace_ptr, trace_base, n_slots, TRACE, ASM)  # P2 wrote xc and the partial sums
        if not SKIP_P3:
            dt_w = _layer_ptr(dtw_tab, layer, ADT)
            a_log = _layer_ptr(alog_tab, layer, ALOG_DT)
            ssm = _layer_ptr(ssm_tab, layer, tl.float32)
            d_skip = _layer_ptr(d_tab, layer, D_DT)
            dt_bias = _layer_ptr(dtb_tab, layer, DTB_DT)
            item = pid
            ch = _item_rows(item, CH_SSM, PER_SSM, Di, ONE_ITEM)
            c_ok = ch < Di
            wdt = tl.load(dt_w + ch[:, None] * R + offs_r[None, :], mask=c_ok[:, None] & r_ok[None, :], other=0.0)
            alog = tl.load(a_log + ch[:, None] * N + offs_n[None, :], mask=c_ok[:, None] & n_ok[None, :], other=0.0)
            if EARLY_LOADS:  # this program's own channels: nothing another program writes in this phase
                Dv = tl.load(d_skip + ch, mask=c_ok, other=0.0).to(tl.float32)
                dtb = tl.load(dt_bias + ch, mask=c_ok, other=0.0).to(tl.float32)
                h_ptrs, h_ok = _ssm_state_ptrs(ssm, ch, c_ok, offs_b, b_ok, offs_n, n_ok, Di, N)
                h = tl.load(h_ptrs, mask=h_ok, other=0.0)
        epoch = _phase_wait(bar_ptr, ticket, pid, nprog, epoch, NO_WAIT, BARRIER, BLOCK_P, ASM,
                            trace_ptr, trace_base, n_slots, TRACE, ARRIVE_FIRST)  # P2 wrote xc and the partial sums
        if not SKIP_P3:
            if TRACE and FLAGGED:  # a program without an SSM item waits for nothing here
                clk0, ns0 = _trace_now(pid, TRACE, ASM)
                clk1, ns1 = clk0, ns0
            while item < n_ssm:
                c_ok = ch < Di
                cn_ok = c_ok[:, None] & n_ok[None, :]
                wdt32 = wdt.to(tl.float32)
                A = -tl.exp(alog.to(tl.float32))
                if not EARLY_LOADS:
                    Dv = tl.load(d_skip + ch, mask=c_ok, other=0.0).to(tl.float32)
                    dtb = tl.load(dt_bias + ch, mask=c_ok, other=0.0).to(tl.float32)
                if BATCH_TILE:
                    bc_ok = b_ok[:, None] & c_ok[None, :]
                    # x_dbl rows = sums over P2's items of their partial sums, the whole batch at once
                    if TRACE and FLAGGED:
                        clk0, ns0 = _trace_now(pid, TRACE, ASM)
                    if JOINT_READS:  # with the partial sums: one round trip to L2 for all of them
                        x = _get(xc_ptr + offs_b[:, None] * Di + ch[None, :], bc_ok, tag_out, FLAGGED)
                        z = _get(xz_ptr + offs_b[:, None] * 2 * Di + Di + ch[None, :], bc_ok, tag_out, FLAGGED)
                    dt_low = tl.zeros([BLOCK_B, BLOCK_R], dtype=tl.float32)
                    Bv = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
                    Cv = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
                    for j0 in range(0, n_conv, BLOCK_J):
                        js = j0 + offs_j
                        jb_ok = (js < n_conv)[:, None, None] & b_ok[None, :, None]
                        base = part_ptr + (js[:, None, None] * batch + offs_b[None, :, None]) * X
                        parts_r = _get(base + offs_r[None, None, :], jb_ok & r_ok[None, None, :], tag_out, FLAGGED)
                        if not JOINT_READS:
                            dt_low += tl.sum(parts_r, axis=0)
                        parts_b = _get(base + R + offs_n[None, None, :], jb_ok & n_ok[None, None, :], tag_out,
                                       FLAGGED)
                        if not JOINT_READS:
                            Bv += tl.sum(parts_b, axis=0)
                        parts_c = _get(base + R + N + offs_n[None, None, :], jb_ok & n_ok[None, None, :], tag_out,
                                       FLAGGED)
                        if JOINT_READS:  # the sums after the three loads (each ends in bar.sync: no load passes it)
                            dt_low += tl.sum(parts_r, axis=0)
                            Bv += tl.sum(parts_b, axis=0)
                        Cv += tl.sum(parts_c, axis=0)
                    dt_low = _round(dt_low, ADT)
                    Bv = _round(Bv, ADT)
                    Cv = _round(Cv, ADT)
                    dt = _round(_rows_dot(wdt32, dt_low), ADT) + dtb[None, :]  # (B, CH)
                    dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
                    if not JOINT_READS:
                        x = _get(xc_ptr + offs_b[:, None] * Di + ch[None, :], bc_ok, tag_out, FLAGGED)
                        z = _get(xz_ptr + offs_b[:, None] * 2 * Di + Di + ch[None, :], bc_ok, tag_out, FLAGGED)
                    if TRACE and FLAGGED:  # (the wait's end includes dt's small projection)
                        clk1, ns1 = _trace_now(pid, TRACE, ASM)
                    if not EARLY_LOADS:
                        h_ptrs = ssm + offs_b[:, None, None] * Di * N + ch[None, :, None] * N + offs_n[None, None, :]
                        h_ok = bc_ok[:, :, None] & n_ok[None, None, :]
                        h = tl.load(h_ptrs, mask=h_ok, other=0.0)
                    h = tl.exp(dt[:, :, None] * A[None, :, :]) * h + (dt * x)[:, :, None] * Bv[:, None, :]
                    tl.store(h_ptrs, h, mask=h_ok)
                    y = tl.sum(h * Cv[:, None, :], axis=2) + Dv[None, :] * x
                    y = _round(y * (z / (1.0 + tl.exp(-z))), ADT)
                    _put(y_ptr + offs_b[:, None] * Di + ch[None, :], y, bc_ok, tag_out, FLAGGED, ASM)
                if not BATCH_TILE:
                    for b in range(batch):
                        # x_dbl row b = sum over P2's items of their partial sums (a fixed order: deterministic)
                        dt_low = tl.zeros([BLOCK_R], dtype=tl.float32)
                        Bv = tl.zeros([BLOCK_N], dtype=tl.float32)
                        Cv = tl.zeros([BLOCK_N], dtype=tl.float32)
                        for j0 in range(0, n_conv, BLOCK_J):
                            js = j0 + offs_j
                            j_ok = (js < n_conv)[:, None]
                            base = part_ptr + (js[:, None] * batch + b) * X
                            dt_low += tl.sum(tl.load(base + offs_r[None, :], mask=j_ok & r_ok[None, :], other=0.0,
                                                     cache_modifier=".cg"), axis=0)
                            Bv += tl.sum(tl.load(base + R + offs_n[None, :], mask=j_ok & n_ok[None, :], other=0.0,
                                                 cache_modifier=".cg"), axis=0)
                            Cv += tl.sum(tl.load(base + R + N + offs_n[None, :], mask=j_ok & n_ok[None, :], other=0.0,
                                                 cache_modifier=".cg"), axis=0)
                        dt_low = _round(dt_low, ADT)
                        Bv = _round(Bv, ADT)
                        Cv = _round(Cv, ADT)
                        dt = _round(tl.sum(wdt32 * dt_low[None, :], axis=1), ADT) + dtb
                        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
                        x = tl.load(xc_ptr + b * Di + ch, mask=c_ok, other=0.0, cache_modifier=".cg")
                        z = tl.load(xz_ptr + b * 2 * Di + Di + ch, mask=c_ok, other=0.0, cache_modifier=".cg")
                        h_ptrs = ssm + b * Di * N + ch[:, None] * N + offs_n[None, :]
                        h = tl.load(h_ptrs, mask=cn_ok, other=0.0)
                        h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv[None, :]
                        tl.store(h_ptrs, h, mask=cn_ok)
                        y = tl.sum(h * Cv[None, :], axis=1) + Dv * x
                        y = _round(y * (z / (1.0 + tl.exp(-z))), ADT)
                        tl.store(y_ptr + b * Di + ch, y, mask=c_ok)
                item += nprog
                ch = _item_rows(item, CH_SSM, PER_SSM, Di, ONE_ITEM)
                c_ok = ch < Di
                wdt = tl.load(dt_w + ch[:, None] * R + offs_r[None, :], mask=c_ok[:, None] & r_ok[None, :], other=0.0)
                alog = tl.load(a_log + ch[:, None] * N + offs_n[None, :], mask=c_ok[:, None] & n_ok[None, :],
                               other=0.0)
                if EARLY_LOADS:
                    Dv = tl.load(d_skip + ch, mask=c_ok, other=0.0).to(tl.float32)
                    dtb = tl.load(dt_bias + ch, mask=c_ok, other=0.0).to(tl.float32)
                    h_ptrs, h_ok = _ssm_state_ptrs(ssm, ch, c_ok, offs_b, b_ok, offs_n, n_ok, Di, N)
                    h = tl.load(h_ptrs, mask=h_ok, other=0.0)
            if TRACE and FLAGGED:
                _stamp(trace_ptr, pid, 4 * layer + 2, n_slots, clk0, clk1, ns0, ns1)

        # ---- P4: residual += y @ W_out^T ---------------------------------------------------------------------
        if ARRIVE_FIRST:
            ticket = _traced_arrive(bar_ptr, ticket, nprog, NO_WAIT,
                                    pid, trace_ptr, trace_base, n_slots, TRACE, ASM)  # P3 wrote y
        if not SKIP_P4:
            w_out = _layer_ptr(out_tab, layer, ADT)
            item = pid
            rows = _item_rows(item, ROWS_OUT, PER_OUT, Dm, ONE_ITEM)
            if L2_TILES:
                _prefetch_rows(w_out, item * PER_OUT, tl.minimum(PER_OUT, Dm - item * PER_OUT), Di, LINE_ELEMS, ASM)
            else:
                tile = tl.load(w_out + rows.to(tl.int64)[:, None] * Di + offs_i[None, :],
                               mask=(rows < Dm)[:, None] & i_ok[None, :], other=0.0)
            if JOINT_READS:
                # the item's residual rows with its weights, before the barrier: this program wrote them itself (the
                # same item a layer earlier), so the phase's only read from other programs is y
                s = _residual_tile(layer, tok_ptr, emb_ptr, resid_ptr, offs_b, b_ok, rows, rows < Dm, Dm, tag_in,
                                   FLAGGED)
        epoch = _phase_wait(bar_ptr, ticket, pid, nprog, epoch, NO_WAIT, BARRIER, BLOCK_P, ASM,
                            trace_ptr, trace_base, n_slots, TRACE, ARRIVE_FIRST)  # P3 wrote y
        if not SKIP_P4:
            if L2_TILES:
                tile = tl.load(w_out + rows.to(tl.int64)[:, None] * Di + offs_i[None, :],
                               mask=(rows < Dm)[:, None] & i_ok[None, :], other=0.0)
            if BATCH_TILE:
                y_mask = b_ok[:, None] & i_ok[None, :]
                if FLAGGED:  # as in P1: only a program with an item may wait for y
                    y_t = tl.zeros([BLOCK_B, BLOCK_DI], dtype=tl.float32)
                    clk0, ns0 = _trace_now(pid, TRACE, ASM)
                    if item < n_out:
                        y_t = _get(y_ptr + offs_b[:, None] * Di + offs_i[None, :], y_mask, tag_out, FLAGGED)
                    _trace_wait(trace_ptr, pid, 4 * layer + 3, n_slots, clk0, ns0, TRACE, ASM)
                else:
                    y_t = _get(y_ptr + offs_b[:, None] * Di + offs_i[None, :], y_mask, tag0, FLAGGED)
            while item < n_out:
                rows_ok = rows < Dm
                if BATCH_TILE:
                    o = _round(_rows_dot(tile, y_t), ADT)  # (B, ROWS_OUT)
                    if not JOINT_READS:
                        s = _residual_tile(layer, tok_ptr, emb_ptr, resid_ptr, offs_b, b_ok, rows, rows_ok, Dm,
                                           tag_in, FLAGGED)
                    _put(resid_ptr + offs_b[:, None] * Dm + rows[None, :], s + o, b_ok[:, None] & rows_ok[None, :],
                         tag_out, FLAGGED, ASM)
                else:
                    wt = tile.to(tl.float32)
                    for b in range(batch):
                        yv = tl.load(y_ptr + b * Di + offs_i, mask=i_ok, other=0.0, cache_modifier=".cg")
                        o = _round(tl.sum(wt * yv[None, :], axis=1), ADT)
                        s = _residual_row(layer, b, tok_ptr, emb_ptr, resid_ptr, rows, rows_ok, Dm, ADT)
                        tl.store(resid_ptr + b * Dm + rows, s + o, mask=rows_ok)
                item += nprog
                rows = _item_rows(item, ROWS_OUT, PER_OUT, Dm, ONE_ITEM)
                tile = tl.load(w_out + rows.to(tl.int64)[:, None] * Di + offs_i[None, :],
                               mask=(rows < Dm)[:, None] & i_ok[None, :], other=0.0)
                if JOINT_READS:
                    s = _residual_tile(layer, tok_ptr, emb_ptr, resid_ptr, offs_b, b_ok, rows, rows < Dm, Dm,
                                       tag_in, FLAGGED)

    # ---- final norm and head ---------------------------------------------------------------------------------
    if ARRIVE_FIRST:
        ticket = _traced_arrive(bar_ptr, ticket, nprog, NO_WAIT,
                                pid, trace_ptr, trace_base, n_slots, TRACE, ASM)  # the last P4 wrote the residual
    if not SKIP_HEAD:
        norm_f = tl.load(norm_f_ptr + offs_m, mask=m_ok, other=0.0).to(tl.float32)
        item = pid
        rows = _item_rows(item, ROWS_HEAD, PER_HEAD, V, ONE_ITEM)
        tile = tl.load(head_ptr + rows.to(tl.int64)[:, None] * Dm + offs_m[None, :],
                       mask=(rows < V)[:, None] & m_ok[None, :], other=0.0)
    epoch = _phase_wait(bar_ptr, ticket, pid, nprog, epoch, NO_WAIT, BARRIER, BLOCK_P, ASM,
                        trace_ptr, trace_base, n_slots, TRACE, ARRIVE_FIRST)  # the last P4 wrote the residual
    if not SKIP_HEAD:
        n_head = tl.cdiv(V, PER_HEAD)
        if BATCH_TILE:
            clk0, ns0 = _trace_now(pid, TRACE and FLAGGED, ASM)
            hidden_t = _normed_tile(n_layer, tok_ptr, emb_ptr, resid_ptr, norm_f, offs_b, b_ok, offs_m, m_ok, Dm,
                                    eps, ADT, (tag0 + n_layer) & 0x7FFFFFFF, FLAGGED)
            _trace_wait(trace_ptr, pid, 4 * n_layer, n_slots, clk0, ns0, TRACE and FLAGGED, ASM)
        while item < n_head:
            rows_ok = rows < V
            if BATCH_TILE:
                lg = _rows_dot(tile, hidden_t)  # (B, ROWS_HEAD)
                if HAS_HEAD_BIAS:
                    lg += tl.load(head_bias_ptr + rows, mask=rows_ok, other=0.0).to(tl.float32)[None, :]
                tl.store(logits_ptr + offs_b[:, None] * V + rows[None, :], _round(lg, ADT),
                         mask=b_ok[:, None] & rows_ok[None, :])
            else:
                wt = tile.to(tl.float32)
                if HAS_HEAD_BIAS:
                    hb = tl.load(head_bias_ptr + rows, mask=rows_ok, other=0.0).to(tl.float32)
            if not BATCH_TILE:
                for b in range(batch):
                    hidden = _normed_row(n_layer, b, tok_ptr, emb_ptr, resid_ptr, norm_f, offs_m, m_ok, Dm, eps, ADT)
                    lg = tl.sum(wt * hidden[None, :], axis=1)
                    if HAS_HEAD_BIAS:
                        lg += hb
                    tl.store(logits_ptr + b * V + rows, _round(lg, ADT), mask=rows_ok)
            item += nprog
            rows = _item_rows(item, ROWS_HEAD, PER_HEAD, V, ONE_ITEM)
            tile = tl.load(head_ptr + rows.to(tl.int64)[:, None] * Dm + offs_m[None, :],
                           mask=(rows < V)[:, None] & m_ok[None, :], other=0.0)
    if TRACE:
        tl.debug_barrier()
        clk, ns = _timestamps(pid, ASM)
        _stamp(trace_ptr, pid, n_slots - 1, n_slots, clk, clk, ns, ns)
    if FLAGGED:  # this program is done with this launch's tags
        tl.atomic_add(bar_ptr, 1, sem="relaxed", scope="gpu")


def launch(grid: int, args: tuple, constexprs: dict, num_warps: int) -> None:
    """Runs the step kernel on `grid` programs (at most one per SM: they meet at grid barriers)."""
    _decode_step_kernel[(grid,)](*args, **constexprs, num_warps=num_warps)

