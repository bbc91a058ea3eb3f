"""Decoding speed of a language model on the recurrent state, against the weight-read floor.

    python -m seqbackbone.bench.decode --out decode.md                 # ~90M-parameter LM, bf16, on CUDA
    python -m seqbackbone.bench.decode --device cpu --d-model 64 --n-layer 2 --steps 16 --out /tmp/decode.md

For each batch size, with and without CUDA graphs (under CUDA graphs both the default step, which is the whole step as
one kernel, seqbackbone.kernels.decode, at batch 1 and layer by layer above, and the other one where it exists: layer
by layer with SEQBACKBONE_FUSED_DECODE=0 at batch 1, one kernel forced with SEQBACKBONE_FUSED_DECODE=1 at batches 2
to 8; and with the step through torch.compile inside the graph, last, since compiling takes a while), greedy
`generate` is timed at two lengths after a warm-up call (which also captures the graph), the fastest of alternating
runs of each; the difference divided by the extra tokens is the steady per-step time, free of the prefill and the
capture. The floor is one read of every weight per step: 2 bytes x parameters / copy bandwidth, where the bandwidth
is a device-to-device copy measured in the same run (bytes read + written per second, the fastest of its copies).
The header also gives the kernels one step launches at batch 1 (what a CUDA graph replays per token): as one kernel,
layer by layer, and on the op-by-op PyTorch path (SEQBACKBONE_KERNELS=torch): profiled on CUDA, counted op by op
elsewhere. A configuration that fails is reported as such and the rest still run; the table file is rewritten after
every row.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from seqbackbone.kernels.dispatch import interpreting


@dataclass
class Row:
    batch: int
    cuda_graph: bool
    compile: bool = False
    # None: as the environment says; False: SEQBACKBONE_FUSED_DECODE=0; True: =1 (one kernel up to batch 8)
    fused: bool | None = None
    path: str | None = None  # the step that ran: "one kernel" or "layer by layer"
    step_us: float | None = None
    tokens_per_s: float | None = None
    floor_ratio: float | None = None
    error: str | None = None

    @property
    def mode(self) -> str:
        how = "CUDA graph" if self.cuda_graph else "eager"
        how += " + torch.compile" if self.compile else ""
        return how + (f", {self.path}" if self.path else "")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes per second, counting bytes read plus bytes written: the fastest of
    `reps` copies, since the floor it sets is a bound (the median read 4.04 TB/s in one run and 4.18-4.21 in others
    on one H200, and a low reading flatters every ratio to the floor)."""
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
    return 2 * src.numel() * src.element_size() / min(times)


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
    model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, cuda_graph: bool, compile: bool
) -> float:
    """Wall time of one greedy generate(prompt, new_tokens), in seconds."""
    from seqbackbone.generation import generate

    device = prompt.device
    _sync(device)
    start = time.perf_counter()
    generate(model, prompt, new_tokens, temperature=0.0, cuda_graph=cuda_graph, compile=compile)
    _sync(device)
    return time.perf_counter() - start


def step_time(model: torch.nn.Module, prompt: torch.Tensor, steps: int, cuda_graph: bool, compile: bool,
              repeats: int) -> float:
    """Seconds per new token: (fastest of `repeats` runs of 2 * steps new tokens - fastest of `repeats` runs of
    `steps`) / steps, the two lengths alternating. The difference cancels the prompt's and the call's fixed costs;
    the fastest runs leave out the delays that only add (a median of three let a slow short run make a step look
    40 % faster than its kernel)."""
    short, long = [], []
    for _ in range(repeats):
        short.append(time_generate(model, prompt, steps, cuda_graph, compile))
        long.append(time_generate(model, prompt, 2 * steps, cuda_graph, compile))
    return max(min(long) - min(short), 1e-9) / steps


def _path(model: torch.nn.Module, batch: int, compile: bool) -> str:
    from seqbackbone.kernels.decode import fused_decode_supported

    return "one kernel" if not compile and fused_decode_supported(model, batch) else "layer by layer"


@contextlib.contextmanager
def _fused_env(fused: bool | None):
    """SEQBACKBONE_FUSED_DECODE=0 (fused False) or =1 (fused True: forced up to batch 8) for the duration; unchanged
    for None."""
    before = os.environ.get("SEQBACKBONE_FUSED_DECODE")
    if fused is not None:
        os.environ["SEQBACKBONE_FUSED_DECODE"] = "1" if fused else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SEQBACKBONE_FUSED_DECODE", None)
        else:
            os.environ["SEQBACKBONE_FUSED_DECODE"] = before


def measure(
    model: torch.nn.Module, batch: int, cuda_graph: bool, compile: bool, args: argparse.Namespace,
    device: torch.device, floor_s: float | None, fused: bool | None = None,
) -> Row:
    with _fused_env(fused):
        return _measure(model, batch, cuda_graph, compile, args, device, floor_s, fused)


