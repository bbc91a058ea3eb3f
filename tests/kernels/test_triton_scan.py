"""The Triton selective scan (forward and gradients) against the float64 loop, under TRITON_INTERPRET=1 on CPU.

Tiny shapes with small tiles so that every case crosses chunk and channel-block boundaries (L = 37 with 16-step
chunks, dim not a power of two); outputs are poisoned with NaN before the kernels write them.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from seqbackbone.kernels import scan_triton
from seqbackbone.kernels.scan_seq_triton import EXP2_POLY, _exp2_fma
from seqbackbone.kernels.scan_triton import selective_scan_triton

from .reference import random_scan_inputs, scan_loop_fp64

# per-dtype tolerances on ||got - ref|| / ||ref||
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
GRAD_TOL = {torch.float32: 2e-4, torch.bfloat16: 4e-2, torch.float16: 1e-2}


@pytest.fixture
def small_tiles(monkeypatch):
    """The sequential forward (4 channels, 8- or 4-step register chunks; the backward 2 x 16 tiles); NaN outputs."""
    if not torch.cuda.is_available():
        monkeypatch.setattr(scan_triton, "FWD_CONFIG", (4, 0, 1))
        monkeypatch.setattr(scan_triton, "BWD_CONFIG", (2, 16, 1))
    monkeypatch.setattr(scan_triton, "_POISON", [True])


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    assert torch.isfinite(got).all(), "non-finite values (unwritten output?)"
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _as_grouped(t: torch.Tensor) -> torch.Tensor:
    return t[:, None] if t.dim() == 3 else t


CASES = [
    # dim, N, groups, reverse, mask, initial_state, kernels
    (3, 4, None, False, False, False, "default"),
    (3, 4, None, True, True, True, "default"),
    (6, 8, 3, False, True, True, "default"),
    (4, 4, 2, True, False, False, "default"),
    (3, 4, None, True, True, True, "one_segment"),
    (4, 4, 2, False, True, False, "one_segment"),
    (3, 4, None, True, True, True, "assoc_bwd"),
    (4, 4, 2, False, False, True, "assoc_bwd"),
    (4, 4, 2, True, True, True, "base_shape"),
    (3, 4, None, False, True, True, "lean_bwd"),
    (4, 4, 2, True, False, True, "lean_bwd"),
]
# the backward's other shapes, fp32 only (CI time): "chain" (the former default: bf16 B / C, exp2 on the MUFU only);
# "ilpp" at an odd N (two states paired, one alone, as "fuse" runs
# every state; the next group's loads first); "ilp4" (four states interleaved) with the group pass's FMA-unit exp2 on
# 2 of 4 states and both directions on fp32 copies of B and C
NEW_BWD_CASES = [
    (6, 3, 3, False, True, True, "ilpp_bwd"),
    (4, 4, 2, True, True, True, "chain_bwd"),
    (4, 4, 2, True, True, False, "ilp4_sw_exp2_fp32_bc"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim,n_state,groups,reverse,mask,initial_state,kernels", CASES)
def test_scan_matches_fp64_loop(small_tiles, monkeypatch, dtype, dim, n_state, groups, reverse, mask, initial_state,
                                kernels):
    """Default kernels (sequential, split into time segments / groups: here one per 16-step chunk, 3 at L = 37);
    both directions unsplit; the associative-scan backward; the sequential kernels' former code shape; the
    backward's "lean" shape."""
    _check_scan(monkeypatch, dtype, dim, n_state, groups, reverse, mask, initial_state, kernels)


@pytest.mark.parametrize("dim,n_state,groups,reverse,mask,initial_state,kernels", NEW_BWD_CASES)
def test_scan_new_bwd_shapes(small_tiles, monkeypatch, dim, n_state, groups, reverse, mask, initial_state, kernels):
    """The backward's "chain", "ilpp" and "ilp4" shapes, the group pass's FMA-unit exp2, fp32 B / C (fp32
    activations)."""
    _check_scan(monkeypatch, torch.float32, dim, n_state, groups, reverse, mask, initial_state, kernels)


