"""What one exchange between all the programs of a persistent kernel costs on this GPU: the floor under each phase of
the one-kernel decoding step (kernels/decode_triton.py), measured without any of its weights or arithmetic.

    python scripts/grid_sync_bench.py [--rounds 960] [--warps 8] [--programs 0 (one per SM)]

Every kernel runs `rounds` rounds on one program per SM and reports the time of one round (CUDA events, median of
several launches):

    counter        the step's grid barrier: an acq_rel atomic add on one counter, then atomic polls until it reaches the
                   next multiple of the grid
    counter_ld     the same counter, polled with ld.acquire.gpu instead of atomics
    flags          per-program flags (release store of the round; one vector of acquire loads of every slot)
    gather         the counter barrier, then every program reads a 768-float vector that all of them wrote a slice of
                   (the residual of P1: an all-gather)
    tagged_gather  no barrier: the 768 values as 64-bit words (value, round); each program writes its slice and reads
                   again until every word carries the round (FLAGGED's exchange)
    tagged_reduce  no barrier: 24 programs write 80 partial sums each as tagged words and every program reads them
                   all (x_proj's partial sums of the step's 24 conv items, reduced by each reader)
    atomic_768     the split kernel's out_proj exchange (kernels/decode_split_triton.py): every program adds 768 fp32
                   partial sums with atomics into one of 2 copies of an accumulator, the counter barrier, then every
                   program reads both copies; atomic_768_i64 the same as int64 (its FIXED=1), atomic_80 with x_proj's
                   80 sums
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from seqbackbone.kernels.decode_triton import _flag_barrier, _grid_barrier

from seqbackbone.bench.models import measure_ms

DM = 768
X = 80


@triton.jit
def _poll_ld(ptr):
    """ld.acquire.gpu of an int64 (every lane of a 32-lane vector reads the same address), the smallest lane's."""
    ptrs = ptr + tl.zeros([32], dtype=tl.int32)
    seen = tl.inline_asm_elementwise("ld.acquire.gpu.global.b64 $0, [$1];", "=l,l", [ptrs], dtype=tl.int64,
                                     is_pure=False, pack=1)
    return tl.min(seen, axis=0)


