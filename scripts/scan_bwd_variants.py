"""Time the code variants of the sequential scan backward on a GPU, at the shapes of ANCHORS.md.

    python scripts/scan_bwd_variants.py [--shapes 0,1,2] [--variants base-base,base-chain,...] [--out FILE]

A variant is FWD-BWD[:MAXNREG][+swN][+f32][+ff32]: `scan_triton.FWD_VARIANT`, `BWD_VARIANT` (the sequential kernels'
code shape, see `scan_seq_triton.BWD_VARIANTS`), optionally `BWD_MAXNREG` (a register cap on the main backward),
`BWD_LOCAL_SW_EXP2` = N (sixteenths of the states whose exp2 the group pass computes on the FMA units),
`BWD_BC_FP32` (f32: the backward reads fp32 copies of B and C) and `FWD_BC_FP32` (ff32: the forward does). For each
shape
(batch, dim, L, N = 16; bf16 u / delta / z / B / C, fp32 A, D, delta_bias, softplus, with z, as
`python -m seqbackbone.bench kernels` runs it) and variant it prints the median (`triton.testing.do_bench`) of the
forward alone (no saved states), of the backward alone (`scan_bwd` from the forward's saved states: group pass,
chaining, main backward, partial-sum reductions) and of forward + backward through autograd, the registers and spills
of the main backward and of the group pass, and the largest absolute difference of every input gradient from the
first variant's at the first shape (the variants change code shape only, so they should agree to rounding). Each
variant runs in a process of its own: all compile side by side, then they time one at a time; a variant that hangs
ends at --budget with a traceback of where it stood, and the others still report.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time

import torch

# base-base first: the gradient reference (the slower "lean" shapes and 144 / 128 caps, measured 2026-11-29, left out)
DEFAULT_VARIANTS = ("base-base,chain-chain,chain-chain+f32,chain-fuse:168,chain-ilp:168,chain-ilp:168+f32,"
                    "chain-ilp4:168+f32,chain-ilpp:168+f32,chain-ilpp+f32,chain-chain+sw4,chain-chain+sw1+f32,"
                    "chain-ilpp:168+sw1+f32,chain-chain+ff32")
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


Variant = tuple[str, str, int | None, int, bool, bool]


def parse_variant(text: str) -> Variant:
    """FWD-BWD[:MAXNREG][+swN][+f32][+ff32] -> (FWD_VARIANT, BWD_VARIANT, BWD_MAXNREG, BWD_LOCAL_SW_EXP2,
    BWD_BC_FP32, FWD_BC_FP32)."""
    from seqbackbone.kernels.scan_seq_triton import BWD_VARIANTS

    want = f"FWD-BWD[:MAXNREG][+swN][+f32][+ff32], FWD and BWD in {BWD_VARIANTS}, N in 0..16"
    head, *opts = text.split("+")
    names, _, cap = head.partition(":")
    fwd, _, bwd = names.partition("-")
    sw, f32, ff32 = 0, False, False
    for o in opts:
        if o == "f32":
            f32 = True
        elif o == "ff32":
            ff32 = True
        elif o.startswith("sw") and o[2:].isdigit() and int(o[2:]) <= 16:
            sw = int(o[2:])
        else:
            raise ValueError(f"--variants: got {text!r}; expected {want}")
    if fwd not in BWD_VARIANTS or bwd not in BWD_VARIANTS or (cap and not cap.isdigit()):
        raise ValueError(f"--variants: got {text!r}; expected {want}")
    return fwd, bwd, (int(cap) if cap else None), sw, f32, ff32


def variant_name(v: Variant) -> str:
    return (f"{v[0]}-{v[1]}" + (f":{v[2]}" if v[2] else "") + (f"+sw{v[3]}" if v[3] else "")
            + ("+f32" if v[4] else "") + ("+ff32" if v[5] else ""))


def _select(variant: Variant) -> None:
    from seqbackbone.kernels import scan_triton as st

    st.FWD_VARIANT, st.BWD_VARIANT, st.BWD_MAXNREG, st.BWD_LOCAL_SW_EXP2, st.BWD_BC_FP32, st.FWD_BC_FP32 = variant


def _fwd_bwd(x: dict, dout: torch.Tensor) -> None:
    from seqbackbone.kernels import scan_triton as st

    st.selective_scan_triton(**x, delta_softplus=True).backward(dout)


def _inputs(shape) -> tuple[dict, torch.Tensor]:
    from seqbackbone.bench.kernels import scan_inputs

    x = {k: v.requires_grad_(True) for k, v in scan_inputs(*shape).items()}
    g = torch.Generator(device="cuda").manual_seed(1)
    dout = torch.randn(x["u"].shape, device="cuda", generator=g).to(x["u"].dtype)
    return x, dout


def _calls(shape) -> tuple:
    """Forward + backward through autograd, the forward alone (no saved states) and the backward alone (from the
    forward's saved states) at `shape`, as functions of no argument, and the inputs autograd fills."""
    from seqbackbone.kernels import scan_triton as st

    x, dout = _inputs(shape)
    xd = {k: v.detach() for k, v in x.items()}
    args = (xd["u"], xd["delta"], xd["A"], xd["B"], xd["C"], xd["D"], xd["z"], xd["delta_bias"])
    fwd = lambda: st.scan_fwd(*args, True, False, None, None, save_states=False, write_last=False)  # noqa: E731
    _, _, hsave = st.scan_fwd(*args, True, False, None, None, save_states=True, write_last=False)
    bwd = lambda: st.scan_bwd(dout, None, *args, True, False, None, hsave)  # noqa: E731
    return (lambda: _fwd_bwd(x, dout)), fwd, bwd, list(x.values())


def time_variant(variant: Variant, shape) -> dict:
    """Medians (us) of forward alone, backward alone and forward + backward, with the main kernels' registers."""
    import triton.testing
    from seqbackbone.kernels import scan_triton as st

    _select(variant)
    fwd_bwd, fwd, bwd, params = _calls(shape)
    t_all = triton.testing.do_bench(fwd_bwd, warmup=25, rep=200, grad_to_none=params, return_mode="median") * 1e3
    t_fwd = triton.testing.do_bench(fwd, warmup=25, rep=200, return_mode="median") * 1e3
    t_bwd = triton.testing.do_bench(bwd, warmup=25, rep=200, return_mode="median") * 1e3
    kb, kl = st.LAST_KERNEL.get("bwd"), st.LAST_KERNEL.get("bwd_local")
    return dict(name=variant_name(variant), shape=list(shape), fwd_variant=variant[0], bwd_variant=variant[1],
                maxnreg=variant[2], local_sw_exp2=variant[3], bc_fp32=variant[4], fwd_bc_fp32=variant[5],
                fwd_us=t_fwd, bwd_us=t_bwd, fwd_bwd_us=t_all,
                regs=getattr(kb, "n_regs", None), spills=getattr(kb, "n_spills", None),
                local_regs=getattr(kl, "n_regs", None), local_spills=getattr(kl, "n_spills", None))


def _check_grads(variant: Variant, shape) -> dict:
    """The variant's input gradients at `shape` (batch-first ones cut to two batch items, to keep the files small)."""
    x, dout = _inputs(shape)
    _fwd_bwd(x, dout)
    return {k: (x[k].grad[:2] if x[k].grad.dim() == 3 else x[k].grad).detach().cpu() for k in GRAD_NAMES}


def _variant_worker(variant: Variant, shapes: list, lock, barrier, results, grad_dir: str, seconds: float) -> None:
    """One variant in its own process: compile (beside the others), then, one process at a time, time it at each
    shape and save its gradients at the first. A kernel that hangs ends this process only: faulthandler prints where
    it stood and exits."""
    import faulthandler

    faulthandler.dump_traceback_later(seconds, exit=True)
    name = variant_name(variant)
    _select(variant)
    t0 = time.time()
    try:
        for shape in shapes:  # compile every kernel the timing launches (each specialisation is a compile)
            for call in _calls(shape)[:3]:
                call()
        torch.cuda.synchronize()
        results.put(("msg", f"{name} compiled in {time.time() - t0:.0f} s"))
        failed = None
    except Exception as e:  # reported; the other variants go on
        failed = f"{name}: failed to compile or run: {e!r}"[:400]
    torch.cuda.empty_cache()
    try:
        barrier.wait()  # no timing while others compile and run their first launches
    except Exception:
        pass
    if failed:
        results.put(("msg", failed))
        return
    with lock:
        for shape in shapes:
            try:
                row = time_variant(variant, shape)
            except Exception as e:
                results.put(("msg", f"{str(tuple(shape[:3])):>18} {name}: failed: {e!r}"[:400]))
                continue
            results.put(("row", row))
            torch.cuda.empty_cache()
        torch.save(_check_grads(variant, shapes[0]), f"{grad_dir}/{name}.pt")
        torch.cuda.synchronize()
    results.put(("done", name))


def _row_line(row: dict, diff: str, upstream: float) -> str:
    return (f"{str(tuple(row['shape'][:3])):>18} {row['name']:>24} {row['fwd_us']:7.0f} {row['bwd_us']:7.0f} "
            f"{row['fwd_bwd_us']:10.0f} {upstream:8.0f} {str(row['regs']) + '/' + str(row['spills']):>11} "
            f"{str(row['local_regs']):>5} {diff:>10}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="0,1,2", help="comma-separated indices into bench.kernels.SHAPES")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="comma-separated FWD-BWD[:MAXNREG]; gradients are compared with the first")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.add_argument("--budget", type=float, default=210.0,
                   help="seconds; a variant not done by then is ended (its process prints where it stood)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 1
    import queue
    import tempfile

    import triton

    from seqbackbone.bench.kernels import SHAPES, UPSTREAM

    shapes = [SHAPES[int(i)] for i in args.shapes.split(",")]
    variants = [parse_variant(v) for v in args.variants.split(",")]
    names = [variant_name(v) for v in variants]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    t0 = time.time()
    ctx = mp.get_context("spawn")
    lock, barrier, results = ctx.Lock(), ctx.Barrier(len(variants), timeout=args.budget / 2), ctx.Queue()
    rows, done = [], set()
    with tempfile.TemporaryDirectory() as grad_dir:
        procs = [ctx.Process(target=_variant_worker, args=(v, shapes, lock, barrier, results, grad_dir,
                                                           args.budget - 5), daemon=True) for v in variants]
        for pr in procs:
            pr.start()
        print("rows in the order measured (us; regs/spills of the main backward, registers of the group pass)")
        while any(pr.is_alive() for pr in procs) or not results.empty():
            try:
                kind, item = results.get(timeout=1.0)
            except queue.Empty:
                continue
            if kind == "row":
                rows.append(item)
                print(_row_line(item, "", UPSTREAM[tuple(item["shape"])][1]), flush=True)
            elif kind == "done":
                done.add(item)
            else:
                print(item, flush=True)
        for pr in procs:
            pr.join()
        missing = [n for n in names if n not in done]
        if missing:
            print(f"not finished (failed, or ended at --budget {args.budget:.0f} s): {', '.join(missing)}")
        ref_name = names[0] if names[0] in done else None
        diffs = {}
        if ref_name:
            ref = torch.load(f"{grad_dir}/{ref_name}.pt", weights_only=True)
            for n in done:
                g = torch.load(f"{grad_dir}/{n}.pt", weights_only=True)
                diffs[n] = max((g[k].float() - ref[k].float()).abs().max().item() for k in GRAD_NAMES)
    print(f"\nall rows by shape (max|dgrad|: largest gradient difference from {names[0]} at {tuple(shapes[0][:3])}, "
          "first two batch items)")
    print(f"{'shape':>18} {'variant':>24} {'fwd us':>7} {'bwd us':>7} {'fwd+bwd us':>10} {'upstream':>8} "
          f"{'regs/spills':>11} {'local':>5} {'max|dgrad|':>10}")
    rows.sort(key=lambda r: (shapes.index(tuple(r["shape"])), names.index(r["name"])))
    for row in rows:
        d = diffs.get(row["name"])
        row["max_abs_diff"] = d
        diff = "ref" if row["name"] == ref_name else ("?" if d is None else f"{d:.2e}")
        print(_row_line(row, diff, UPSTREAM[tuple(row["shape"])][1]))
    print(f"total {time.time() - t0:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