def _check_scan(monkeypatch, dtype, dim, n_state, groups, reverse, mask, initial_state, kernels) -> None:
    monkeypatch.setattr(scan_triton, "SEG_TARGET_WARPS", 10**6)
    monkeypatch.setattr(scan_triton, "BWD_SEG_TARGET_WARPS", 10**6)
    if kernels == "one_segment":
        monkeypatch.setattr(scan_triton, "FWD_SEGMENTS", False)
        monkeypatch.setattr(scan_triton, "BWD_SEGMENTS", False)
    if kernels == "lean_bwd":
        monkeypatch.setattr(scan_triton, "BWD_VARIANT", "lean")
    if kernels == "ilpp_bwd":
        monkeypatch.setattr(scan_triton, "BWD_VARIANT", "ilpp")
    if kernels == "chain_bwd":
        monkeypatch.setattr(scan_triton, "BWD_VARIANT", "chain")
        monkeypatch.setattr(scan_triton, "BWD_LOCAL_SW_EXP2", 0)
        monkeypatch.setattr(scan_triton, "BWD_BC_FP32", False)
    if kernels == "ilp4_sw_exp2_fp32_bc":
        monkeypatch.setattr(scan_triton, "BWD_VARIANT", "ilp4")
        monkeypatch.setattr(scan_triton, "BWD_LOCAL_SW_EXP2", 8)
        monkeypatch.setattr(scan_triton, "BWD_BC_FP32", True)
        monkeypatch.setattr(scan_triton, "FWD_BC_FP32", True)
    if kernels == "base_shape":
        monkeypatch.setattr(scan_triton, "FWD_VARIANT", "base")
        monkeypatch.setattr(scan_triton, "BWD_VARIANT", "base")
    if kernels == "assoc_bwd":
        monkeypatch.setattr(scan_triton, "BWD_SEQ_TR", 0)
        monkeypatch.setattr(scan_triton, "BWD_SEG_TARGET_WARPS", 10**6)
    dev = _device()
    args = random_scan_inputs(batch=2, dim=dim, length=37, n_state=n_state, groups=groups, mask=mask,
                              initial_state=initial_state, dtype=torch.float32)
    args.pop("delta_softplus")
    # half-precision activations (u, delta, z, B, C); fp32 parameters and state, as in a Mamba layer
    act = ("u", "delta", "z", "B", "C")
    inputs = {k: (v.to(dtype) if k in act else v).to(dev) for k, v in args.items()}
    inputs["B"], inputs["C"] = _as_grouped(inputs["B"]), _as_grouped(inputs["C"])
    grads = [k for k, v in inputs.items() if v.is_floating_point()]
    for k in grads:
        inputs[k].requires_grad_(True)
    ref_in = {k: v.detach().double().cpu().requires_grad_(k in grads) if v.is_floating_point() else v.cpu()
              for k, v in inputs.items()}

    out, last = selective_scan_triton(**inputs, delta_softplus=True, reverse=reverse, return_last_state=True)
    ref_out, ref_last = scan_loop_fp64(**ref_in, delta_softplus=True, reverse=reverse)
    assert out.dtype == dtype and last.dtype == torch.float32
    assert _rel(out, ref_out) < TOL[dtype]
    assert _rel(last, ref_last) < TOL[torch.float32 if dtype == torch.float32 else torch.float16]
    if mask:
        assert (out.detach().cpu()[~inputs["mask"].cpu()[:, None, :].expand_as(out)] == 0).all()

    g_out = torch.randn(out.shape, dtype=torch.float64)
    g_last = torch.randn(last.shape, dtype=torch.float64)
    torch.autograd.backward((out, last), (g_out.to(dtype).to(dev), g_last.float().to(dev)))
    ref_g_out = g_out.to(dtype).double()
    torch.autograd.backward((ref_out, ref_last), (ref_g_out, g_last.float().double()))
    for k in grads:
        got, want = inputs[k].grad, ref_in[k].grad
        assert got is not None and got.shape == inputs[k].shape and got.dtype == inputs[k].dtype, k
        assert _rel(got, want) < GRAD_TOL[dtype], (k, _rel(got, want))


def test_scan_no_grad_paths(small_tiles):
    """No z, no D, no bias, no softplus, shared B/C given 4-D with one group; output only."""
    args = random_scan_inputs(batch=1, dim=5, length=20, n_state=2, D=False, z=False, delta_bias=False,
                              delta_softplus=False)
    args.pop("delta_softplus")
    args = {k: v.to(_device()) for k, v in args.items()}
    out = selective_scan_triton(args["u"], args["delta"], args["A"], args["B"][:, None], args["C"][:, None])
    ref, _ = scan_loop_fp64(**{k: v.cpu() for k, v in args.items()})
    assert _rel(out, ref) < TOL[torch.float32]