@triton.jit
def _counter_kernel(bar_ptr, rounds, LD_POLL: tl.constexpr):
    """The step's counter barrier (_grid_barrier), or the same counter polled with ld.acquire (LD_POLL)."""
    nprog = tl.num_programs(0)
    for _ in range(rounds):
        if LD_POLL:
            tl.debug_barrier()
            old = tl.atomic_add(bar_ptr, 1, sem="acq_rel", scope="gpu")
            target = (old // nprog + 1) * nprog
            while _poll_ld(bar_ptr) < target:
                pass
            tl.debug_barrier()
        else:
            _grid_barrier(bar_ptr, nprog, False)


@triton.jit
def _flags_kernel(flag_ptr, rounds, BLOCK_P: tl.constexpr):
    """The step's flag barrier (_flag_barrier, decode.TUNE's BARRIER=1)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    epoch = tl.load(flag_ptr + pid, cache_modifier=".cg")
    for _ in range(rounds):
        epoch = _flag_barrier(flag_ptr, pid, nprog, epoch, False, BLOCK_P, True)


@triton.jit
def _gather_kernel(bar_ptr, vec_ptr, out_ptr, rounds, PER: tl.constexpr, BLOCK_DM: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs = tl.arange(0, BLOCK_DM)
    mine = pid * PER + tl.arange(0, PER)
    acc = tl.zeros([BLOCK_DM], dtype=tl.float32)
    for r in range(rounds):
        tl.store(vec_ptr + (r % 2) * BLOCK_DM + mine, mine.to(tl.float32) + r, mask=mine < BLOCK_DM)
        _grid_barrier(bar_ptr, nprog, False)
        acc += tl.load(vec_ptr + (r % 2) * BLOCK_DM + offs, cache_modifier=".cg")
    tl.store(out_ptr + pid * BLOCK_DM + offs, acc)


@triton.jit
def _tagged_kernel(words_ptr, out_ptr, rounds, tag0, PER: tl.constexpr, WIDTH: tl.constexpr,
                   BLOCK: tl.constexpr, REDUCE: tl.constexpr, WRITERS: tl.constexpr = 24):
    """REDUCE=0: the vector of WIDTH words, PER of them from each program; REDUCE=1: programs 0 .. WRITERS - 1 each
    write WIDTH words (partial sums) into their own row, and every program reads every row."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    if REDUCE:
        n_read = WRITERS * WIDTH
        mine = pid * WIDTH + tl.arange(0, PER)
        mine_ok = (tl.arange(0, PER) < WIDTH) & (pid < WRITERS)
    else:
        n_read = WIDTH
        mine = pid * PER + tl.arange(0, PER)
        mine_ok = mine < WIDTH
    read_ok = offs < n_read
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for r in range(rounds):
        tag = (tag0 + r + 1).to(tl.int64)
        base = words_ptr + (r % 2) * BLOCK
        word = ((mine.to(tl.float32) + r).to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF) | (tag << 32)
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.relaxed.gpu.global.b64 [$1], $2; mov.u32 $0, 0; }",
            "=r,l,l,r", [base + mine, word, mine_ok.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
        words = tl.load(base + offs, mask=read_ok, other=0, volatile=True)
        stale = tl.sum((read_ok & ((words >> 32) != tag)).to(tl.int32))
        while stale > 0:
            words = tl.load(base + offs, mask=read_ok, other=0, volatile=True)
            stale = tl.sum((read_ok & ((words >> 32) != tag)).to(tl.int32))
        acc += tl.where(read_ok, (words & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
    tl.store(out_ptr + pid * BLOCK + offs, acc)


@triton.jit
def _atomic_kernel(bar_ptr, acc_ptr, out_ptr, rounds, WIDTH: tl.constexpr, BLOCK: tl.constexpr, COPIES: tl.constexpr,
                   INT: tl.constexpr):
    """Each round: every program adds WIDTH partial sums into copy pid % COPIES of accumulator r % 3 (relaxed atomics,
    fp32 or int64), the counter barrier, every program reads all copies. The last program zeroes accumulator
    (r + 2) % 3 after the barrier: its readers were done before it, its adders come after the next barrier."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs = tl.arange(0, BLOCK)
    ok = offs < WIDTH
    g = tl.arange(0, COPIES)[:, None]
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for r in range(rounds):
        base = acc_ptr + (r % 3) * COPIES * BLOCK
        part = offs.to(tl.float32) + pid
        if INT:
            tl.atomic_add(base + (pid % COPIES) * BLOCK + offs, (part * 4096.0).to(tl.int64), mask=ok, sem="relaxed")
        else:
            tl.atomic_add(base + (pid % COPIES) * BLOCK + offs, part, mask=ok, sem="relaxed")
        _grid_barrier(bar_ptr, nprog, False)
        acc += tl.sum(tl.load(base + g * BLOCK + offs[None, :], mask=ok[None, :], other=0, cache_modifier=".cg"),
                      axis=0).to(tl.float32)
        if pid == nprog - 1:
            nxt = acc_ptr + ((r + 2) % 3) * COPIES * BLOCK + g * BLOCK + offs[None, :]
            tl.store(nxt, tl.zeros([COPIES, BLOCK], dtype=acc_ptr.dtype.element_ty))
    tl.store(out_ptr + pid * BLOCK + offs, acc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=960)
    p.add_argument("--warps", type=int, default=8)
    p.add_argument("--programs", type=int, default=0, help="0: one per SM")
    args = p.parse_args()
    dev = torch.device("cuda")
    grid = args.programs or torch.cuda.get_device_properties(dev).multi_processor_count
    rounds, warps = args.rounds, args.warps
    block_p = triton.next_power_of_2(grid)
    per = triton.next_power_of_2(triton.cdiv(DM, grid))
    counter = torch.zeros(1, dtype=torch.int64, device=dev)
    flags = torch.zeros(block_p, dtype=torch.int64, device=dev)
    vec = torch.zeros(2 * 1024, dtype=torch.float32, device=dev)
    out = torch.zeros(grid * 1024, dtype=torch.float32, device=dev)
    red_block = triton.next_power_of_2(24 * X)
    words = torch.zeros(2 * max(red_block, 1024), dtype=torch.int64, device=dev)
    red_out = torch.zeros(grid * red_block, dtype=torch.float32, device=dev)
    launches = {"tag": 0}
    acc_f32 = torch.zeros(3 * 2 * 1024, dtype=torch.float32, device=dev)
    acc_i64 = torch.zeros(3 * 2 * 1024, dtype=torch.int64, device=dev)

    def atomic(width, block, acc):
        return lambda: _atomic_kernel[(grid,)](counter, acc, out, rounds, WIDTH=width, BLOCK=block, COPIES=2,
                                               INT=acc.dtype == torch.int64, num_warps=warps)

    def tagged(width, per_, block, reduce, out_t):
        def go():
            _tagged_kernel[(grid,)](words, out_t, rounds, launches["tag"], PER=per_, WIDTH=width, BLOCK=block,
                                    REDUCE=reduce, num_warps=warps)
            launches["tag"] += rounds + 1
        return go

    cases = {
        "counter": lambda: _counter_kernel[(grid,)](counter, rounds, LD_POLL=False, num_warps=warps),
        "counter_ld": lambda: _counter_kernel[(grid,)](counter, rounds, LD_POLL=True, num_warps=warps),
        "flags": lambda: _flags_kernel[(grid,)](flags, rounds, BLOCK_P=block_p, num_warps=warps),
        "gather": lambda: _gather_kernel[(grid,)](counter, vec, out, rounds, PER=per, BLOCK_DM=1024, num_warps=warps),
        "tagged_gather": tagged(DM, per, 1024, False, out),
        "tagged_reduce": tagged(X, 128, red_block, True, red_out),
        "atomic_768": atomic(DM, 1024, acc_f32),
        "atomic_768_i64": atomic(DM, 1024, acc_i64),
        "atomic_80": atomic(X, 128, acc_f32),
    }
    print(f"{torch.cuda.get_device_name(dev)}, {grid} programs x {warps} warps, {rounds} rounds a launch; "
          f"torch {torch.__version__}, triton {triton.__version__}")
    for name, launch in cases.items():
        # one untimed launch compiles; then the median of 7 launches (each ~1 ms: launch overhead does not show)
        seconds = measure_ms(launch, dev, warmup=1, reps=7, max_seconds=0.05) / 1e3
        print(f"{name:14s} {seconds / rounds * 1e6:7.3f} us a round", flush=True)


if __name__ == "__main__":
    main()
