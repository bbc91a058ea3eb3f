"""What the pieces of a grid exchange cost on this GPU, in SM clock cycles: the floor under each of the decoding
step's 48 exchanges (kernels/decode_split_triton.py), without any of its work.

    python scripts/memory_latency_probe.py [--lines 512]

1. Operations: one program (1 or 8 warps) or one per SM, each running 256 rounds of one PTX operation on its own
   int64 word (loads chained through their values, so that each round waits for the last): relaxed, acquire and
   volatile loads, atomic adds with a result, fences, reductions with and without release, a store or reduction
   then a fence, bar.sync. Cycles a round (%clock64), the best of 3 launches.
2. L2 partitions: every program (one per SM) times a chain of 4 dependent relaxed loads to each of `lines`
   consecutive 128-byte lines, all L2 hits after the first round (best of 8 rounds). The lines are split into those
   faster and slower than the median from program 0's SM, the SMs by which group is faster for them: the latency
   of a near and of a far L2 hit.
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

# name: PTX of one round; `a` is the program's word (u64 address), `v` a .b64 scratch register. A load adds its value
# (0) to the address, so that the next round's load waits for it.
OPERATIONS = {
    "ld.relaxed.gpu": "ld.relaxed.gpu.global.b64 v, [a]; add.u64 a, a, v;",
    "ld.acquire.gpu": "ld.acquire.gpu.global.b64 v, [a]; add.u64 a, a, v;",
    "ld.volatile": "ld.volatile.global.b64 v, [a]; add.u64 a, a, v;",
    "atom.relaxed.gpu.add": "atom.relaxed.gpu.global.add.u64 v, [a], 0; add.u64 a, a, v;",
    "atom.acquire.gpu.add": "atom.acquire.gpu.global.add.u64 v, [a], 0; add.u64 a, a, v;",
    "fence.acq_rel.gpu": "fence.acq_rel.gpu;",
    "fence.sc.gpu": "fence.sc.gpu;",
    "red.relaxed.gpu": "red.relaxed.gpu.global.add.u64 [a], 0;",
    "red.release.gpu": "red.release.gpu.global.add.u64 [a], 0;",
    "red.relaxed, fence": "red.relaxed.gpu.global.add.u64 [a], 0; fence.acq_rel.gpu;",
    "st.relaxed, fence": "st.relaxed.gpu.global.b64 [a], 0; fence.acq_rel.gpu;",
    "red.release, ld.acquire": ("red.release.gpu.global.add.u64 [a], 0; ld.acquire.gpu.global.b64 v, [a]; "
                                "and.b64 v, v, 0; add.u64 a, a, v;"),
    "bar.sync": "bar.sync 0;",
    "nothing": "",
}
ROUNDS = 256


def _rounds_asm(body: str) -> str:
    """The timed loop around `body`: the start clock feeds the address (so the first round cannot start before it) and
    the end clock is read only once the last round's address is known."""
    return ("{ .reg .u64 a, v, t0, t1, z; .reg .u32 i; .reg .pred p; mov.u64 a, $1; mov.u64 t0, %clock64; "
            "and.b64 z, t0, 0; add.u64 a, a, z; mov.u32 i, 0; "
            f"loop_${{:uid}}: {body} add.u32 i, i, 1; setp.lt.u32 p, i, {ROUNDS}; @p bra loop_${{:uid}}; "
            "setp.ne.u64 p, a, 0; mov.u64 t1, t0; @p mov.u64 t1, %clock64; sub.u64 $0, t1, t0; }")


@triton.jit
def _operation_kernel(words_ptr, out_ptr, ASM: tl.constexpr):
    """Program pid runs ASM on its own word (512 bytes from the next program's) and stores the cycles it took."""
    pid = tl.program_id(0)
    cycles = tl.inline_asm_elementwise(ASM, "=l,l", [words_ptr + pid * 64], dtype=tl.int64, is_pure=False, pack=1)
    tl.store(out_ptr + pid, cycles)


_CHAIN = "ld.relaxed.gpu.global.u32 v, [a]; cvt.u64.u32 w, v; add.u64 a, a, w; "
_LINE_ASM = ("{ .reg .u64 t0, t1, a, z, w; .reg .u32 v; .reg .pred p; mov.u64 a, $1; mov.u64 t0, %clock64; "
             "and.b64 z, t0, 0; add.u64 a, a, z; " + _CHAIN * 4 +
             "mov.u64 t1, t0; setp.ne.u64 p, a, 0; @p mov.u64 t1, %clock64; sub.u64 $0, t1, t0; }")