def _measure(
    model: torch.nn.Module, batch: int, cuda_graph: bool, compile: bool, args: argparse.Namespace,
    device: torch.device, floor_s: float | None, fused: bool | None,
) -> Row:
    row = Row(batch, cuda_graph, compile, fused)
    try:
        row.path = _path(model, batch, compile)
        prompt = prompt_for(model, batch, args.prompt_len, device)
        time_generate(model, prompt, args.steps, cuda_graph, compile)  # warm-up: compile, capture
        step = step_time(model, prompt, args.steps, cuda_graph, compile, args.repeats)
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


# ops that allocate or re-describe memory without launching a kernel
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "set_", "resize_",
              "lift_fresh", "_local_scalar_dense"}


def _storages(value: object) -> set[int]:
    if isinstance(value, torch.Tensor):
        return {value.untyped_storage().data_ptr()}
    if isinstance(value, list | tuple):
        return set().union(*(_storages(v) for v in value)) if value else set()
    return set()


def _launches_kernel(func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: object) -> bool:
    if not any("Tensor" in str(r.type) for r in func._schema.returns):  # e.g. promote_types
        return False
    if func.overloadpacket.__name__ in _NO_KERNEL:
        return False
    if func.is_view:
        # aliasing ops (views; `to`, `reshape` and `contiguous` below autograd in inference mode) cost a copy only
        # when they return new memory
        inputs = _storages(list(args) + list(kwargs.values()))
        return not _storages(out) <= inputs
    return True


class OpCounter:
    """Counts the ops one call launches, on any device: every ATen op below autograd that computes (views and
    allocations excluded; a matmul counts once, however many kernels cuBLAS splits it into), plus one per Triton
    kernel launch (compiled, or through the interpreter on the CPU, whose own tensor copies are not counted).
    `ops` lists the names in order."""

    def __init__(self) -> None:
        self.ops: list[str] = []

    def __enter__(self) -> OpCounter:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        paused = [0]

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                if not paused[0] and _launches_kernel(func, args, kwargs, out):
                    counter.ops.append(func.overloadpacket.__name__)
                return out

        def counted(run):
            def counted_run(fn, *args, **kwargs):
                if not kwargs.get("warmup", False):
                    counter.ops.append("triton:" + fn.fn.__name__)
                paused[0] += 1  # the interpreter's own tensor copies are no GPU kernels
                try:
                    return run(fn, *args, **kwargs)
                finally:
                    paused[0] -= 1

            return counted_run

        self._mode = _Mode()
        self._restore = []
        try:
            from triton.runtime.interpreter import InterpretedFunction
            from triton.runtime.jit import JITFunction
        except Exception:  # no Triton: only ATen ops can run
            pass
        else:
            for cls in (InterpretedFunction, JITFunction):  # launches on the CPU's interpreter and on a GPU
                self._restore.append((cls, cls.run))
                cls.run = counted(cls.run)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for cls, run in self._restore:
            cls.run = run

    def __len__(self) -> int:
        return len(self.ops)


def _step_decoder(model: torch.nn.Module, batch: int, device: torch.device):
    from seqbackbone.generation import StepDecoder

    decoder = StepDecoder(model, batch)
    decoder.prefill(prompt_for_codes(model, device, batch))
    decoder.step(torch.zeros(batch, dtype=torch.long, device=device))  # warm-up: Triton compiles
    _sync(device)
    return decoder


def step_ops(model: torch.nn.Module, device: torch.device, batch: int = 1, fused: bool = False) -> list[str]:
    """Names of the kernels one decoding step (the part a CUDA graph replays) launches, counted by `OpCounter`:
    layer by layer, or with `fused` the one-kernel step where the model allows it."""
    with _fused_env(fused):
        decoder = _step_decoder(model, batch, device)
        with torch.inference_mode(), OpCounter() as counter:
            decoder._run_step()
    return counter.ops


