"""Whole-model benchmark: MambaBackbone against a FlashAttention Transformer of about the same size, as L grows.

    python -m seqbackbone.bench.models [--quick] [--out DIR]
    python -m seqbackbone.bench.models --device cpu --d-model 32 --n-layer 2 --lengths 64,128 --tokens 256

Four variants: Mamba causal and bidirectional="add", Transformer causal and bidirectional (full attention). The
number of tokens per batch is held constant (batch = tokens / L), so a flat line means linear cost in L. For each
variant and length: a training step (forward + backward of the backbone alone, no optimizer), an inference forward,
and peak memory (this model's weights plus everything a step allocates). For causal variants at batch 1: prefill time
and the time of one decoding step at contexts 1K, 16K and 64K, eager and replayed as a CUDA graph (the Transformer
attends to a KV cache of that many tokens; Mamba's recurrent state does not grow).

On CUDA the models hold bf16 parameters and run without autocast (Mamba keeps A_log, D and its residual stream in
fp32, as the layer does by itself); the Transformer's attention is forced onto the FlashAttention backend. On the CPU
everything is fp32 and attention uses torch's default path. Times are medians of per-call CUDA-event timings after
warm-up. A configuration that runs out of memory is reported as "OOM"; any other failure as "error: ..."; work left
when the time budget (--budget-s) is spent as "skipped". Rows are printed, and written under --out, as they finish.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from seqbackbone.bench.transformer import TransformerBackbone, matching_n_layer

FULL_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
QUICK_LENGTHS = (1024, 4096, 16384, 65536)
DECODE_CONTEXTS = (1024, 16384, 65536)
VARIANTS = ("mamba-causal", "mamba-bidirectional", "transformer-causal", "transformer-bidirectional")
OOM = "OOM"
SKIPPED = "skipped"

Cell = float | str | None  # a measurement, "OOM" / "error: ..." / "skipped", or None when not applicable


# ------------------------------------------------------------------------------------------------------- arguments
def parse_length(text: str) -> int:
    """'4K' -> 4096, '1M' -> 1048576, '300' -> 300."""
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    try:
        value = int(digits) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a length like 4096 or 4K, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"lengths must be positive, got {text!r}")
    return value


def parse_lengths(text: str) -> tuple[int, ...]:
    values = tuple(parse_length(part) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of lengths, got {text!r}")
    return values


def parse_variants(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"variants must be a comma-separated subset of {VARIANTS}, got {text!r}")
    return names


def fmt_length(n: int) -> str:
    """4096 -> '4K', 65536 -> '64K', 1000 -> '1000'."""
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m seqbackbone.bench.models",
        description="Mamba backbone vs a FlashAttention Transformer of the same size: time and memory against length.",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="parameter dtype (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-layer", type=int, default=24, help="Mamba layers")
    p.add_argument("--tf-n-layer", type=int, default=None,
                   help="Transformer layers (default: the count whose parameters come closest to causal Mamba's)")
    p.add_argument("--n-head", type=int, default=None, help="attention heads (default: d_model // 64)")
    p.add_argument("--lengths", type=parse_lengths, default=None, help="e.g. 1K,2K,4K (default: 1K..64K)")
    p.add_argument("--tokens", type=parse_length, default=65536, help="tokens per batch, batch = tokens / L")
    p.add_argument("--decode-contexts", type=parse_lengths, default=DECODE_CONTEXTS)
    p.add_argument("--variants", type=parse_variants, default=VARIANTS)
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (plus one to size the reps)")
    p.add_argument("--reps", type=int, default=10, help="most timed calls per measurement")
    p.add_argument("--max-seconds", type=float, default=0.5,
                   help="warm-up and timed calls each stop after about this long (at least 3 timed calls)")
    p.add_argument("--decode-reps", type=int, default=50, help="most timed decoding steps per context")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="stop starting new measurements after this many seconds (0: no limit)")
    p.add_argument("--no-decode", action="store_true", help="skip prefill and decoding")
    p.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph decoding measurement")
    p.add_argument("--quick", action="store_true", help="lengths 1K,4K,16K,64K and fewer repetitions")
    p.add_argument("--out", type=Path, default=None, help="write models.md, models.json and PNG plots here")
    p.add_argument("--seed", type=int, default=0)
    return p


# ---------------------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MIN_REPS = 3


def measure_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int, max_seconds: float) -> float:
    """Median milliseconds of fn() over 3 to `reps` timed calls (fewer only when reps < 3).

    Up to `warmup` untimed calls come first, stopping early once they have taken `max_seconds` (the first call at a
    new shape also pays for compilation); then one synchronised call sizes the repetitions so that the timed calls
    take about `max_seconds`. A call slower than that counts as the first sample, so a slow configuration costs a
    few calls, not a dozen. On CUDA each call is timed by events without synchronising in between (a throughput
    figure: launch overhead shows only where it exceeds the GPU time).
    """
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
        _sync(device)
        if time.perf_counter() - started > max_seconds:
            break
    start = time.perf_counter()
    fn()
    _sync(device)
    estimate = time.perf_counter() - start
    minimum = min(MIN_REPS, reps)
    times = [estimate * 1e3] if estimate >= max_seconds else []
    n = max(minimum - len(times), min(reps, int(max_seconds / max(estimate, 1e-9))) - len(times))
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for begin, end in events:
            begin.record()
            fn()
            end.record()
        _sync(device)
        times += [begin.elapsed_time(end) for begin, end in events]
    else:
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def copy_bandwidth_tbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in TB/s, counting bytes read plus bytes written (as ANCHORS.md does)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = measure_ms(lambda: dst.copy_(src), device, 3, 20, 0.2)
    return 2 * nbytes / (ms * 1e-3) / 1e12


def _free_memory(device: torch.device, collect: bool = False) -> None:
    """Hand cached blocks back to the driver; collect=True first breaks reference cycles (a failure's traceback)."""
    if device.type != "cuda":
        return
    if collect:
        gc.collect()  # slow with a large heap (about a second with timm imported), so only after failures
    torch.cuda.empty_cache()


def guarded(fn: Callable[[], Cell], device: torch.device, label: str) -> Cell:
    """fn()'s value, or "OOM" / "error: <type>: <message>" when it raises; memory is freed either way."""
    result: Cell
    failed = True
    try:
        result = fn()
        failed = False
    except torch.cuda.OutOfMemoryError:
        result = OOM
    except Exception as exc:  # one failing configuration must not end the run
        print(f"[{label}] failed:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result = f"error: {type(exc).__name__}: {message}"[:200]
    # the exception is gone once the except block ends; collecting frees the tensors its frames held
    _free_memory(device, collect=failed)
    return result


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class PeakMemory:
    """Peak GiB of one model's work: its weights plus everything allocated inside the `with` (other resident models
    and leftovers excluded). None on the CPU."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device, self.gib = model, device, None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) - self.base + weight_bytes(self.model)
            self.gib = peak / 2**30


# ---------------------------------------------------------------------------------------------------------- models
@dataclass
class Variant:
    """One model of the comparison; `model` is built lazily by `build` (a failure is reported, not raised)."""

    name: str
    family: str  # "mamba" or "transformer"
    causal: bool
    build: Callable[[], nn.Module]
    description: str = ""
    model: nn.Module | None = None
    parameters: int | None = None
    build_error: str | None = None

    def get(self, device: torch.device) -> nn.Module | None:
        if self.model is None and self.build_error is None:
            built = guarded(lambda: self._build(), device, f"build {self.name}")
            if isinstance(built, str):
                self.build_error = built
        return self.model

    def _build(self) -> None:
        self.model = self.build()
        self.parameters = parameter_count(self.model)


def make_variants(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[Variant]:
    """The variants named in args.variants, with the Transformer depth matched to causal Mamba's parameter count."""
    from seqbackbone import MambaBackbone  # late: the Transformer half of the benchmark runs without it

    d, n = args.d_model, args.n_layer
    factory = {"device": device, "dtype": dtype}
    tf_layers = args.tf_n_layer
    if tf_layers is None:
        with torch.device("meta"):
            target = parameter_count(MambaBackbone(d, n))
        tf_layers = matching_n_layer(target, d)
    n_head = args.n_head or max(1, d // 64)
    mamba = f"d_model {d}, {n} layers, d_state 16, expand 2"
    transformer = f"d_model {d}, {tf_layers} layers, {n_head} heads, MLP 4x"
    specs = {
        "mamba-causal": ("mamba", True, lambda: MambaBackbone(d, n, **factory), mamba),
        "mamba-bidirectional": (
            "mamba", False, lambda: MambaBackbone(d, n, bidirectional="add", **factory), mamba + ', bidirectional="add"'
        ),
        "transformer-causal": (
            "transformer", True, lambda: TransformerBackbone(d, tf_layers, n_head, **factory), transformer + ", causal"
        ),
        "transformer-bidirectional": (
            "transformer", False, lambda: TransformerBackbone(d, tf_layers, n_head, bidirectional=True, **factory),
            transformer + ", full attention",
        ),
    }
    return [Variant(name, *specs[name]) for name in args.variants]


# ------------------------------------------------------------------------------------------------------- the runs
@dataclass
class Settings:
    device: torch.device
    dtype: torch.dtype
    tokens: int
    warmup: int
    reps: int
    max_seconds: float
    decode_reps: int
    budget_s: float
    started: float = field(default_factory=time.perf_counter)

    def over_budget(self) -> bool:
        return self.budget_s > 0 and time.perf_counter() - self.started > self.budget_s


def sweep_row(variant: Variant, length: int, s: Settings) -> dict:
    """Training-step time, inference time and peak memory of one variant at one length (batch = tokens / L)."""
    batch = max(1, s.tokens // length)
    row = {"variant": variant.name, "family": variant.family, "causal": variant.causal, "length": length,
           "batch": batch, "train_ms": SKIPPED, "infer_ms": SKIPPED, "train_peak_gib": SKIPPED,
           "infer_peak_gib": SKIPPED}
    if s.over_budget():
        return row
    model = variant.get(s.device)
    if model is None:
        return {**row, **dict.fromkeys(("train_ms", "infer_ms", "train_peak_gib", "infer_peak_gib"),
                                       variant.build_error)}
    d_model = model.d_model

    def train() -> float:
        model.zero_grad(set_to_none=True)
        with PeakMemory(model, s.device) as mem:
            x = torch.randn(batch, length, d_model, device=s.device, dtype=s.dtype)
            grad = torch.randn_like(x)

            def step() -> None:
                model.zero_grad(set_to_none=True)
                y = model(x)
                y.backward(grad if grad.dtype == y.dtype else grad.to(y.dtype))

            ms = measure_ms(step, s.device, s.warmup, s.reps, s.max_seconds)
        row["train_peak_gib"] = mem.gib
        return ms

    def infer() -> float:
        with torch.inference_mode(), PeakMemory(model, s.device) as mem:
            x = torch.randn(batch, length, d_model, device=s.device, dtype=s.dtype)
            ms = measure_ms(lambda: model(x), s.device, s.warmup, s.reps, s.max_seconds)
        row["infer_peak_gib"] = mem.gib
        return ms

    label = f"{variant.name} L={fmt_length(length)}"
    row["train_ms"] = guarded(train, s.device, label + " train")
    model.zero_grad(set_to_none=True)
    if not s.over_budget():
        row["infer_ms"] = guarded(infer, s.device, label + " inference")
    for time_key, peak_key in (("train_ms", "train_peak_gib"), ("infer_ms", "infer_peak_gib")):
        if isinstance(row[time_key], str):  # failed or skipped: the peak says so too, or stays empty for errors
            row[peak_key] = row[time_key] if row[time_key] in (OOM, SKIPPED) else None
    _free_memory(s.device)
    return row


def _allocate_cache(model: nn.Module, context: int, extra: int, dtype: torch.dtype) -> object:
    if isinstance(model, TransformerBackbone):
        return model.allocate_inference_cache(1, context + extra, dtype=dtype)
    return model.allocate_inference_cache(1, dtype=dtype)


def _prefill(model: nn.Module, x: torch.Tensor, cache: object) -> torch.Tensor:
    cache.reset()
    return model(x, cache=cache)


def cache_mib(model: nn.Module, cache: object, context: int) -> float:
    """Decoding state held for one sequence: the KV cache at `context` tokens, or Mamba's constant conv + SSM state."""
    if isinstance(model, TransformerBackbone):
        return cache.nbytes(context) / 2**20
    states = [t for layer in cache.layers for t in (layer.conv_state, layer.ssm_state)]
    return sum(t.numel() * t.element_size() for t in states) / 2**20


def decode_row(variant: Variant, context: int, s: Settings, warmup: int) -> dict:
    """Prefill time of `context` tokens and the time of one eager decoding step after them, at batch 1."""
    row = {"variant": variant.name, "family": variant.family, "context": context, "prefill_ms": SKIPPED,
           "decode_ms": SKIPPED, "decode_graph_ms": SKIPPED, "cache_mib": None, "step_read_mib": None,
           "gpu_ops": None}
    if s.over_budget():
        return row
    model = variant.get(s.device)
    if model is None:
        return {**row, "prefill_ms": variant.build_error, "decode_ms": variant.build_error,
                "decode_graph_ms": variant.build_error}
    extra = warmup + 1 + max(s.decode_reps, MIN_REPS) + 8  # KV-cache room for every timed and untimed step
    state: dict = {}

    def prefill() -> float:
        with torch.inference_mode():
            x = torch.randn(1, context, model.d_model, device=s.device, dtype=s.dtype)
            cache = _allocate_cache(model, context, extra, s.dtype)
            row["cache_mib"] = cache_mib(model, cache, context)
            # what one step must at least move: every weight once, plus the KV cache read (Transformer) or the
            # recurrent state read and written back (Mamba)
            state_traffic = row["cache_mib"] * (1 if isinstance(model, TransformerBackbone) else 2)
            row["step_read_mib"] = weight_bytes(model) / 2**20 + state_traffic
            ms = measure_ms(lambda: _prefill(model, x, cache), s.device, s.warmup, s.reps, s.max_seconds)
            state["cache"] = cache  # only a completed prefill may be decoded from
            return ms

    def decode() -> float:
        with torch.inference_mode():
            cache = state["cache"]  # holds `context` tokens: the last timed call was a prefill
            x_t = torch.randn(1, model.d_model, device=s.device, dtype=s.dtype)
            return measure_ms(lambda: model.step(x_t, cache), s.device, warmup, s.decode_reps, s.max_seconds)

    label = f"{variant.name} context={fmt_length(context)}"
    row["prefill_ms"] = guarded(prefill, s.device, label + " prefill")
    if "cache" in state and not s.over_budget():
        row["decode_ms"] = guarded(decode, s.device, label + " decode")
    elif isinstance(row["prefill_ms"], str) and row["prefill_ms"] != SKIPPED:
        row["decode_ms"] = "needs prefill"
    state.clear()
    _free_memory(s.device)
    return row


def _count_gpu_ops(fn: Callable[[], object], device: torch.device) -> int:
    """GPU operations (kernels, memsets, copies) that one call of fn launches, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        _sync(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def graph_decode(variant: Variant, row: dict, s: Settings) -> None:
    """Fill row["decode_graph_ms"]: one decoding step after row["context"] tokens, captured as a CUDA graph and
    replayed (the KV-cache write and the attention length are fixed at capture, so every replay is the step at that
    context); and row["gpu_ops"]: how many GPU operations the eager step launches."""
    model = variant.get(s.device)
    if model is None:
        row["decode_graph_ms"] = variant.build_error
        return
    context = row["context"]
    label = f"{variant.name} context={fmt_length(context)}"
    state: dict = {}

    def prepare() -> int:
        with torch.inference_mode():
            x = torch.randn(1, context, model.d_model, device=s.device, dtype=s.dtype)
            x_t = torch.randn(1, model.d_model, device=s.device, dtype=s.dtype)
            cache = _allocate_cache(model, context, 8, s.dtype)
            _prefill(model, x, cache)
            state["x_t"], state["cache"] = x_t, cache  # the graph may be captured from here even if profiling fails
            model.step(x_t, cache)  # compiled and warm before profiling
            return _count_gpu_ops(lambda: model.step(x_t, cache), s.device)

    def run() -> float:
        with torch.inference_mode():
            x_t, cache = state["x_t"], state["cache"]
            # warm up on a side stream (allocator, lazy init), then capture one step
            current = torch.cuda.current_stream(s.device)
            side = torch.cuda.Stream(device=s.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(3):
                    model.step(x_t, cache)
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model.step(x_t, cache)
            return measure_ms(graph.replay, s.device, 3, s.decode_reps, s.max_seconds)

    row["gpu_ops"] = guarded(prepare, s.device, label + " GPU operations")
    if "cache" in state:
        row["decode_graph_ms"] = guarded(run, s.device, label + " CUDA graph")
    else:
        row["decode_graph_ms"] = "needs prefill"
    state.clear()
    _free_memory(s.device)


# ------------------------------------------------------------------------------------------------------ analysis
def _number(value: Cell) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def crossover(rows: list[dict], causal: bool, key: str = "train_ms") -> dict:
    """Where Mamba's `key` time drops below the Transformer's, for the causal or the bidirectional pair.

    Returns {"length": the smallest measured L from which Mamba is faster at every longer measured L (None if
    never), "interpolated": the L where the Transformer/Mamba ratio crosses 1 by log-log interpolation between the
    two lengths around it (None when not bracketed), "ratios": {L: Transformer time / Mamba time or "OOM"}, "text"}.
    A Transformer OOM where Mamba runs counts as Mamba being faster.
    """
    pick = lambda family: {r["length"]: r[key] for r in rows if r["family"] == family and r["causal"] == causal}
    mamba, transformer = pick("mamba"), pick("transformer")
    faster, ratios = {}, {}
    for length in sorted(set(mamba) & set(transformer)):
        m, t = mamba[length], transformer[length]
        if _number(m) and _number(t):
            faster[length], ratios[length] = m < t, t / m
        elif _number(m) and t == OOM:
            faster[length], ratios[length] = True, "Transformer OOM"
        elif m == OOM and _number(t):
            faster[length], ratios[length] = False, "Mamba OOM"
    kind = "causal" if causal else "bidirectional"
    what = "training step" if key == "train_ms" else "inference forward"
    known = sorted(faster)
    result = {"pair": kind, "key": key, "length": None, "interpolated": None, "ratios": ratios}
    if not known:
        result["text"] = f"{kind}: no length where both {what}s were measured"
        return result
    ratio_text = ", ".join(
        f"{fmt_length(n)} {r:.2f}x" if _number(r) else f"{fmt_length(n)} {r}" for n, r in ratios.items()
    )
    first = next((n for i, n in enumerate(known) if all(faster[m] for m in known[i:])), None)
    result["length"] = first
    if first is None:
        last = fmt_length(known[-1])
        text = f"Mamba's {what} is slower than the Transformer's at the longest measured length, {last}"
    elif first == known[0]:
        text = f"Mamba's {what} is faster than the Transformer's at every measured length (from {fmt_length(first)})"
    else:
        text = f"Mamba's {what} is faster than the Transformer's from L = {fmt_length(first)} on"
        before = known[known.index(first) - 1]
        r0, r1 = ratios[before], ratios[first]
        if _number(r0) and _number(r1) and 0 < r0 <= 1 < r1:
            frac = -math.log(r0) / (math.log(r1) - math.log(r0))
            result["interpolated"] = math.exp(math.log(before) + frac * (math.log(first) - math.log(before)))
            text += f" (ratio crosses 1 near L = {result['interpolated']:,.0f})"
    result["text"] = f"{kind}: {text}; Transformer/Mamba time: {ratio_text}"
    return result


def decode_summary(decode: list[dict], key: str) -> str:
    """Which contexts Mamba's decoding step beats the causal Transformer's at."""
    pick = lambda family: {r["context"]: r[key] for r in decode if r["family"] == family}
    mamba, transformer = pick("mamba"), pick("transformer")
    parts = []
    for context in sorted(set(mamba) & set(transformer)):
        m, t = mamba[context], transformer[context]
        if _number(m) and _number(t):
            parts.append(f"{fmt_length(context)} {t / m:.2f}x ({'Mamba' if m < t else 'Transformer'} faster)")
    mode = "eager" if key == "decode_ms" else "CUDA graph"
    if not parts:
        return f"decoding ({mode}): not measured for both models"
    return f"decoding ({mode}), Transformer/Mamba time per token: " + ", ".join(parts)


def read_floor_us(row: dict, bandwidth_tbs: Cell) -> float | None:
    """Microseconds one decoding step needs at least to read its weights and decoding state at `bandwidth_tbs`."""
    if not (_number(bandwidth_tbs) and _number(row.get("step_read_mib"))):
        return None
    return row["step_read_mib"] * 2**20 / (bandwidth_tbs * 1e12) * 1e6


def decode_bounds(decode: list[dict], bandwidth_tbs: Cell) -> list[str]:
    """For each causal model at its longest measured context: step time against GPU operations and the read floor,
    which says whether a step is bound by memory traffic or by launching (and waiting on) many small kernels."""
    lines = []
    for variant in dict.fromkeys(r["variant"] for r in decode):
        rows = [r for r in decode if r["variant"] == variant]
        for key, mode in (("decode_graph_ms", "as a CUDA graph"), ("decode_ms", "eager")):
            timed = [r for r in rows if _number(r[key])]
            if not timed:
                continue
            r = max(timed, key=lambda r: r["context"])
            us = r[key] * 1e3
            text = f"{variant}, context {fmt_length(r['context'])}: {us:,.0f} us per step {mode}"
            if _number(r.get("gpu_ops")) and r["gpu_ops"] > 0:
                text += f" for {r['gpu_ops']} GPU operations ({us / r['gpu_ops']:.1f} us each)"
            floor = read_floor_us(r, bandwidth_tbs)
            if floor:
                text += (f"; reading its weights and decoding state once ({r['step_read_mib']:,.0f} MiB) takes at "
                         f"least {floor:,.0f} us at the measured copy bandwidth, {us / floor:.1f}x below the step")
            lines.append(text)
            break
    return lines


# ------------------------------------------------------------------------------------------------------- reports
def _cell(value: Cell, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value.replace("|", "/")
    return f"{value:,.{digits}f}"


def render(result: dict) -> str:
    """The markdown report: settings, the length sweep, Transformer/Mamba ratios, decoding, crossovers."""
    meta = result["meta"]
    lines = [
        "# Mamba backbone vs Transformer (FlashAttention): time and memory against sequence length",
        "",
        f"- date: {meta['date']}",
        f"- device: {meta['device_name']}; torch {meta['torch']}, triton {meta['triton']}, kernels: {meta['kernels']}",
        f"- precision: {meta['precision']}",
        f"- tokens per batch: {meta['tokens']:,} (batch = tokens / L); timing: {meta['timing']}",
        f"- run time: {_cell(meta.get('elapsed_s'), 0)} s (time budget {meta.get('budget', '-')})",
        f"- peak memory: {meta['memory']}",
        f"- device-to-device copy bandwidth (bytes read + written per second): "
        f"{_cell(meta.get('copy_bandwidth_tbs'))} TB/s",
    ]
    for name, info in meta["variants"].items():
        count = f"{info['parameters'] / 1e6:.2f}M parameters" if info["parameters"] else "not built"
        lines.append(f"- {name}: {count} ({info['description']})")
    lines += [f"- command: `{meta['command']}`", "", "## Training step and inference forward", "",
              "| model | L | batch | train step (ms) | inference (ms) | train peak (GiB) | inference peak (GiB) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    order = {name: i for i, name in enumerate(meta["variants"])}
    for r in sorted(result["rows"], key=lambda r: (order.get(r["variant"], len(order)), r["length"])):
        lines.append(
            f"| {r['variant']} | {fmt_length(r['length'])} | {r['batch']} | {_cell(r['train_ms'])} | "
            f"{_cell(r['infer_ms'])} | {_cell(r['train_peak_gib'])} | {_cell(r['infer_peak_gib'])} |"
        )
    summaries = result.get("crossovers", [])
    if summaries:
        lines += ["", "## Transformer time / Mamba time (above 1: Mamba faster)", "",
                  "| L | " + " | ".join(f"{c['pair']} {'train' if c['key'] == 'train_ms' else 'inference'}"
                                       for c in summaries) + " |",
                  "| --- |" + " --- |" * len(summaries)]
        lengths = sorted({n for c in summaries for n in c["ratios"]})
        for n in lengths:
            cells = [c["ratios"].get(n) for c in summaries]
            lines.append(f"| {fmt_length(n)} | " + " | ".join(_cell(v) for v in cells) + " |")
    if result["decode"]:
        lines += ["", "## Prefill and decoding at batch 1 (causal models)", "",
                  "Read per step: every weight once plus the KV cache (Transformer) or the recurrent state read and "
                  "written (Mamba); the floor is that amount at the measured device-to-device copy bandwidth.", "",
                  "| model | context | prefill (ms) | decode step, eager (ms) | decode step, CUDA graph (ms) | "
                  "decoding state (MiB) | read per step (MiB) | read floor (us) | GPU ops per step |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        bandwidth = meta.get("copy_bandwidth_tbs")
        for r in sorted(result["decode"], key=lambda r: (order.get(r["variant"], len(order)), r["context"])):
            lines.append(
                f"| {r['variant']} | {fmt_length(r['context'])} | {_cell(r['prefill_ms'])} | "
                f"{_cell(r['decode_ms'], 3)} | {_cell(r['decode_graph_ms'], 3)} | {_cell(r['cache_mib'], 1)} | "
                f"{_cell(r.get('step_read_mib'), 1)} | {_cell(read_floor_us(r, bandwidth), 1)} | "
                f"{_cell(r.get('gpu_ops'), 0)} |"
            )
    lines += ["", "## Crossover", ""]
    lines += [f"- {c['text']}" for c in summaries] or ["- not computed"]
    lines += [f"- {text}" for text in result.get("decode_summaries", [])]
    lines += [f"- {text}" for text in decode_bounds(result["decode"], meta.get("copy_bandwidth_tbs"))]
    if result.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in result["plots"]]
    if result.get("plot_error"):
        lines += ["", f"Plots failed: {result['plot_error']}"]
    return "\n".join(lines) + "\n"


def _environment(device: torch.device, dtype: torch.dtype) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        precision = (f"{str(dtype).removeprefix('torch.')} parameters and activations, no autocast (Mamba keeps A_log, "
                     "D and the residual stream in fp32); attention on the FlashAttention backend")
    else:
        name = "CPU"
        precision = f"{str(dtype).removeprefix('torch.')} parameters, no autocast; attention on torch's default backend"
    from seqbackbone.kernels import backend

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device_name": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "kernels": backend(torch.empty(0, device=device)),
        "precision": precision,
    }


def _write(result: dict, out: Path | None) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "models.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "models.md").write_text(render(result))


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32
    )
    if args.quick:
        args.reps, args.max_seconds, args.decode_reps = min(args.reps, 5), min(args.max_seconds, 0.25), 20
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    for name in ("warmup", "reps", "decode_reps"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            print(f"error: --{name.replace('_', '-')} must be at least {0 if name == 'warmup' else 1}", file=sys.stderr)
            return 2
    torch.manual_seed(args.seed)

    s = Settings(device=device, dtype=dtype, tokens=args.tokens, warmup=args.warmup, reps=args.reps,
                 max_seconds=args.max_seconds, decode_reps=args.decode_reps, budget_s=args.budget_s)
    variants = make_variants(args, device, dtype)
    result = {
        "meta": {
            **_environment(device, dtype),
            "tokens": args.tokens,
            "timing": f"median of {min(MIN_REPS, args.reps)} to {args.reps} timed calls (about {args.max_seconds} "
                      f"s) after up to {args.warmup} warm-up calls and one sizing call; decoding: up to "
                      f"{args.decode_reps} steps",
            "memory": "torch.cuda.max_memory_allocated during the measurement, reset per configuration, counting "
                      "this model's weights, inputs, activations, gradients and workspace (no optimizer state)",
            "command": "python -m seqbackbone.bench.models " + " ".join(argv if argv is not None else sys.argv[1:]),
            "lengths": list(lengths),
            "budget": f"{args.budget_s:g} s" if args.budget_s > 0 else "none",
            "variants": {v.name: {"family": v.family, "causal": v.causal, "description": v.description,
                                  "parameters": None} for v in variants},
        },
        "rows": [],
        "decode": [],
    }

    def publish() -> None:
        for v in variants:
            result["meta"]["variants"][v.name]["parameters"] = v.parameters
        result["crossovers"] = [crossover(result["rows"], causal, key) for key in ("train_ms", "infer_ms")
                                for causal in (True, False)]
        result["decode_summaries"] = [decode_summary(result["decode"], key) for key in ("decode_ms", "decode_graph_ms")]
        result["meta"]["elapsed_s"] = round(time.perf_counter() - s.started, 1)
        _write(result, args.out)

    print(f"# {result['meta']['device_name']}, {result['meta']['precision']}", file=sys.stderr)
    if device.type == "cuda":
        result["meta"]["copy_bandwidth_tbs"] = guarded(lambda: copy_bandwidth_tbs(device), device, "bandwidth")
    causal = [v for v in variants if v.causal]
    contexts = [] if args.no_decode else list(args.decode_contexts)
    # Decoding first (cheap, and it warms the kernels up), then the length sweep, then CUDA graphs last, so that a
    # capture that fails cannot disturb the other measurements.
    for context in contexts:
        for v in causal:
            row = decode_row(v, context, s, warmup=args.warmup + 3)
            result["decode"].append(row)
            print(f"decode {v.name} context={fmt_length(context)}: prefill {_cell(row['prefill_ms'])} ms, "
                  f"step {_cell(row['decode_ms'], 3)} ms", file=sys.stderr, flush=True)
            publish()
    for length in lengths:
        for v in variants:
            row = sweep_row(v, length, s)
            result["rows"].append(row)
            print(f"{v.name} L={fmt_length(length)} batch={row['batch']}: train {_cell(row['train_ms'])} ms, "
                  f"inference {_cell(row['infer_ms'])} ms, peak {_cell(row['train_peak_gib'])} GiB",
                  file=sys.stderr, flush=True)
            publish()
    for row in result["decode"]:
        v = next(v for v in causal if v.name == row["variant"])
        if device.type != "cuda" or args.no_graphs:
            row["decode_graph_ms"] = None
        elif s.over_budget():
            row["decode_graph_ms"] = SKIPPED
        else:
            graph_decode(v, row, s)
            print(f"decode {v.name} context={fmt_length(row['context'])}: CUDA-graph step "
                  f"{_cell(row['decode_graph_ms'], 3)} ms, {_cell(row['gpu_ops'], 0)} GPU operations",
                  file=sys.stderr, flush=True)
        publish()
    publish()

    if args.out is not None:
        from seqbackbone.bench.plots import plot_models

        plots = guarded(lambda: [str(p) for p in plot_models(result, args.out)], device, "plots")
        if isinstance(plots, str):
            result["plot_error"] = plots
        else:
            result["plots"] = plots
        _write(result, args.out)
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
