"""CPU benchmark of the selective scan: `selective_scan` (chunked PyTorch path) against mambapy's parallel scan.

    python -m seqbackbone.bench.cpu_scan                      # batch 2, dim 256, L 2048, N 16, fp32
    python -m seqbackbone.bench.cpu_scan --update BENCHMARKS.md

Both compute out = scan(exp(delta A), delta B u) . C + D u on the same data (same seed, each in its native layout:
ours (batch, dim, L), mambapy's (batch, L, dim)), then backpropagate the same random output gradient to every input.
Each implementation runs in fresh subprocesses (alternating, `--rounds` each, at each `--threads` setting: torch's
default and 1 thread) so its peak memory is its own: peak RSS growth is the process's maximum resident size during
the first forward + backward minus its resident size just before (inputs already allocated). Times are the median of
the timed repeats after that first, untimed run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

IMPLS = ("seqbackbone", "mambapy")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def make_inputs(batch: int, dim: int, length: int, n_state: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 inputs in a Mamba layer's ranges, in (batch, dim, L) layout; delta already positive (post-softplus)."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=torch.nn.functional.softplus(0.5 * torch.randn(batch, dim, length, generator=g) - 3.0),
        A=-torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1),
        B=torch.randn(batch, n_state, length, generator=g),
        C=torch.randn(batch, n_state, length, generator=g),
        D=torch.ones(dim),
        grad=torch.randn(batch, dim, length, generator=g),
    )


def _runner(impl: str, data: dict[str, torch.Tensor]):
    """Returns (leaves, forward) where forward() -> output in (batch, dim, L) layout."""
    if impl == "seqbackbone":
        from seqbackbone.kernels import selective_scan

        leaves = {k: data[k].clone().requires_grad_(True) for k in ("u", "delta", "A", "B", "C", "D")}
        return leaves, lambda: selective_scan(**leaves)
    if impl == "mambapy":
        from mambapy.mamba import MambaBlock

        # mambapy's layout: x, delta (batch, L, dim); B, C (batch, L, N)
        leaves = {k: data[k].transpose(1, 2).contiguous().requires_grad_(True) for k in ("u", "delta", "B", "C")}
        leaves.update({k: data[k].clone().requires_grad_(True) for k in ("A", "D")})

        def forward():
            # selective_scan does not touch `self`; pscan is the Blelloch scan with its own backward
            y = MambaBlock.selective_scan(
                None, leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"]
            )
            return y.transpose(1, 2)

        return leaves, forward
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def worker(impl: str, batch: int, dim: int, length: int, n_state: int, repeats: int) -> dict:
    """Runs in a fresh process: one untimed run that measures peak memory, then `repeats` timed runs."""
    data = make_inputs(batch, dim, length, n_state)
    grad = data.pop("grad")
    leaves, forward = _runner(impl, data)
    rss_before, max_before = _rss_bytes(), _max_rss_bytes()
    out = forward()
    out.backward(grad)
    peak = _max_rss_bytes() - rss_before
    checksum = {"out": out.detach().double().abs().sum().item()}
    checksum.update({k: v.grad.double().abs().sum().item() for k, v in leaves.items()})
    del out
    fwd, bwd = [], []
    for _ in range(repeats):
        for v in leaves.values():
            v.grad = None
        t0 = time.perf_counter()
        out = forward()
        t1 = time.perf_counter()
        out.backward(grad)
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
        del out
    return dict(
        impl=impl,
        fwd=fwd,
        bwd=bwd,
        peak_rss_growth=peak,
        peak_reliable=max_before < rss_before + peak,
        inputs_bytes=sum(v.numel() * v.element_size() for v in data.values()),
        threads=torch.get_num_threads(),
        checksum=checksum,
    )


def run_in_subprocess(impl: str, threads: int, args: argparse.Namespace) -> dict:
    """One fresh worker process; threads: OMP_NUM_THREADS for it (0: torch's default)."""
    cmd = [sys.executable, "-m", "seqbackbone.bench.cpu_scan", "--worker", impl]
    cmd += ["--batch", str(args.batch), "--dim", str(args.dim), "--length", str(args.length)]
    cmd += ["--state", str(args.state), "--repeats", str(args.repeats)]
    env = dict(os.environ, SEQBACKBONE_KERNELS="torch")
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{impl} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_agreement(n: int = 3) -> float:
    """Max relative difference of output and gradients between the two, at a small size, in one process."""
    data = make_inputs(2, 16, 128, 4, seed=1)
    grad = data.pop("grad")
    results = []
    for impl in IMPLS:
        leaves, forward = _runner(impl, data)
        out = forward()
        out.backward(grad)
        gs = {k: v.grad.transpose(1, 2) if impl == "mambapy" and v.dim() == 3 else v.grad for k, v in leaves.items()}
        results.append((out.detach(), gs))
    (o1, g1), (o2, g2) = results
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()
    return max([rel(o1, o2)] + [rel(g1[k], g2[k]) for k in g1])


def markdown(results: dict[tuple[int, str], dict], args: argparse.Namespace, agreement: float) -> str:
    """The '## CPU' section: one row per (torch threads, implementation), one speed-up per thread setting."""
    med = {k: (statistics.median(r["fwd"]), statistics.median(r["bwd"])) for k, r in results.items()}
    mib = lambda b: f"{b / 2**20:,.1f} MiB"
    anchor = (args.batch, args.dim, args.length, args.state) == (2, 256, 2048, 16)
    names = {
        "seqbackbone": "`seqbackbone.kernels.selective_scan` (chunked, recomputing backward)",
        "mambapy": "mambapy 1.2.0 `MambaBlock.selective_scan` (`pscan`)",
    }
    settings = sorted({t for t, _ in results}, key=lambda t: -results[(t, IMPLS[0])]["threads"])
    lines = [
        "## CPU",
        "",
        f"Selective scan forward + backward, fp32, batch {args.batch}, dim {args.dim}, L {args.length}, "
        f"N {args.state}, with D, no z{' (the shape of the CPU anchor in ANCHORS.md)' if anchor else ''}. Measured "
        f"{datetime.date.today().isoformat()} on {_cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"Python {platform.python_version()}, by `python -m seqbackbone.bench.cpu_scan`. The machine is shared: its "
        f"1-minute load average was {args.load[0]:.1f} before and {args.load[1]:.1f} after the run.",
        "",
        "| torch threads | implementation | forward | backward | forward + backward | peak RSS growth |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in settings:
        for impl in IMPLS:
            f, b = med[(t, impl)]
            r = results[(t, impl)]
            lines.append(
                f"| {r['threads']}{' (default)' if t == 0 else ''} | {names[impl]} | {f:.3f} s | {b:.3f} s | "
                f"{f + b:.3f} s | {mib(r['peak_rss_growth'])} |"
            )
    lines.append("")
    for t in settings:
        ours, theirs = med[(t, "seqbackbone")], med[(t, "mambapy")]
        peaks = mib(results[(t, "seqbackbone")]["peak_rss_growth"]), mib(results[(t, "mambapy")]["peak_rss_growth"])
        lines.append(
            f"- {results[(t, IMPLS[0])]['threads']} torch thread(s): forward + backward speed-up over mambapy "
            f"**{sum(theirs) / sum(ours):.1f}x**, peak memory growth {peaks[0]} against {peaks[1]}."
        )
    lines += [
        "",
        f"Inputs: {mib(results[(settings[0], 'seqbackbone')]['inputs_bytes'])}. Times are medians of {args.rounds} x "
        f"{args.repeats} runs: {args.rounds} fresh processes per implementation and thread setting, alternating "
        f"between the two implementations, each timing {args.repeats} runs after an untimed first one. Peak RSS "
        "growth is a process's maximum resident size during that first forward + backward minus its resident size "
        "just before it (the larger of the processes). Our reading of the thread settings: with 2 threads each of "
        "mambapy's ops runs as an OpenMP team of two that waits at a barrier, which a busy machine makes costly; the "
        "chunked scan instead splits the batch (or the channels) over single-threaded worker threads that meet once "
        "per scan. Outputs and all "
        f"gradients of the two agree to {agreement:.1e} relative error (checked at a small size).",
        "",
    ]
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", text)
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def update_section(path: Path, section: str) -> None:
    """Replaces the `## CPU` section of `path` (up to the next `## ` heading), or appends it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(r"^## CPU\n.*?(?=^## |\Z)", re.S | re.M)
    section = section.rstrip("\n") + "\n\n"  # a blank line before whatever section follows
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per process, after one untimed run")
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per implementation, alternating")
    p.add_argument(
        "--threads",
        type=lambda text: [int(t) for t in text.split(",")],
        default=[0, 1],
        help="comma-separated OMP_NUM_THREADS settings to measure (0: torch's default), default 0,1",
    )
    p.add_argument("--update", type=Path, default=None, help="rewrite the '## CPU' section of this markdown file")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.dim, args.length, args.state, args.repeats)))
        return
    agreement = check_agreement()
    load_before = os.getloadavg()[0]
    results: dict[tuple[int, str], dict] = {}
    for _ in range(args.rounds):  # alternate the two, so that a change in the machine's load hits both alike
        for threads in args.threads:
            for impl in IMPLS:
                r = run_in_subprocess(impl, threads, args)
                kept = results.setdefault((threads, impl), r)
                if kept is not r:
                    kept["fwd"] += r["fwd"]
                    kept["bwd"] += r["bwd"]
                    kept["peak_rss_growth"] = max(kept["peak_rss_growth"], r["peak_rss_growth"])
                    kept["peak_reliable"] = kept["peak_reliable"] and r["peak_reliable"]
    args.load = (load_before, os.getloadavg()[0])
    print(f"{'threads':>7} {'implementation':<14} {'forward':>9} {'backward':>9} {'total':>9} {'peak RSS growth':>16}")
    for (_, impl), r in results.items():
        f, b = statistics.median(r["fwd"]), statistics.median(r["bwd"])
        note = "" if r["peak_reliable"] else " (peak before the run was higher: growth is a lower bound)"
        print(
            f"{r['threads']:>7} {impl:<14} {f:8.3f}s {b:8.3f}s {f + b:8.3f}s {r['peak_rss_growth'] / 2**20:12.0f} MiB"
            f"{note}"
        )
    print(f"checksums: {json.dumps({f'{t}/{k}': r['checksum'] for (t, k), r in results.items()})}")
    section = markdown(results, args, agreement)
    print()
    print(section)
    if args.update is not None:
        update_section(args.update, section)
        print(f"updated {args.update}")


if __name__ == "__main__":
    main()
