"""causal_conv1d, rms_norm and selective_state_update (PyTorch paths) against loops written here."""

from __future__ import annotations

import pytest
import torch
from seqbackbone.kernels import (
    causal_conv1d,
    causal_conv1d_ref,
    causal_conv1d_update,
    rms_norm,
    rms_norm_ref,
    selective_scan_ref,
    selective_state_update,
    selective_state_update_ref,
)

from .reference import random_scan_inputs, scan_loop_fp64


@pytest.fixture(autouse=True)
def torch_backend(monkeypatch):
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")


def conv_loop(x, weight, bias=None, silu=False, mask=None, reverse=False):
    """out[b, d, t] = bias + sum_j weight[d, j] x[b, d, t - (w-1) + j] (t + (w-1) - j when reverse), in fp64."""
    x, weight = x.double(), weight.double()
    if mask is not None:
        x = x * mask[:, None, :]
    batch, dim, length = x.shape
    width = weight.shape[1]
    out = torch.zeros(batch, dim, length, dtype=torch.float64)
    for t in range(length):
        for j in range(width):
            s = t + (width - 1) - j if reverse else t - (width - 1) + j
            if 0 <= s < length:
                out[:, :, t] += weight[:, j] * x[:, :, s]
    if bias is not None:
        out += bias.double()[:, None]
    if silu:
        out = out * torch.sigmoid(out)
    if mask is not None:
        out = out * mask[:, None, :]
    return out


CONVS = {"public": causal_conv1d, "ref": causal_conv1d_ref}


@pytest.mark.parametrize("impl", list(CONVS))
@pytest.mark.parametrize("width", [1, 4])
@pytest.mark.parametrize("bias,activation", [(False, None), (True, "silu")])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_conv_matches_loop(impl, width, bias, activation, masked, reverse):
    x = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, width, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True) if bias else None
    mask = (torch.rand(2, 9) > 0.3) if masked else None
    got = CONVS[impl](x, weight, b, activation, mask, reverse)
    want = conv_loop(x, weight, b, activation == "silu", mask, reverse)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    if masked:
        assert (got.transpose(1, 2)[~mask] == 0).all()
    w = torch.randn_like(want)
    params = [t for t in (x, weight, b) if t is not None]
    for g, h in zip(
        torch.autograd.grad((got * w).sum(), params), torch.autograd.grad((want * w).sum(), params), strict=True
    ):
        assert torch.allclose(g, h, rtol=1e-12, atol=1e-12)


def test_conv_reverse_is_flipped_conv_and_accepts_conv1d_weight():
    x, weight, bias = torch.randn(2, 4, 10), torch.randn(4, 1, 3), torch.randn(4)
    got = causal_conv1d(x, weight, bias, "silu", reverse=True)
    assert torch.allclose(got, causal_conv1d(x.flip(-1), weight, bias, "silu").flip(-1), atol=1e-6)
    assert torch.allclose(got, causal_conv1d_ref(x, weight[:, 0], bias, "silu", reverse=True), atol=1e-6)


@pytest.mark.parametrize("impl", list(CONVS))
def test_conv_padding_content_does_not_matter(impl):
    x = torch.randn(2, 3, 8)
    mask = torch.rand(2, 8) > 0.4
    dirty = torch.where(mask[:, None, :], x, torch.full_like(x, 1e6))
    weight, bias = torch.randn(3, 4), torch.randn(3)
    assert torch.equal(CONVS[impl](x, weight, bias, "silu", mask), CONVS[impl](dirty, weight, bias, "silu", mask))