def test_scan_rejects_fp64():
    args = random_scan_inputs(batch=1, dim=2, length=4, n_state=2, dtype=torch.float64)
    args.pop("delta_softplus")
    with pytest.raises(TypeError, match="float64"):
        selective_scan_triton(args["u"], args["delta"], args["A"], args["B"][:, None], args["C"][:, None])


def test_scan_assoc_forward(small_tiles, monkeypatch):
    """The forward kernel built on tl.associative_scan (4 x 8 tiles), reverse with mask, groups and states."""
    monkeypatch.setattr(scan_triton, "FWD_CONFIG", (4, 8, 1))
    args = random_scan_inputs(batch=2, dim=6, length=37, n_state=4, groups=3, mask=True, initial_state=True)
    args.pop("delta_softplus")
    args = {k: v.to(_device()) for k, v in args.items()}
    out, last = selective_scan_triton(**args, delta_softplus=True, reverse=True, return_last_state=True)
    ref, ref_last = scan_loop_fp64(**{k: v.cpu() for k, v in args.items()}, delta_softplus=True, reverse=True)
    assert _rel(out, ref) < TOL[torch.float32] and _rel(last, ref_last) < TOL[torch.float32]


def test_scan_fp16(small_tiles):
    """fp16 activations take the same 16-bit path as bf16."""
    args = random_scan_inputs(batch=1, dim=3, length=21, n_state=4, mask=True)
    args.pop("delta_softplus")
    x = {k: (v.half() if k in ("u", "delta", "z", "B", "C") else v).to(_device()) for k, v in args.items()}
    x["B"], x["C"] = x["B"][:, None], x["C"][:, None]
    x["u"].requires_grad_(True)
    out = selective_scan_triton(**x, delta_softplus=True)
    ref, _ = scan_loop_fp64(**{k: v.detach().cpu() for k, v in x.items()}, delta_softplus=True)
    assert out.dtype == torch.float16 and _rel(out, ref) < TOL[torch.float16]
    out.sum().backward()
    assert x["u"].grad.dtype == torch.float16 and torch.isfinite(x["u"].grad).all()


def test_bwd_variant_names():
    from seqbackbone.kernels.scan_seq_triton import BWD_VARIANTS, bwd_kernel, bwd_local_kernel, fwd_kernel

    assert scan_triton.BWD_VARIANT in BWD_VARIANTS and scan_triton.FWD_VARIANT in BWD_VARIANTS
    with pytest.raises(ValueError, match="variant"):
        fwd_kernel(4, 4, "unrolled")
    with pytest.raises(ValueError, match="variant"):
        bwd_kernel(4, 4, "unrolled")
    with pytest.raises(ValueError, match="variant"):
        bwd_local_kernel(4, 4, "unrolled")
    with pytest.raises(ValueError, match="sw_exp2"):
        bwd_local_kernel(4, 4, "chain", 5)


