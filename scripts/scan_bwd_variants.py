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
first variant's (the variants change code shape only, so they should agree to rounding). Kernels are compiled first,
in one process per variant.
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


def _warm(variant: Variant, shapes: list) -> str:
    """Compile every kernel of one variant (run once at each shape; Triton keeps them in its disk cache)."""
    _select(variant)
    try:
        for shape in shapes:
            x, dout = _inputs(shape)
            _fwd_bwd(x, dout)
        torch.cuda.synchronize()
    except Exception as e:  # reported; the variant then fails again, visibly, in its own row
        return f"{variant_name(variant)} failed to compile or run: {e!r}"[:400]
    return f"{variant_name(variant)} compiled"


def time_variant(variant, shape, ref_grads: dict | None) -> tuple[dict, dict]:
    import triton.testing
    from seqbackbone.kernels import scan_triton as st

    _select(variant)
    x, dout = _inputs(shape)
    _fwd_bwd(x, dout)
    grads = {k: x[k].grad.detach().clone() for k in GRAD_NAMES}
    diff = None
    if ref_grads is not None:
        diff = max((grads[k].float() - ref_grads[k].float()).abs().max().item() for k in GRAD_NAMES)
    params = list(x.values())
    t_all = triton.testing.do_bench(lambda: _fwd_bwd(x, dout), warmup=25, rep=200, grad_to_none=params,
                                    return_mode="median") * 1e3
    xd = {k: v.detach() for k, v in x.items()}
    args = (xd["u"], xd["delta"], xd["A"], xd["B"], xd["C"], xd["D"], xd["z"], xd["delta_bias"])
    fwd = lambda: st.scan_fwd(*args, True, False, None, None, save_states=False, write_last=False)  # noqa: E731
    t_fwd = triton.testing.do_bench(fwd, warmup=25, rep=200, return_mode="median") * 1e3
    _, _, hsave = st.scan_fwd(*args, True, False, None, None, save_states=True, write_last=False)
    bwd = lambda: st.scan_bwd(dout, None, *args, True, False, None, hsave)  # noqa: E731
    bwd()
    t_bwd = triton.testing.do_bench(bwd, warmup=25, rep=200, return_mode="median") * 1e3
    kb, kl = st.LAST_KERNEL.get("bwd"), st.LAST_KERNEL.get("bwd_local")
    row = dict(shape=list(shape), fwd_variant=variant[0], bwd_variant=variant[1], maxnreg=variant[2],
               local_sw_exp2=variant[3], bc_fp32=variant[4], fwd_bc_fp32=variant[5], fwd_us=t_fwd,
               bwd_us=t_bwd, fwd_bwd_us=t_all,
               max_abs_diff=diff, regs=getattr(kb, "n_regs", None), spills=getattr(kb, "n_spills", None),
               local_regs=getattr(kl, "n_regs", None), local_spills=getattr(kl, "n_spills", None))
    return row, grads


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="0,1,2", help="comma-separated indices into bench.kernels.SHAPES")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="comma-separated FWD-BWD[:MAXNREG]; gradients are compared with the first")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.add_argument("--budget", type=float, default=210.0,
                   help="seconds; once past them the remaining rows are skipped (reported as such)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 1
    import triton

    from seqbackbone.bench.kernels import SHAPES, UPSTREAM

    shapes = [SHAPES[int(i)] for i in args.shapes.split(",")]
    variants = [parse_variant(v) for v in args.variants.split(",")]
    t0 = time.time()
    with mp.get_context("spawn").Pool(len(variants)) as pool:
        for msg in pool.starmap(_warm, [(v, shapes) for v in variants]):
            print(msg, flush=True)
    print(f"compiled in {time.time() - t0:.0f} s; {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    rows = []
    hdr = (f"{'shape':>18} {'variant':>24} {'fwd us':>7} {'bwd us':>7} {'fwd+bwd us':>10} {'upstream':>8} "
           f"{'regs/spills':>11} {'local':>5} {'max|dgrad|':>10}")
    print(hdr)
    for shape in shapes:
        ref = None
        for variant in variants:
            if time.time() - t0 > args.budget:
                print(f"{str(tuple(shape[:3])):>18} {variant_name(variant)}: skipped, past --budget "
                      f"{args.budget:.0f} s")
                continue
            try:
                row, grads = time_variant(variant, shape, ref)
            except Exception as e:  # one broken variant must not hide the others
                print(f"{str(tuple(shape[:3])):>18} {variant_name(variant)}: failed: {e!r}"[:400], flush=True)
                continue
            ref = grads if ref is None else ref
            rows.append(row)
            name = variant_name(variant)
            diff = "ref" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.2e}"
            print(f"{str(tuple(shape[:3])):>18} {name:>24} {row['fwd_us']:7.0f} {row['bwd_us']:7.0f} "
                  f"{row['fwd_bwd_us']:10.0f} {UPSTREAM[shape][1]:8.0f} "
                  f"{str(row['regs']) + '/' + str(row['spills']):>11} {str(row['local_regs']):>5} {diff:>10}",
                  flush=True)
        del ref
        torch.cuda.empty_cache()
    print(f"total {time.time() - t0:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