def test_conv_update_steps_equal_full_conv():
    x, weight, bias = torch.randn(2, 3, 12, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), None
    bias = torch.randn(3, dtype=torch.float64)
    state = torch.zeros(2, 3, 4, dtype=torch.float64)
    steps = [causal_conv1d_update(x[:, :, t], state, weight, bias, "silu") for t in range(12)]
    assert torch.allclose(torch.stack(steps, -1), causal_conv1d(x, weight, bias, "silu"), rtol=1e-12, atol=1e-12)
    assert torch.equal(state, x[:, :, -4:])  # the window holds the last `width` inputs, oldest first


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_conv_half_precision(dtype):
    x, weight, bias = torch.randn(2, 8, 30), torch.randn(8, 4), torch.randn(8)
    got = causal_conv1d(x.to(dtype), weight, bias, "silu")
    want = conv_loop(x.to(dtype), weight, bias, True)
    assert got.dtype == dtype
    assert torch.allclose(got.double(), want, rtol=1e-2, atol=1e-2)


CONV_BAD = [
    (dict(x=torch.zeros(2, 3)), ValueError, "x must have shape (*, *, *)"),
    (dict(weight=torch.zeros(4, 4)), ValueError, "weight must have shape (3, *)"),
    (dict(weight=torch.zeros(3, 4, dtype=torch.int32)), TypeError, "weight must have dtype"),
    (dict(bias=torch.zeros(4)), ValueError, "bias must have shape (3,)"),
    (dict(activation="relu"), ValueError, "activation must be one of"),
    (dict(mask=torch.ones(2, 9, dtype=torch.bool)), ValueError, "mask must have shape (2, 8)"),
]


@pytest.mark.parametrize("fn", list(CONVS.values()))
@pytest.mark.parametrize("bad,error,message", CONV_BAD)
def test_conv_bad_inputs(fn, bad, error, message):
    args = dict(x=torch.zeros(2, 3, 8), weight=torch.zeros(3, 4), bias=None, activation=None, mask=None)
    args.update(bad)
    with pytest.raises(error, match=None) as info:
        fn(**args)
    assert message in str(info.value)


def test_conv_update_bad_state():
    with pytest.raises(ValueError, match=r"conv_state must have shape \(2, 3, 4\)"):
        causal_conv1d_update(torch.zeros(2, 3), torch.zeros(2, 3, 3), torch.zeros(3, 4))


# --- rms_norm ---


def norm_loop(x, weight, eps, residual=None):
    s = x.double() if residual is None else x.double() + residual.double()
    return s / torch.sqrt((s * s).mean(-1, keepdim=True) + eps) * weight.double(), s


NORMS = {"public": rms_norm, "ref": rms_norm_ref}