@triton.jit
def _exp2_both(x_ptr, sw_ptr, hw_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(x_ptr + offs, mask=ok)
    tl.store(sw_ptr + offs, _exp2_fma(x), mask=ok)
    tl.store(hw_ptr + offs, tl.exp2(x), mask=ok)


def test_exp2_fma_accuracy():
    """The group pass's FMA-unit exp2 against the exact 2^x and against tl.exp2 over what the kernel sees,
    x = delta A log2 e in [-inf, 0]: within 2 ulp of 2^x from -126 up (2.25 under the interpreter, whose FMAs round
    twice), below that under 2^-126 (tl.exp2 flushes to 0 there), 0 at -127 and below, NaN kept. Also the polynomial
    alone with exactly rounded FMAs (as the GPU runs it) on 2^18 points of [-1/2, 1/2]: within 2 ulp."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, -1e-30, -0.5, -1.0, -125.5, -126.0, -126.25, -126.5, -127.0, -127.5, -200.0,
                            -3e38, -float("inf"), float("nan")])
    x = torch.cat([-torch.rand(20000, generator=g, dtype=torch.float64) * 130,
                   -torch.rand(20000, generator=g, dtype=torch.float64) ** 4,
                   torch.linspace(-130, 0, 8193, dtype=torch.float64), special.double()]).float()
    x = x.to(_device())
    sw, hw = torch.empty_like(x), torch.empty_like(x)
    _exp2_both[(triton.cdiv(x.numel(), 4096),)](x, sw, hw, x.numel(), BLOCK=4096)
    x, sw, hw = x.cpu(), sw.cpu().double(), hw.cpu().double()
    exact = torch.exp2(x.double())
    normal = x >= -126
    ulp = torch.from_numpy(np.spacing(exact[normal].float().numpy())).double()
    lim = 2.0 if torch.cuda.is_available() else 2.25
    assert ((sw[normal] - exact[normal]).abs() / ulp).max() <= lim
    assert ((sw[normal] - hw[normal]).abs() / ulp).max() <= lim + 2.0  # tl.exp2 (MUFU) is within 2 ulp itself
    low = (x < -126) & ~x.isnan()
    assert (sw[low] >= 0).all() and (sw[low] < 2.0**-126).all() and (hw[low] < 2.0**-126).all()
    assert (sw[x <= -127] == 0).all() and sw[x.isnan()].isnan().all() and (sw[x == 0] == 1).all()

    f = np.linspace(-0.5, 0.5, 2**18 + 1).astype(np.float32).astype(np.float64)
    p = np.full_like(f, EXP2_POLY[-1])
    for c in EXP2_POLY[-2::-1]:
        # float32 products are exact in float64, so this rounds once per FMA (as FFMA does)
        p = (p * f + np.float32(c)).astype(np.float32).astype(np.float64)
    want = np.exp2(f)
    assert (np.abs(p - want) / np.spacing(want.astype(np.float32))).max() <= 2.0


@pytest.mark.parametrize("n_values", [2, 4, 8, 16, 32])
def test_transposing_warp_reduction(n_values):
    """The generated warp-shuffle reduction of the sequential backward, run with numpy standing in for the warp:
    lane l must end with the sum over the 32 lanes of value l >> (5 - log2 n_values)."""
    import numpy as np
    from seqbackbone.kernels.scan_seq_triton import _shfl_reduce

    lines: list[str] = []
    names = [f"v{i}" for i in range(n_values)]
    result = _shfl_reduce(lines, names, "r", "")
    lane = np.arange(32)
    rng = np.random.default_rng(n_values)
    values = {name: rng.standard_normal(32) for name in names}
    scope = {"lane": lane, "tl": type("tl", (), {"where": staticmethod(np.where)}), **values}
    for m in (16, 8, 4, 2, 1):
        scope[f"_shfl_xor_{m}"] = lambda x, m=m: x[lane ^ m]
    exec("\n".join(lines), scope)
    levels = n_values.bit_length() - 1
    want = np.stack([values[name].sum() for name in names])[lane >> (5 - levels)]
    np.testing.assert_allclose(scope[result], want, rtol=1e-12)


@pytest.mark.gpu
# reverse in two cases only: each case is a compile of its own
@pytest.mark.parametrize("variant,sw_exp2,bc_fp32,reverse", [
    ("chain", 0, False, False), ("chain", 0, False, True), ("fuse", 0, False, False), ("ilp", 0, False, False),
    ("ilp4", 0, True, False), ("fusep", 0, False, False), ("ilpp", 4, True, False), ("ilpp", 0, False, True)])
def test_gpu_bwd_shapes_agree(monkeypatch, variant, sw_exp2, bc_fp32, reverse):
    """On the GPU (32-channel blocks, so the warp-shuffle reductions of dB / dC; time groups, so the group pass):
    every gradient of each other backward shape against the default's, fp32, padded, with an initial state."""
    monkeypatch.setattr(scan_triton, "BWD_SEG_TARGET_WARPS", 64)
    args = random_scan_inputs(batch=2, dim=64, length=1000, n_state=16, mask=True, initial_state=True, seed=3)
    args.pop("delta_softplus")
    args = {k: v.cuda() for k, v in args.items()}
    args["B"], args["C"] = args["B"][:, None], args["C"][:, None]
    names = [k for k, v in args.items() if v.is_floating_point()]
    g_out = torch.randn(args["u"].shape, device="cuda", generator=torch.Generator("cuda").manual_seed(4))

    def grads() -> dict:
        x = {k: v.clone().requires_grad_(k in names) for k, v in args.items()}
        out = selective_scan_triton(**x, delta_softplus=True, reverse=reverse)
        out.backward(g_out)
        return {k: x[k].grad for k in names}

    want = grads()
    monkeypatch.setattr(scan_triton, "BWD_VARIANT", variant)
    monkeypatch.setattr(scan_triton, "BWD_LOCAL_SW_EXP2", sw_exp2)
    monkeypatch.setattr(scan_triton, "BWD_BC_FP32", bc_fp32)
    got = grads()
    for k in names:
        assert _rel(got[k], want[k]) < 2e-5, (k, _rel(got[k], want[k]))