def kernels_per_step(model: torch.nn.Module, device: torch.device, fused: bool = False) -> int:
    """GPU kernels (and copies) one eager decoding step at batch 1 launches, profiled on CUDA: what a CUDA graph
    replays per token (layer by layer, or with `fused` the one-kernel step where the model allows it)."""
    from torch.profiler import ProfilerActivity, profile

    with _fused_env(fused):
        decoder = _step_decoder(model, 1, device)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        decoder._run_step()
        _sync(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


@contextlib.contextmanager
def _kernels_env(value: str | None):
    """SEQBACKBONE_KERNELS set to `value` (unset for None) for the duration."""
    before = os.environ.get("SEQBACKBONE_KERNELS")
    if value is None:
        os.environ.pop("SEQBACKBONE_KERNELS", None)
    else:
        os.environ["SEQBACKBONE_KERNELS"] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SEQBACKBONE_KERNELS", None)
        else:
            os.environ["SEQBACKBONE_KERNELS"] = before


def count_kernels(model: torch.nn.Module, device: torch.device) -> dict[str, str]:
    """Header lines: kernels per decoding step at batch 1 on the path the run uses and on the op-by-op PyTorch path
    (SEQBACKBONE_KERNELS=torch, the step before its kernels were fused): counted by `OpCounter` (the ops a GPU would
    launch), and on CUDA also profiled (what the GPU ran: a matmul may take more than one kernel)."""
    lines = {}
    paths = [("kernels per step, one-kernel step", os.environ.get("SEQBACKBONE_KERNELS"), True),
             ("kernels per step, layer by layer", os.environ.get("SEQBACKBONE_KERNELS"), False),
             ("kernels per step, op-by-op PyTorch path", "torch", False)]
    if os.environ.get("SEQBACKBONE_KERNELS") == "torch" or device.type != "cuda" and not interpreting():
        paths = paths[2:]  # the run itself is on the PyTorch path
    for name, env, fused in paths:
        try:
            with _kernels_env(env):
                counted = f"{len(step_ops(model, device, fused=fused))} ops that launch kernels (batch 1, counted)"
                if device.type == "cuda":
                    profiled = kernels_per_step(model, device, fused=fused)
                    lines[name] = f"{profiled} GPU kernels and copies (eager, batch 1, profiled); {counted}"
                else:
                    lines[name] = counted
        except Exception as err:
            lines[name] = f"not counted: {type(err).__name__}: {err}".splitlines()[0][:200]
    return lines


def prompt_for_codes(model: torch.nn.Module, device: torch.device, batch: int = 1) -> torch.Tensor:
    """A (batch, 8) prompt of code / token ids for the decoder itself (below generate's waveform handling)."""
    from seqbackbone.generation import _lm_parts

    vocab = _lm_parts(model).vocab_size
    return torch.randint(0, vocab, (batch, 8), generator=torch.Generator().manual_seed(0)).to(device)


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
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--steps", type=int, default=256, help="extra tokens between the two timed lengths")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip the rows with the step through torch.compile")
    p.add_argument("--tune", nargs="*", default=[], metavar="KEY=VALUE",
                   help="settings of the one-kernel step (seqbackbone.kernels.decode.TUNE), e.g. SPLIT=1 ...")
    p.add_argument("--out", type=Path, default=None, help="markdown file for the table")
    return p.parse_args(argv)


def parse_tune(items: list[str], option: str = "--tune") -> dict[str, int]:
    """["KEY=VALUE", ...] (integer values) -> decode.TUNE's overrides; `option` names them in the error."""
    tune = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value.lstrip("-").isdigit():
            raise ValueError(f"{option} takes KEY=VALUE with an integer value, got {item!r}")
        tune[key] = int(value)
    return tune


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune = parse_tune(args.tune)
    from seqbackbone.kernels import decode

    decode.TUNE.update(tune)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    model = build_model(args, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    header = {
        "model": f"{args.model} (d_model {args.d_model}, {args.n_layer} layers), {n_params / 1e6:.1f}M parameters, "
                 f"{str(dtype).replace('torch.', '')}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "one-kernel step settings": ", ".join(f"{k}={v}" for k, v in tune.items()) or "defaults",
        "timing": f"greedy generate, prompt {args.prompt_len}, per-step time = (time of {2 * args.steps} new tokens "
                  f"- time of {args.steps}) / {args.steps}, each time the fastest of {args.repeats} alternating runs",
    }
    floor_s = None
    try:
        bandwidth = copy_bandwidth(device)
        floor_s = 2 * n_params / bandwidth
        shown = f"{bandwidth / 1e12:.2f} TB/s" if bandwidth >= 1e11 else f"{bandwidth / 1e9:.1f} GB/s"
        header["copy bandwidth"] = f"{shown} (device-to-device copy, bytes read + written, the fastest of 20)"
        header["weight-read floor"] = f"{floor_s * 1e6:.1f} us per step (2 bytes x parameters / copy bandwidth)"
    except Exception as err:
        header["copy bandwidth"] = f"failed: {type(err).__name__}: {err}"

    header.update(count_kernels(model, device))

    # (cuda_graph, compile, fused); compiled rows last, so a slow compile cannot hold up the plain ones. "other":
    # beside the default row, the step it did not run (layer by layer, or one kernel forced), both in the same run.
    if device.type == "cuda":
        modes = [(True, False, None), (True, False, "other"), (False, False, None)]
    else:
        modes = [(False, False, None)]
    if args.compile:
        modes += [(True, True, None)] if device.type == "cuda" else [(False, True, None)]
    rows = []
    for cuda_graph, compile, mode in modes:
        for batch in args.batch_sizes:
            fused = mode
            if mode == "other":
                fused = _path(model, batch, compile) != "one kernel"
                with _fused_env(fused):
                    if fused and _path(model, batch, compile) != "one kernel":
                        continue  # no one-kernel step at this batch / model: the default row ran layer by layer
            row = measure(model, batch, cuda_graph, compile, args, device, floor_s, fused)
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
