"""Kernel benchmark: the Triton selective scan at the shapes of ANCHORS.md, against the byte floor and upstream.

    python -m seqbackbone.bench kernels [--variants] [--layer] [--out FILE]

For each shape (batch, dim, L, N = 16; bf16 u / delta / z / B / C, fp32 A, D, delta_bias, softplus, with z) it times
the forward and the forward + backward (median of `triton.testing.do_bench`). The byte floor is the bytes that must
move over the device-to-device copy bandwidth measured in the same run (bytes read + written):
forward 8E + 4S (read u, delta, z, B, C; write out), forward + backward 22E + 12S (the forward, then read u, delta, z,
dout, B, C and write du, ddelta, dz, dB, dC), E = batch x dim x L elements, S = batch x N x L, 2 bytes each.
`--variants` also times other tile configurations of each kernel; `--layer` times the Mamba layer (d_model 768).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys

import torch

SHAPES = [(8, 1536, 4096, 16), (2, 1536, 16384, 16), (1, 1536, 131072, 16)]
# upstream mamba_ssm 2.3.2 CUDA selective_scan_fn on an H200 (ANCHORS.md): fwd, fwd+bwd in us
UPSTREAM = {SHAPES[0]: (885.0, 4370.0), SHAPES[1]: (1096.0, 4781.0), SHAPES[2]: (4447.0, 19891.0)}
# (channels, steps, warps[, how]); steps 0 = the sequential kernel, "segments" = split over time into segments
FWD_VARIANTS = [(32, 0, 1, "segments"), (32, 0, 1), (2, 512, 4)]
# sequential backward (32 channels, 64-step chunks, 1 warp) split into time groups or not; the associative-scan one
BWD_VARIANTS = [(32, 64, 1, "groups"), (32, 64, 1), (16, 64, 4, "assoc")]


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    import triton.testing

    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * nbytes / (ms * 1e-3)


def scan_inputs(batch: int, dim: int, L: int, N: int, dtype=torch.bfloat16, seed: int = 0) -> dict:
    """Random inputs in the ranges a Mamba layer gives (delta_bias = softplus^-1 of dt in [1e-3, 1e-1])."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)
    dt = torch.exp(torch.rand(dim, device="cuda", generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dict(
        u=r(batch, dim, L).to(dtype),
        delta=(0.5 * r(batch, dim, L)).to(dtype),
        A=-torch.arange(1, N + 1, device="cuda", dtype=torch.float32).repeat(dim, 1),
        B=r(batch, 1, N, L).to(dtype),
        C=r(batch, 1, N, L).to(dtype),
        D=torch.ones(dim, device="cuda"),
        z=r(batch, dim, L).to(dtype),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
    )


def time_scan(shape, fwd_cfg=None, bwd_cfg=None) -> tuple[float, float]:
    """(forward us, forward + backward us) of the Triton scan at `shape`, optional tile configs."""
    import triton.testing

    from seqbackbone.kernels import scan_triton as st

    old = (st.FWD_CONFIG, st.BWD_CONFIG)
    st.FWD_CONFIG, st.BWD_CONFIG = fwd_cfg or old[0], bwd_cfg or old[1]
    try:
        x = scan_inputs(*shape)
        fwd = lambda: st.selective_scan_triton(**x, delta_softplus=True)
        t_fwd = triton.testing.do_bench(fwd, warmup=25, rep=200, return_mode="median") * 1e3
        xg = {k: v.requires_grad_(True) for k, v in x.items()}
        dout = torch.randn_like(x["u"])

        def fwd_bwd():
            out = st.selective_scan_triton(**xg, delta_softplus=True)
            out.backward(dout)

        t_all = triton.testing.do_bench(fwd_bwd, warmup=25, rep=200, grad_to_none=list(xg.values()),
                                        return_mode="median") * 1e3
        return t_fwd, t_all
    finally:
        st.FWD_CONFIG, st.BWD_CONFIG = old


def time_kernels(shape, fwd_cfgs, bwd_cfgs) -> list[dict]:
    """Each forward and backward tile config alone: time and the compiler's register and spill counts."""
    import triton.testing

    from seqbackbone.kernels import scan_triton as st

    x = scan_inputs(*shape)
    rows = []
    default_segments = st.FWD_SEGMENTS
    for variant in fwd_cfgs:
        cfg = tuple(variant[:3])
        st.FWD_SEGMENTS = len(variant) > 3
        try:
            f = lambda: st.scan_fwd(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                                    True, False, None, None, save_states=False, write_last=False, config=cfg)  # noqa: B023
            f()
            t = triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median") * 1e3
            k = _compiled("fwd")
            rows.append(dict(kernel="fwd", cfg=variant, us=t, **k))
        except Exception as e:  # a config that fails to compile or run is reported, not fatal
            rows.append(dict(kernel="fwd", cfg=variant, error=repr(e)[:200]))
        finally:
            st.FWD_SEGMENTS = default_segments
    dout = torch.randn_like(x["u"])
    default_bwd = (st.BWD_SEQ_TR, st.BWD_SEGMENTS)
    for variant in bwd_cfgs:
        cfg = tuple(variant[:3])
        how = variant[3] if len(variant) > 3 else ""
        st.BWD_SEQ_TR, st.BWD_SEGMENTS = (0, False) if how == "assoc" else (4, how == "groups")
        try:
            _, _, hsave = st.scan_fwd(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                                      True, False, None, None, save_states=True, write_last=False,
                                      save_block_t=cfg[1])
            f = lambda: st.scan_bwd(dout, None, x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                    x["delta_bias"], True, False, None, hsave, config=cfg)  # noqa: B023
            f()
            t = triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median") * 1e3
            k = _compiled("bwd")
            rows.append(dict(kernel="bwd", cfg=variant, us=t, **k))
        except Exception as e:
            rows.append(dict(kernel="bwd", cfg=variant, error=repr(e)[:200]))
        finally:
            st.BWD_SEQ_TR, st.BWD_SEGMENTS = default_bwd
    return rows


def _compiled(which: str) -> dict:
    """Registers and spills of the kernel launched last (`scan_triton.LAST_KERNEL`)."""
    from seqbackbone.kernels import scan_triton as st

    ck = st.LAST_KERNEL.get(which)
    return dict(n_regs=getattr(ck, "n_regs", None), n_spills=getattr(ck, "n_spills", None))


def time_layer(L: int, batch: int) -> dict:
    """Mamba layer (d_model 768, bf16) forward + backward tokens per second."""
    import triton.testing

    from seqbackbone import Mamba

    layer = Mamba(768, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(batch, L, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)

    def step():
        layer(x).backward(dy)

    ms = triton.testing.do_bench(step, warmup=10, rep=100, grad_to_none=[x, *layer.parameters()],
                                 return_mode="median")
    return dict(L=L, batch=batch, ms=ms, tokens_per_s=batch * L / (ms * 1e-3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m seqbackbone.bench kernels", description=__doc__.splitlines()[0])
    p.add_argument("--variants", action="store_true", help="also time other tile configurations")
    p.add_argument("--layer", action="store_true", help="also time the Mamba layer (d_model 768)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--shapes", default=None, help="comma-separated indices into SHAPES (default: all)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 1
    import triton

    bw = copy_bandwidth()
    res = dict(date=datetime.date.today().isoformat(), gpu=torch.cuda.get_device_name(), torch=torch.__version__,
               triton=triton.__version__, copy_tb_s=bw / 1e12, shapes=[], variants=[], layer=[])
    if args.variants:
        for shape in SHAPES:
            for row in time_kernels(shape, FWD_VARIANTS, BWD_VARIANTS):
                row["shape"] = shape
                res["variants"].append(row)
                print("variant", row, flush=True)
    shapes = SHAPES if args.shapes is None else [SHAPES[int(i)] for i in args.shapes.split(",")]
    for shape in shapes:
        b, d, L, n = shape
        E, S = b * d * L, b * n * L
        floor_f = (8 * E + 4 * S) / bw * 1e6
        floor_fb = (22 * E + 12 * S) / bw * 1e6
        t_f, t_fb = time_scan(shape)
        if not res["shapes"]:
            res["compiled"] = {k: _compiled(k) for k in ("fwd", "bwd")}
        up_f, up_fb = UPSTREAM[shape]
        res["shapes"].append(dict(shape=shape, fwd_us=t_f, fwd_bwd_us=t_fb, floor_fwd_us=floor_f,
                                  floor_fwd_bwd_us=floor_fb, upstream_fwd_us=up_f, upstream_fwd_bwd_us=up_fb))
    if args.layer:
        for L, batch in ((4096, 8), (65536, 1)):
            try:
                res["layer"].append(time_layer(L, batch))
            except Exception as e:
                res["layer"].append(dict(L=L, batch=batch, error=repr(e)[:300]))
    print(f"\n{res['date']}  {res['gpu']}  torch {res['torch']}  triton {res['triton']}  "
          f"copy {res['copy_tb_s']:.2f} TB/s (read + write)")
    print("selective scan, bf16 u/delta/z/B/C, fp32 A/D/delta_bias, softplus, with z, N = 16")
    hdr = ("| batch, dim, L | fwd us | floor | x floor | x upstream | fwd+bwd us | floor | x floor | x upstream |\n"
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(hdr)
    for r in res["shapes"]:
        b, d, L, _ = r["shape"]
        print(f"| {b}, {d}, {L} | {r['fwd_us']:.0f} | {r['floor_fwd_us']:.0f} | "
              f"{r['fwd_us'] / r['floor_fwd_us']:.2f} | {r['fwd_us'] / r['upstream_fwd_us']:.2f} | "
              f"{r['fwd_bwd_us']:.0f} | {r['floor_fwd_bwd_us']:.0f} | {r['fwd_bwd_us'] / r['floor_fwd_bwd_us']:.2f} | "
              f"{r['fwd_bwd_us'] / r['upstream_fwd_bwd_us']:.2f} |")
    for k, v in res.get("compiled", {}).items():
        print(f"{k} kernel: {v['n_regs']} registers, {v['n_spills']} spills")
    for r in res["layer"]:
        if "error" in r:
            print(f"Mamba layer d_model 768, batch {r['batch']} x L {r['L']}: {r['error']}")
        else:
            print(f"Mamba layer d_model 768, batch {r['batch']} x L {r['L']}: fwd+bwd {r['ms']:.2f} ms = "
                  f"{r['tokens_per_s'] / 1e3:.0f}K tokens/s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
