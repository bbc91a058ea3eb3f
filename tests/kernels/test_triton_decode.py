"""The decoding-step kernels (conv window roll, fused SSM step) against their PyTorch twins (TRITON_INTERPRET=1 on CPU).

Tiny non-power-of-two shapes with channel blocks of 4 so that every launch crosses block boundaries; outputs are
poisoned with NaN before the kernels write them; several steps in a row, so that rolled windows and updated states
are read back by the next step; inputs are strided slices where the layer passes slices.
"""

from __future__ import annotations

import pytest
import torch
from seqbackbone.kernels import conv_update_triton, scan_triton, step, step_triton
from seqbackbone.kernels.conv import causal_conv1d_update, causal_conv1d_update_ref
from seqbackbone.kernels.conv_update_triton import causal_conv1d_update_triton
from seqbackbone.kernels.step import selective_state_update_fused, selective_state_update_fused_ref
from seqbackbone.kernels.step_triton import selective_state_update_fused_triton

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}
# the fused step rounds dt to bf16 after its projection, as the unfused bf16 matmul does, but from a sum taken in
# another order: now and then one channel's dt lands one bf16 step (0.4%) away
FUSED_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(conv_update_triton, "BLOCK_D", 4)
    monkeypatch.setattr(step_triton, "BLOCK_D", 4)
    monkeypatch.setattr(scan_triton, "_POISON", [True])


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    assert torch.isfinite(got).all(), "non-finite values (unwritten output?)"
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# --- conv window step ---


@pytest.mark.parametrize("dtype,state_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                               (torch.bfloat16, torch.float32), (torch.float64, torch.float64)])
@pytest.mark.parametrize("width,bias,activation", [(4, True, "silu"), (3, False, None), (1, True, None)])
def test_conv_update_matches_ref(dtype, state_dtype, width, bias, activation):
    batch, dim = 3, 10
    weight = torch.randn(dim, 1, width, device=DEV)  # nn.Conv1d's layout, as the layer passes it
    b = torch.randn(dim, device=DEV) if bias else None
    state = torch.randn(batch, dim, width, device=DEV).to(state_dtype)
    ref_state = state.clone()
    for _ in range(3):
        # x as a slice of a wider projection output (row stride 2 * dim), as the layer's in_proj gives it
        x = torch.randn(batch, 2 * dim, device=DEV).to(dtype)[:, :dim]
        got = causal_conv1d_update_triton(x, state, weight[:, 0], b, activation)
        want = causal_conv1d_update_ref(x, ref_state, weight, b, activation)
        assert got.dtype == dtype
        assert torch.equal(state, ref_state)  # the window is data movement only: exact
        assert _rel(got, want) < TOL[dtype]


def test_conv_update_strided_state_and_untouched_neighbours():
    """A window that is a slice of a larger buffer: only its own entries change."""
    buffer = torch.randn(2, 7, 6, device=DEV)
    before = buffer.clone()
    state = buffer[:, :, 1:5]  # (2, 7, 4), strides (42, 6, 1) with an offset
    ref_state = state.clone()
    x, weight, bias = torch.randn(2, 7, device=DEV), torch.randn(7, 4, device=DEV), torch.randn(7, device=DEV)
    got = causal_conv1d_update_triton(x, state, weight, bias, "silu")
    want = causal_conv1d_update_ref(x, ref_state, weight, bias, "silu")
    assert _rel(got, want) < TOL[torch.float32]
    assert torch.equal(state, ref_state)
    assert torch.equal(buffer[:, :, [0, 5]], before[:, :, [0, 5]])


def test_conv_update_dispatch(monkeypatch):
    """SEQBACKBONE_KERNELS=triton sends the public op to the kernel; the result equals the PyTorch path's."""
    calls = []
    real = conv_update_triton.causal_conv1d_update_triton
    monkeypatch.setattr(conv_update_triton, "causal_conv1d_update_triton", lambda *a: calls.append(a) or real(*a))
    x, weight, bias = torch.randn(2, 6, device=DEV), torch.randn(6, 1, 4, device=DEV), torch.randn(6, device=DEV)
    state = torch.randn(2, 6, 4, device=DEV)
    ref_state = state.clone()
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "triton")
    got = causal_conv1d_update(x, state, weight, bias, "silu")
    assert len(calls) == 1 and calls[0][2].shape == (6, 4)
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")
    want = causal_conv1d_update(x, ref_state, weight, bias, "silu")
    assert len(calls) == 1
    assert _rel(got, want) < TOL[torch.float32] and torch.equal(state, ref_state)


