"""Decoding speed of a language model on the recurrent state, against the weight-read floor.

    python -m seqbackbone.bench.decode --out decode.md                 # ~90M-parameter LM, bf16, on CUDA
    python -m seqbackbone.bench.decode --device cpu --d-model 64 --n-layer 2 --steps 16 --out /tmp/decode.md

For each batch size, with and without CUDA graphs (and with the step through torch.compile inside the graph, last,
since compiling takes a while), greedy `generate` is timed at two lengths after a warm-up call
(which also captures the graph); the difference divided by the extra tokens is the steady per-step time, free of the
prefill and the capture. The floor is one read of every weight per step: 2 bytes x parameters / copy bandwidth,
where the bandwidth is a device-to-device copy measured in the same run (bytes read + written per second).
A configuration that fails is reported as such and the rest still run; the table file is rewritten after every row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Row:
    batch: int
    cuda_graph: bool
    compile: bool = False
    step_us: float | None = None
    tokens_per_s: float | None = None
    floor_ratio: float | None = None
    error: str | None = None

    @property
    def mode(self) -> str:
        how = "CUDA graph" if self.cuda_graph else "eager"
        return how + (" + torch.compile" if self.compile else "")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes per second, counting bytes read plus bytes written (median)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        if device.type == "cuda":  # event timing is finer than the host clock for a ~0.5 ms copy
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from seqbackbone import create_model

    overrides = {}
    if args.d_model is not None:
        overrides["d_model"] = args.d_model
    if args.n_layer is not None:
        overrides["n_layer"] = args.n_layer
    model = create_model(args.model, **overrides)
    return model.to(device=device, dtype=dtype).eval()


def prompt_for(model: torch.nn.Module, batch: int, length: int, device: torch.device) -> torch.Tensor:
    from seqbackbone.generation import _lm_parts

    gen = torch.Generator(device="cpu").manual_seed(0)
    if _lm_parts(model).waveform:
        return (torch.rand(batch, length, generator=gen) * 2 - 1).to(device)
    return torch.randint(0, _lm_parts(model).vocab_size, (batch, length), generator=gen).to(device)


def time_generate(
    model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, cuda_graph: bool, compile: bool, repeats: int
) -> float:
    """Median wall time of greedy generate(prompt, new_tokens), in seconds."""
    from seqbackbone.generation import generate

    device = prompt.device
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        generate(model, prompt, new_tokens, temperature=0.0, cuda_graph=cuda_graph, compile=compile)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    model: torch.nn.Module, batch: int, cuda_graph: bool, compile: bool, args: argparse.Namespace,
    device: torch.device, floor_s: float | None,
) -> Row:
    row = Row(batch, cuda_graph, compile)
    try:
        prompt = prompt_for(model, batch, args.prompt_len, device)
        time_generate(model, prompt, args.steps, cuda_graph, compile, 1)  # warm-up: compile, capture
        short = time_generate(model, prompt, args.steps, cuda_graph, compile, args.repeats)
        long = time_generate(model, prompt, 2 * args.steps, cuda_graph, compile, args.repeats)
        step = max(long - short, 1e-9) / args.steps
        row.step_us = step * 1e6
        row.tokens_per_s = batch / step
        if floor_s:
            row.floor_ratio = step / floor_s
    except Exception as err:  # one failing configuration must not hide the others
        row.error = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        traceback.print_exc(file=sys.stderr)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def kernels_per_step(model: torch.nn.Module, device: torch.device) -> int:
    """GPU kernels (and copies) one eager decoding step at batch 1 launches: what a CUDA graph replays per token."""
    from torch.profiler import ProfilerActivity, profile

    from seqbackbone.generation import StepDecoder

    decoder = StepDecoder(model, 1)
    decoder.prefill(prompt_for_codes(model, device))
    token = torch.zeros(1, dtype=torch.long, device=device)
    decoder.step(token)
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        decoder.step(token)
        _sync(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def prompt_for_codes(model: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """A (1, 8) prompt of code / token ids for the decoder itself (below generate's waveform handling)."""
    from seqbackbone.generation import _lm_parts

    return torch.randint(0, _lm_parts(model).vocab_size, (1, 8), generator=torch.Generator().manual_seed(0)).to(device)


def markdown(rows: list[Row], header: dict[str, str]) -> str:
    lines = [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| batch | step runs as | us per step | tokens/s | x floor |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        if r.error is not None:
            lines.append(f"| {r.batch} | {r.mode} | failed: {r.error} | | |")
            continue
        ratio = f"{r.floor_ratio:.1f}" if r.floor_ratio is not None else "n/a"
        lines.append(f"| {r.batch} | {r.mode} | {r.step_us:,.0f} | {r.tokens_per_s:,.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m seqbackbone.bench.decode", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mamba_wave_lm_base", help="registered language model to build")
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-layer", type=int, default=24)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--steps", type=int, default=256, help="extra tokens between the two timed lengths")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip the rows with the step through torch.compile")
    p.add_argument("--out", type=Path, default=None, help="markdown file for the table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    model = build_model(args, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    header = {
        "model": f"{args.model} (d_model {args.d_model}, {args.n_layer} layers), {n_params / 1e6:.1f}M parameters, "
                 f"{str(dtype).replace('torch.', '')}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "timing": f"greedy generate, prompt {args.prompt_len}, per-step time = (time of {2 * args.steps} new tokens "
                  f"- time of {args.steps}) / {args.steps}, median of {args.repeats}",
    }
    floor_s = None
    try:
        bandwidth = copy_bandwidth(device)
        floor_s = 2 * n_params / bandwidth
        shown = f"{bandwidth / 1e12:.2f} TB/s" if bandwidth >= 1e11 else f"{bandwidth / 1e9:.1f} GB/s"
        header["copy bandwidth"] = f"{shown} (device-to-device copy, bytes read + written)"
        header["weight-read floor"] = f"{floor_s * 1e6:.1f} us per step (2 bytes x parameters / copy bandwidth)"
    except Exception as err:
        header["copy bandwidth"] = f"failed: {type(err).__name__}: {err}"

    if device.type == "cuda":
        try:
            header["kernels per step"] = f"{kernels_per_step(model, device)} GPU kernels and copies (eager, batch 1)"
        except Exception as err:
            header["kernels per step"] = f"not counted: {type(err).__name__}: {err}".splitlines()[0][:200]

    # (cuda_graph, compile); compiled rows last, so a slow compile cannot hold up the plain ones
    modes = [(True, False), (False, False)] if device.type == "cuda" else [(False, False)]
    if args.compile:
        modes += [(True, True)] if device.type == "cuda" else [(False, True)]
    rows = []
    for cuda_graph, compile in modes:
        for batch in args.batch_sizes:
            row = measure(model, batch, cuda_graph, compile, args, device, floor_s)
            rows.append(row)
            status = row.error or f"{row.step_us:,.0f} us/step, {row.tokens_per_s:,.0f} tokens/s"
            print(f"batch {batch:>3} {row.mode}: {status}", file=sys.stderr, flush=True)
            if args.out is not None:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text("# Decoding speed\n\n" + markdown(rows, header))
    print(markdown(rows, header))
    return 0 if all(r.error is None for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