@triton.jit
def _line_kernel(buf_ptr, out_ptr, sm_ptr, n_lines, LINE: tl.constexpr, REPS: tl.constexpr, ASM: tl.constexpr):
    """Program pid's best cycles a load over REPS chains of 4 dependent relaxed loads (ASM) to each line: (programs,
    n_lines); and the SM it ran on."""
    pid = tl.program_id(0)
    smid = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [pid], dtype=tl.int32, is_pure=False, pack=1)
    tl.store(sm_ptr + pid, smid)
    for i in range(n_lines):
        best = tl.full([], 1 << 40, tl.int64)
        for _ in range(REPS):
            cycles = tl.inline_asm_elementwise(ASM, "=l,l", [buf_ptr + i * LINE], dtype=tl.int64, is_pure=False,
                                               pack=1)
            best = tl.minimum(best, cycles)
        tl.store(out_ptr + pid * n_lines + i, best // 4)


_CLOCK_ASM = ("{ .reg .u64 c0, c, n0, n1; .reg .pred p; mov.u64 n0, %globaltimer; mov.u64 c0, %clock64; "
              "spin_${:uid}: mov.u64 c, %clock64; sub.u64 c, c, c0; setp.lt.u64 p, c, 20000000; @p bra spin_${:uid}; "
              "mov.u64 n1, %globaltimer; sub.u64 n1, n1, n0; mov.b64 $0, c; mov.b64 $1, n1; }")


@triton.jit
def _clock_kernel(out_ptr, ASM: tl.constexpr):
    """Spins for 20M SM clocks; stores the clocks and the global timer's nanoseconds they took."""
    pair = tl.inline_asm_elementwise(ASM, "=l,=l,r", [tl.program_id(0)], dtype=(tl.int64, tl.int64), is_pure=False,
                                     pack=1)
    tl.store(out_ptr, pair[0])
    tl.store(out_ptr + 1, pair[1])


def clock_ghz() -> float:
    """The SM clock while one program spins for 20M cycles, against the global timer."""
    out = torch.zeros(2, dtype=torch.int64, device="cuda")
    _clock_kernel[(1,)](out, ASM=_CLOCK_ASM, num_warps=1)
    torch.cuda.synchronize()
    cycles, ns = out.tolist()
    return cycles / ns


def operations_report(sms: int) -> None:
    words = torch.zeros(sms * 64 + 64, dtype=torch.int64, device="cuda")
    out = torch.zeros(sms, dtype=torch.int64, device="cuda")
    print(f"cycles a round ({ROUNDS} rounds, best of 3 launches; median over the programs)")
    print(f"{'operation':<26}{'1 program, 1 warp':>19}{'1 program, 8 warps':>20}{f'{sms} programs, 8 warps':>23}")
    for name, body in OPERATIONS.items():
        asm = _rounds_asm(body)
        cells = []
        for grid, warps in ((1, 1), (1, 8), (sms, 8)):
            best = float("inf")
            for _ in range(3):
                out.zero_()
                _operation_kernel[(grid,)](words, out, ASM=asm, num_warps=warps)
                torch.cuda.synchronize()
                best = min(best, out[:grid].float().median().item() / ROUNDS)
            cells.append(best)
        print(f"{name:<26}{cells[0]:>19.1f}{cells[1]:>20.1f}{cells[2]:>23.1f}")


def partitions_report(sms: int, n_lines: int) -> None:
    buf = torch.zeros(n_lines * 32 + 1024, dtype=torch.int32, device="cuda")
    out = torch.zeros(sms, n_lines, dtype=torch.int64, device="cuda")
    sm = torch.zeros(sms, dtype=torch.int32, device="cuda")
    _line_kernel[(sms,)](buf, out, sm, n_lines, LINE=32, REPS=8, ASM=_LINE_ASM, num_warps=1)
    torch.cuda.synchronize()
    lat = out.float().cpu()
    print(f"\nL2 hits, {n_lines} lines x {sms} SMs: cycles a load min {lat.min():.0f}, median {lat.median():.0f}, "
          f"max {lat.max():.0f}")
    near_first = lat[0] < lat[0].median()  # the lines nearer to program 0's SM
    like_first = lat[:, near_first].mean(1) < lat[:, ~near_first].mean(1)
    for name, group in (("like program 0's", like_first), ("the others", ~like_first)):
        if group.any():
            row = lat[group].mean(0)
            print(f"SMs {name} ({int(group.sum())}): mean {row[near_first].mean():.0f} cycles to the first group of "
                  f"lines ({int(near_first.sum())}), {row[~near_first].mean():.0f} to the second")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=512)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name()}, {sms} SMs, torch {torch.__version__}, triton {triton.__version__}")
    print(f"SM clock while spinning: {clock_ghz():.2f} GHz")
    operations_report(sms)
    partitions_report(sms, args.lines)


if __name__ == "__main__":
    main()