@pytest.mark.parametrize("fn", [causal_conv1d_update, causal_conv1d_update_ref])
def test_conv_update_bad_inputs(fn):
    x, state, weight = torch.zeros(2, 3), torch.zeros(2, 3, 4), torch.zeros(3, 4)
    with pytest.raises(ValueError, match="activation must be one of"):
        fn(x, state, weight, None, "relu")
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        fn(x, state, weight, torch.zeros(4))
    with pytest.raises(TypeError, match="weight must have dtype"):
        fn(x, state, weight.int())
    with pytest.raises(ValueError, match=r"conv_state must have shape \(2, 3, 4\)"):
        fn(x, state[:1], weight)


# --- fused SSM step: dt projection, softplus, exp(A_log), state update, D skip, gate ---


def _fused_inputs(batch, dim, n_state, rank, groups, dtype, options):
    """Inputs as the layer passes them: dt_low, B, C slices of one x_proj output (batch, R + 2 * groups * N), z a
    slice of in_proj's output; parameters in fp32 except the dt_proj weight, which is in the inputs' dtype."""
    xz = torch.randn(batch, 2 * dim, device=DEV).to(dtype)
    x_dbl = torch.randn(batch, rank + 2 * groups * n_state, device=DEV).to(dtype)
    if not options:  # no softplus: keep dt positive, else exp(dt A) > 1 blows rounding differences up
        x_dbl[:, :rank].abs_()
    dt_low = x_dbl[:, :rank]
    B = x_dbl[:, rank : rank + groups * n_state].unflatten(-1, (groups, n_state))
    C = x_dbl[:, rank + groups * n_state :].unflatten(-1, (groups, n_state))
    if groups == 1 and options:
        B, C = B[:, 0], C[:, 0]  # the shared (batch, N) form
    params = {
        "dt_weight": (rank**-0.5 * torch.randn(dim, rank, device=DEV)).to(dtype),
        "A_log": torch.log(torch.rand(dim, n_state, device=DEV) * 4 + 0.5),
        "D": torch.randn(dim, device=DEV) if options else None,
        "dt_bias": (torch.rand(dim, device=DEV) * 2 - 4) if options else None,
    }
    if not options:
        params["dt_weight"].abs_()
    z = xz[:, dim:] if options else None
    return xz[:, :dim], dt_low, B, C, z, params


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("groups,options", [(1, True), (3, True), (1, False)])
def test_fused_state_update_matches_ref(dtype, groups, options):
    batch, dim, n_state, rank = 2, 6 * groups if groups > 1 else 10, 5, 3
    state = torch.randn(batch, dim, n_state, device=DEV, dtype=torch.float64 if dtype == torch.float64 else None)
    ref_state = state.clone()
    for _ in range(3):
        x, dt_low, B, C, z, p = _fused_inputs(batch, dim, n_state, rank, groups, dtype, options)
        if B.dim() == 2:
            Bk, Ck = B[:, None], C[:, None]
        else:
            Bk, Ck = B, C
        got = selective_state_update_fused_triton(state, x, dt_low, p["dt_weight"], p["A_log"], Bk, Ck, p["D"], z,
                                                  p["dt_bias"], options)
        want = selective_state_update_fused_ref(ref_state, x, dt_low, p["dt_weight"], p["A_log"], B, C, p["D"], z,
                                                p["dt_bias"], options)
        assert got.dtype == dtype
        assert _rel(state, ref_state) < FUSED_TOL[dtype]
        assert _rel(got, want) < FUSED_TOL[dtype]


