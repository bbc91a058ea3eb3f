"""CPU benchmark of one decoding step: through the modules (`MambaBackbone.step`) against `PlainBackboneStep`.

    python -m seqbackbone.bench cpu-decode                       # the tiny and small wave and DNA LMs, batch 1 and 8
    python -m seqbackbone.bench cpu-decode --models mamba_wave_lm_tiny --batch-sizes 1 --compile

Both paths run the same PyTorch arithmetic (their logits and states are checked to be bitwise equal first), so the
difference is the cost of the module calls and of each op's argument checks, paid at every token. Each model and
batch size gets its own decoder on a 64-token prompt; the two paths are timed in alternating rounds of `--steps`
steps, and each takes the median of its rounds' per-step times. The step includes the embedding and the head (what
`generate` calls per token, less the sampling). `--compile` also times the step under torch.compile (the first call
compiles for tens of seconds, excluded). Output: a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch

import seqbackbone
from seqbackbone.generation import StepDecoder, _step_logits

MODELS = ("mamba_wave_lm_tiny", "mamba_wave_lm_small", "mamba_dna_lm_tiny", "mamba_dna_lm_small")


def _paths(decoder: StepDecoder) -> dict[str, object]:
    """name -> a function running one step on the decoder's token and cache, returning logits (B, V) fp32."""
    parts = decoder.parts
    conv, ssm = decoder._states
    if decoder.plain is None:
        raise ValueError("this model does not take the plain step (see plain_step_unsupported_reason)")
    return {
        "modules": lambda: _step_logits(parts.embed, parts.backbone, parts.head, decoder.token, conv, ssm),
        "plain": lambda: parts.head(decoder.plain(parts.embed(decoder.token[:, None])[:, 0])).float(),
    }


def check_bitwise(decoder: StepDecoder, steps: int = 3) -> bool:
    """Runs `steps` steps of both paths from the same cache; True when logits and states are bitwise equal."""
    states = [t for group in decoder._states for t in group]
    start = [t.clone() for t in states]
    results = []
    for run in _paths(decoder).values():
        for t, s in zip(states, start, strict=True):
            t.copy_(s)
        logits = [run().clone() for _ in range(steps)]
        results.append((logits, [t.clone() for t in states]))
    (l1, s1), (l2, s2) = results
    return all(torch.equal(a, b) for a, b in zip(l1 + s1, l2 + s2, strict=True))


def time_paths(decoder: StepDecoder, steps: int, rounds: int, compiled: object | None) -> dict[str, float]:
    """Median seconds per step of each path over alternating rounds."""
    paths = _paths(decoder)
    if compiled is not None:
        paths["compiled"] = compiled
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for run in paths.values():  # warm-up
        for _ in range(5):
            run()
    for _ in range(rounds):
        for name, run in paths.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                run()
            samples[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(v) for name, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--steps", type=int, default=100, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    header = "| model | parameters | batch | modules ms/step | plain ms/step | speed-up |"
    sep = "| --- | --- | --- | --- | --- | --- |"
    if args.compile:
        header += " torch.compile ms/step |"
        sep += " --- |"
    load_before = _load()
    rows = []
    with torch.inference_mode():
        for name in args.models:
            model = seqbackbone.create_model(name).eval()
            n_params = sum(t.numel() for t in model.parameters())
            for batch in args.batch_sizes:
                decoder = StepDecoder(model, batch)
                decoder.prefill(torch.randint(0, model.vocab_size, (batch, 64)))
                if not check_bitwise(decoder):
                    raise AssertionError(f"{name} batch {batch}: the plain step differs from the modules' step")
                compiled = None
                if args.compile:
                    step = StepDecoder(model, batch, compile=True)
                    step.prefill(torch.randint(0, model.vocab_size, (batch, 64)))
                    step.token.copy_(decoder.token)
                    compiled = step._run_step
                    compiled()  # compiles
                times = time_paths(decoder, args.steps, args.rounds, compiled)
                row = (f"| {name} | {n_params / 1e6:.2f}M | {batch} | {times['modules'] * 1e3:.2f} | "
                       f"{times['plain'] * 1e3:.2f} | {times['modules'] / times['plain']:.2f}x |")
                if compiled is not None:
                    row += f" {times['compiled'] * 1e3:.2f} |"
                rows.append(row)
                print(row, flush=True)
    print()
    print(f"Measured {datetime.date.today()} on {platform.processor() or platform.machine()} "
          f"({torch.get_num_threads()} threads), torch {torch.__version__}, Python {platform.python_version()}; "
          f"1-minute load average {load_before} before and {_load()} after; logits and states bitwise equal.")
    print()
    print("\n".join([header, sep, *rows]))
    return 0


def _load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "n/a"


if __name__ == "__main__":
    raise SystemExit(main())
