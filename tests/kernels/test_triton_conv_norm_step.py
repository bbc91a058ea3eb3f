"""Triton causal conv, RMSNorm and state update against their PyTorch twins (TRITON_INTERPRET=1 on CPU).

Forward and gradients, every option, tiny non-power-of-two shapes with tiles small enough to cross block boundaries;
outputs are poisoned with NaN before the kernels write them.
"""

from __future__ import annotations

import pytest
import torch
from seqbackbone.kernels import causal_conv1d_ref, conv_triton, rms_norm_ref, scan_triton, selective_state_update_ref
from seqbackbone.kernels.conv_triton import causal_conv1d_triton
from seqbackbone.kernels.norm_triton import rms_norm_triton
from seqbackbone.kernels.step_triton import selective_state_update_triton

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 3e-2}
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    monkeypatch.setattr(conv_triton, "BLOCK_D", 4)
    monkeypatch.setattr(conv_triton, "BLOCK_T", 16)
    monkeypatch.setattr(scan_triton, "_POISON", [True])


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    assert torch.isfinite(got).all(), "non-finite values (unwritten output?)"
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "width,bias,activation,mask,reverse",
    [(4, True, "silu", False, False), (4, False, None, True, True), (3, True, "silu", True, False)],
)
def test_conv_matches_ref(dtype, width, bias, activation, mask, reverse):
    x = torch.randn(2, 5, 37, dtype=dtype, device=DEV, requires_grad=True)
    w = torch.randn(5, width, device=DEV, requires_grad=True)
    b = torch.randn(5, device=DEV, requires_grad=True) if bias else None
    m = (torch.rand(2, 37, device=DEV) > 0.3) if mask else None
    out = causal_conv1d_triton(x, w, b, activation, m, reverse)
    leaves = [t for t in (x, w, b) if t is not None]
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    xr, wr = ref_leaves[0], ref_leaves[1]
    br = ref_leaves[2] if bias else None
    ref = causal_conv1d_ref(xr, wr, br, activation, m, reverse)
    assert out.dtype == dtype
    assert _rel(out, ref) < TOL[dtype]
    g = torch.randn(out.shape, dtype=torch.float64, device=DEV)
    out.backward(g.to(dtype))
    ref.backward(g.to(dtype).double())
    for got, want in zip(leaves, ref_leaves, strict=True):
        assert got.grad.dtype == got.dtype
        assert _rel(got.grad, want.grad) < GRAD_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("residual,prenorm,residual_in_fp32", [(False, False, False), (True, True, True),
                                                               (True, False, False), (False, True, False)])
def test_rms_norm_matches_ref(dtype, residual, prenorm, residual_in_fp32):
    x = torch.randn(2, 7, 33, dtype=dtype, device=DEV, requires_grad=True)
    w = (1 + 0.1 * torch.randn(33, device=DEV)).requires_grad_(True)
    r = torch.randn(2, 7, 33, dtype=dtype, device=DEV, requires_grad=True) if residual else None
    leaves = [t for t in (x, w, r) if t is not None]
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    got = rms_norm_triton(x, w, 1e-5, r, prenorm, residual_in_fp32)
    ref = rms_norm_ref(ref_leaves[0], ref_leaves[1], 1e-5, ref_leaves[2] if residual else None, prenorm,
                       residual_in_fp32)
    got = got if prenorm else (got,)
    ref = ref if prenorm else (ref,)
    assert got[0].dtype == dtype
    if prenorm:
        assert got[1].dtype == (torch.float32 if residual_in_fp32 else dtype)
    grads = [torch.randn(t.shape, dtype=torch.float64, device=DEV) for t in got]
    for a, b in zip(got, ref, strict=True):
        assert _rel(a, b) < TOL[dtype]
    torch.autograd.backward(got, [g.to(t.dtype) for g, t in zip(grads, got, strict=True)])
    torch.autograd.backward(ref, [g.to(t.dtype).double() for g, t in zip(grads, got, strict=True)])
    for a, b in zip(leaves, ref_leaves, strict=True):
        assert a.grad.dtype == a.dtype
        assert _rel(a.grad, b.grad) < GRAD_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups,options", [(3, True), (1, False)])
def test_state_update_matches_ref(dtype, groups, options):
    batch, dim, N = 2, 6, 5
    state = torch.randn(batch, dim, N, device=DEV)
    x = torch.randn(batch, dim, dtype=dtype, device=DEV)
    dt = (0.5 * torch.randn(batch, dim, device=DEV) - 1).to(dtype)
    A = -torch.rand(dim, N, device=DEV) - 0.5
    B = torch.randn(batch, groups, N, dtype=dtype, device=DEV)
    C = torch.randn(batch, groups, N, dtype=dtype, device=DEV)
    D = torch.randn(dim, device=DEV) if options else None
    z = torch.randn(batch, dim, dtype=dtype, device=DEV) if options else None
    bias = torch.randn(dim, device=DEV) if options else None
    ref_state = state.clone()
    ref = selective_state_update_ref(ref_state, x, dt, A, B, C, D, z, bias, options)
    got = selective_state_update_triton(state, x, dt, A, B, C, D, z, bias, options)
    assert got.dtype == dtype
    assert _rel(state, ref_state) < 1e-5
    assert _rel(got, ref) < TOL[dtype]


def test_fp64_conv_and_norm():
    """fp64 inputs are computed in fp64 by the conv and norm kernels, gradients included."""
    x = torch.randn(1, 3, 20, dtype=torch.float64, device=DEV, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, device=DEV, requires_grad=True)
    h = torch.randn(4, 9, dtype=torch.float64, device=DEV, requires_grad=True)
    g = torch.randn(9, dtype=torch.float64, device=DEV, requires_grad=True)
    cases = [
        (lambda a, b: causal_conv1d_triton(a, b, None, "silu", None, True),
         lambda a, b: causal_conv1d_ref(a, b, None, "silu", None, True), x, w),
        (lambda a, b: rms_norm_triton(a, b, 1e-5), lambda a, b: rms_norm_ref(a, b, 1e-5), h, g),
    ]
    for fn, ref_fn, a, b in cases:
        out = fn(a, b)
        assert out.dtype == torch.float64
        got = torch.autograd.grad(out.square().sum(), (a, b))
        ref = ref_fn(a, b)
        want = torch.autograd.grad(ref.square().sum(), (a, b))
        assert _rel(out, ref) < TOL[torch.float64]
        for p, q in zip(got, want, strict=True):
            assert _rel(p, q) < GRAD_TOL[torch.float64]