def test_fused_dispatch_and_fp32_parameters_with_bf16_inputs(monkeypatch):
    """The public op on the Triton path equals its PyTorch path, with the layer's mix of dtypes: bf16 activations and
    dt_proj weight, fp32 A_log, D, dt_bias and state."""
    x, dt_low, B, C, z, p = _fused_inputs(3, 12, 4, 5, 1, torch.bfloat16, True)
    state = torch.randn(3, 12, 4, device=DEV)
    ref_state = state.clone()
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "triton")
    got = selective_state_update_fused(state, x, dt_low, p["dt_weight"], p["A_log"], B, C, p["D"], z, p["dt_bias"],
                                       True)
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")
    want = selective_state_update_fused(ref_state, x, dt_low, p["dt_weight"], p["A_log"], B, C, p["D"], z,
                                        p["dt_bias"], True)
    assert got.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert _rel(state, ref_state) < FUSED_TOL[torch.bfloat16]
    assert _rel(got, want) < FUSED_TOL[torch.bfloat16]


def test_fused_ref_is_projection_then_plain_update():
    """The fused twin is exactly dt_proj, A = -exp(A_log), then the plain state update."""
    x, dt_low, B, C, z, p = _fused_inputs(2, 8, 3, 4, 1, torch.float64, True)
    s1 = torch.randn(2, 8, 3, dtype=torch.float64, device=DEV)
    s2 = s1.clone()
    got = selective_state_update_fused_ref(s1, x, dt_low, p["dt_weight"], p["A_log"], B, C, p["D"], z, p["dt_bias"],
                                           True)
    want = step.selective_state_update_ref(s2, x, dt_low @ p["dt_weight"].t(), -torch.exp(p["A_log"].double()), B, C,
                                           p["D"], z, p["dt_bias"], True)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12) and torch.allclose(s1, s2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "bad,error,message",
    [
        (dict(dt_low=torch.zeros(2, 3)), ValueError, "dt_low must have shape (2, 2)"),
        (dict(dt_weight=torch.zeros(5, 2)), ValueError, "dt_weight must have shape (4, *)"),
        (dict(A_log=torch.zeros(4, 2)), ValueError, "A_log must have shape (4, 3)"),
        (dict(A_log=torch.zeros(4, 3, dtype=torch.complex64)), TypeError, "A_log must be real"),
        (dict(x=torch.zeros(2, 5)), ValueError, "x must have shape (2, 4)"),
        (dict(B=torch.zeros(2, 2)), ValueError, "B must have N = 3"),
        (dict(z=torch.zeros(2)), ValueError, "z must have shape (2, 4)"),
    ],
)
@pytest.mark.parametrize("fn", [selective_state_update_fused, selective_state_update_fused_ref])
def test_fused_bad_inputs(fn, bad, error, message):
    args = dict(state=torch.zeros(2, 4, 3), x=torch.zeros(2, 4), dt_low=torch.zeros(2, 2), dt_weight=torch.zeros(4, 2),
                A_log=torch.zeros(4, 3), B=torch.zeros(2, 3), C=torch.zeros(2, 3))
    args.update(bad)
    with pytest.raises(error) as info:
        fn(**args)
    assert message in str(info.value)


def test_default_tiles(monkeypatch):
    """The block sizes picked by size (not the small test tiles), with a channel count that leaves a partial block."""
    monkeypatch.setattr(conv_update_triton, "BLOCK_D", None)
    monkeypatch.setattr(step_triton, "BLOCK_D", None)
    batch, dim, n_state, rank = 2, 200, 16, 13
    state, conv_state = torch.randn(batch, dim, n_state, device=DEV), torch.randn(batch, dim, 4, device=DEV)
    ref_state, ref_conv = state.clone(), conv_state.clone()
    x, weight, bias = torch.randn(batch, dim, device=DEV), torch.randn(dim, 4, device=DEV), torch.randn(dim, device=DEV)
    u = causal_conv1d_update_triton(x, conv_state, weight, bias, "silu")
    assert _rel(u, causal_conv1d_update_ref(x, ref_conv, weight, bias, "silu")) < TOL[torch.float32]
    _, dt_low, B, C, z, p = _fused_inputs(batch, dim, n_state, rank, 1, torch.float32, True)
    got = selective_state_update_fused_triton(state, u, dt_low, p["dt_weight"], p["A_log"], B[:, None], C[:, None],
                                              p["D"], z, p["dt_bias"], True)
    want = selective_state_update_fused_ref(ref_state, u, dt_low, p["dt_weight"], p["A_log"], B, C, p["D"], z,
                                            p["dt_bias"], True)
    assert _rel(got, want) < FUSED_TOL[torch.float32] and _rel(state, ref_state) < FUSED_TOL[torch.float32]