@pytest.mark.parametrize("impl", list(NORMS))
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("prenorm", [False, True])
@pytest.mark.parametrize("residual_in_fp32", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_rms_norm(impl, residual, prenorm, residual_in_fp32, dtype, tol):
    x = torch.randn(2, 5, 16).to(dtype)
    weight = torch.rand(16) + 0.5
    res = torch.randn(2, 5, 16).to(dtype) if residual else None
    got = NORMS[impl](x, weight, 1e-5, res, prenorm, residual_in_fp32)
    want, s = norm_loop(x, weight, 1e-5, res)
    out = got[0] if prenorm else got
    assert out.dtype == dtype
    assert torch.allclose(out.double(), want, rtol=tol, atol=tol)
    if prenorm:
        carried = got[1]
        expect = torch.float64 if dtype == torch.float64 else (torch.float32 if residual_in_fp32 else dtype)
        assert carried.dtype == expect
        assert torch.allclose(carried.double(), s, rtol=tol, atol=tol)
        if not residual:
            assert torch.equal(carried, x.to(expect))


def test_rms_norm_gradients_match_loop():
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    res = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    got, carried = rms_norm(x, weight, 1e-6, res, prenorm=True)
    want, s = norm_loop(x, weight, 1e-6, res)
    w1, w2 = torch.randn_like(want), torch.randn_like(s)
    g = torch.autograd.grad((got * w1).sum() + (carried * w2).sum(), (x, res, weight))
    h = torch.autograd.grad((want * w1).sum() + (s * w2).sum(), (x, res, weight))
    for a, b in zip(g, h, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "bad,error,message",
    [
        (dict(weight=torch.ones(7)), ValueError, "weight must have shape (8,)"),
        (dict(residual=torch.ones(2, 7)), ValueError, "residual must have shape (2, 8)"),
        (dict(x=torch.ones(2, 8, dtype=torch.int64)), TypeError, "x must have dtype"),
        (dict(eps=-1.0), ValueError, "eps must be a non-negative number"),
    ],
)
@pytest.mark.parametrize("fn", list(NORMS.values()))
def test_rms_norm_bad_inputs(fn, bad, error, message):
    args = dict(x=torch.ones(2, 8), weight=torch.ones(8))
    args.update(bad)
    with pytest.raises(error) as info:
        fn(**args)
    assert message in str(info.value)


# --- selective_state_update ---

STEPS = {"public": selective_state_update, "ref": selective_state_update_ref}


@pytest.mark.parametrize("impl", list(STEPS))
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("extras", [False, True])
def test_state_update_steps_equal_scan(impl, groups, softplus, extras):
    args = random_scan_inputs(
        batch=2,
        dim=4,
        length=6,
        n_state=3,
        groups=groups,
        initial_state=True,
        D=extras,
        z=extras,
        delta_bias=extras,
        delta_softplus=softplus,
        dtype=torch.float64,
    )
    want_out, want_last = scan_loop_fp64(**args)
    state = args["initial_state"].clone()
    outs = []
    for t in range(6):
        outs.append(
            STEPS[impl](
                state,
                args["u"][..., t],
                args["delta"][..., t],
                args["A"],
                args["B"][..., t],
                args["C"][..., t],
                args.get("D"),
                None if "z" not in args else args["z"][..., t],
                args.get("delta_bias"),
                softplus,
            )
        )
    assert torch.allclose(torch.stack(outs, -1), want_out, rtol=1e-12, atol=1e-12)
    assert torch.allclose(state, want_last, rtol=1e-12, atol=1e-12)  # updated in place


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_state_update_dtypes(dtype):
    args = random_scan_inputs(batch=2, dim=4, length=1, n_state=3, initial_state=True, dtype=dtype)
    args["A"] = args["A"].float()
    state = args["initial_state"].float()
    before = state.clone()
    y = selective_state_update(
        state,
        args["u"][..., 0],
        args["delta"][..., 0],
        args["A"],
        args["B"][..., 0],
        args["C"][..., 0],
        args["D"],
        args["z"][..., 0],
        args["delta_bias"],
        True,
    )
    assert y.dtype == dtype and state.dtype == torch.float32
    want_out, want_last = selective_scan_ref(**dict(args, initial_state=before), return_last_state=True)
    assert torch.allclose(y.double(), want_out[..., 0].double(), rtol=1e-2, atol=1e-2)
    assert torch.allclose(state, want_last, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "bad,error,message",
    [
        (dict(state=torch.zeros(2, 4)), ValueError, "state must have shape (*, *, *)"),
        (dict(x=torch.zeros(2, 5)), ValueError, "x must have shape (2, 4)"),
        (dict(dt=torch.zeros(3, 4)), ValueError, "dt must have shape (2, 4)"),
        (dict(A=torch.zeros(4, 2)), ValueError, "A must have shape (4, 3)"),
        (dict(B=torch.zeros(2, 2)), ValueError, "B must have N = 3"),
        (dict(C=torch.zeros(2, 3, 3)), ValueError, "C has 3 groups"),
        (dict(z=torch.zeros(2)), ValueError, "z must have shape (2, 4)"),
        (dict(dt_bias=torch.zeros(2)), ValueError, "dt_bias must have shape (4,)"),
    ],
)
@pytest.mark.parametrize("fn", list(STEPS.values()))
def test_state_update_bad_inputs(fn, bad, error, message):
    args = dict(
        state=torch.zeros(2, 4, 3),
        x=torch.zeros(2, 4),
        dt=torch.zeros(2, 4),
        A=torch.zeros(4, 3),
        B=torch.zeros(2, 3),
        C=torch.zeros(2, 3),
    )
    args.update(bad)
    with pytest.raises(error) as info:
        fn(**args)
    assert message in str(info.value)
