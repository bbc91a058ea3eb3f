"""How fast a few programs (one per SM) can read a 90.7M-parameter bf16 model (181 MB): whether a decoding step on a
subset of the SMs could still reach the weight-read floor.

    python scripts/sm_stream_bench.py [--grids 8 16 32 66 132]

Each program reads its contiguous share of the weights and sums it, in one of two ways:
    range   a loop over BLOCK-element tiles with Triton's software pipeline (num_stages STAGES)
    ahead   the next AHEAD x BLOCK tile loaded into registers while the current one is summed
and the script prints the time of one launch (CUDA events, median), the bandwidth in all and per program, and the
time the whole model would take at that rate.
"""

from __future__ import annotations

import argparse
import functools

import torch
import triton
import triton.language as tl

from seqbackbone.bench.models import measure_ms

PARAMS = 90_700_000  # the 90.7M LM of scripts/decode_gpu_check.py
# (way, BLOCK, STAGES or AHEAD, num_warps)
SHAPES = [("range", 8192, 3, 8), ("range", 8192, 4, 8), ("range", 4096, 6, 4), ("ahead", 4096, 4, 8),
          ("ahead", 4096, 8, 16), ("ahead", 8192, 4, 16), ("ahead", 2048, 8, 8)]


@triton.jit
def _range_kernel(w_ptr, out_ptr, per_prog, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    pid = tl.program_id(0)
    base = w_ptr + pid.to(tl.int64) * per_prog
    acc = tl.zeros([BLOCK], tl.float32)
    for off in tl.range(0, per_prog, BLOCK, num_stages=STAGES):
        acc += tl.load(base + off + tl.arange(0, BLOCK)).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc))


@triton.jit
def _ahead_kernel(w_ptr, out_ptr, per_prog, BLOCK: tl.constexpr, AHEAD: tl.constexpr):
    pid = tl.program_id(0)
    base = w_ptr + pid.to(tl.int64) * per_prog
    offs = tl.arange(0, AHEAD)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    acc = tl.zeros([AHEAD, BLOCK], tl.float32)
    cur = tl.load(base + offs, cache_modifier=".cg")
    for off in range(AHEAD * BLOCK, per_prog, AHEAD * BLOCK):
        nxt = tl.load(base + off + offs, cache_modifier=".cg")
        acc += cur.to(tl.float32)
        cur = nxt
    acc += cur.to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids", type=int, nargs="+", default=[8, 16, 32, 66, 132])
    args = p.parse_args()
    dev = torch.device("cuda")
    w = torch.randn(PARAMS, device=dev, dtype=torch.bfloat16)
    out = torch.zeros(max(args.grids), device=dev)
    src = torch.empty(1 << 28, device=dev, dtype=torch.uint8)
    dst = torch.empty_like(src)
    ms = measure_ms(lambda: dst.copy_(src), dev, 5, 50, 0.5)
    bandwidth = 2 * src.numel() / (ms * 1e-3)
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, triton {triton.__version__}; copy bandwidth "
          f"{bandwidth / 1e12:.2f} TB/s, so {2 * PARAMS / bandwidth * 1e6:.1f} us for the model's bytes")
    for grid in args.grids:
        for way, block, depth, warps in SHAPES:
            chunk = depth * block if way == "ahead" else block
            per = PARAMS // grid // chunk * chunk  # whole tiles: the last < chunk elements of a share are left out
            kernel, extra = (_range_kernel, "STAGES") if way == "range" else (_ahead_kernel, "AHEAD")
            launch = functools.partial(kernel[(grid,)], w, out, per, BLOCK=block, num_warps=warps, **{extra: depth})
            us = measure_ms(launch, dev, 3, 30, 0.3) * 1e3
            nbytes = 2 * per * grid
            print(f"{grid:4d} programs, {way} BLOCK={block} {extra}={depth} num_warps={warps}: {us:7.1f} us for "
                  f"{nbytes / 1e6:.0f} MB: {nbytes / us / 1e6:.2f} TB/s, {nbytes / grid / us / 1e3:.0f} GB/s a "
                  f"program; the model in {2 * PARAMS / (nbytes / us):.1f} us", flush=True)


if __name__ == "__main__":
    main()
