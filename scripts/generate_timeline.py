"""Where a generated token's time goes at batch 1: greedy `generate` per token with and without CUDA graphs, then a
torch.profiler timeline of each: the step kernel's duration, the time from one step's start to the next, and the
kernels between two steps.

    python scripts/generate_timeline.py [--model mamba_wave_lm_base] [--d-model 768] [--n-layer 24] [--tokens 128]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from seqbackbone.bench.decode import build_model, time_generate
from seqbackbone.generation import generate


def timeline(model: torch.nn.Module, prompt: torch.Tensor, tokens: int, cuda_graph: bool) -> None:
    """Prints the GPU timeline summary of one greedy generate of `tokens` new tokens."""
    generate(model, prompt, tokens, temperature=0.0, cuda_graph=cuda_graph)  # warm: compiles, captures
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        generate(model, prompt, tokens, temperature=0.0, cuda_graph=cuda_graph)
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    steps = [e for e in events if "decode" in e.name and "kernel" in e.name]
    if len(steps) < 12:
        print(f"cuda_graph={cuda_graph}: {len(steps)} step kernels seen (is the one-kernel step in use?)")
        return
    durations = [e.time_range.end - e.time_range.start for e in steps]
    starts = [e.time_range.start for e in steps]
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    print(f"cuda_graph={cuda_graph}: {len(steps)} step kernels, {statistics.median(durations):.1f} us each (median), "
          f"{statistics.median(gaps):.1f} us from one start to the next")
    a, b = steps[10], steps[11]
    for e in events:
        if a.time_range.end <= e.time_range.start < b.time_range.start:
            print(f"    +{e.time_range.start - a.time_range.end:5.1f} us: {e.time_range.end - e.time_range.start:4.1f} "
                  f"us {e.name[:70]}")
    print(f"    +{b.time_range.start - a.time_range.end:5.1f} us: the next step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mamba_wave_lm_base")
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-layer", type=int, default=24)
    p.add_argument("--tokens", type=int, default=128)
    args = p.parse_args()
    dev = torch.device("cuda")
    model = build_model(args, dev, torch.bfloat16)
    prompt = (torch.rand(1, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dev)
    for cuda_graph in (True, False):  # compiles, captures the graph, settles the clocks
        time_generate(model, prompt, 512, cuda_graph, False, 2)
    for cuda_graph in (True, False, True, False):  # alternated, to see the spread between runs
        short = time_generate(model, prompt, 256, cuda_graph, False, 3)
        long = time_generate(model, prompt, 512, cuda_graph, False, 3)
        print(f"cuda_graph={cuda_graph}: {(long - short) / 256 * 1e6:.1f} us a token")
    for cuda_graph in (True, False):
        timeline(model, prompt, args.tokens, cuda_graph)


if __name__ == "__main__":
    main()
