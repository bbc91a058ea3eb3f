"""Each public op hands validated inputs to its Triton twin, in the agreed argument order, when the backend says so."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from seqbackbone.kernels import conv, norm, scan, step

from seqbackbone import kernels

from .reference import random_scan_inputs


@pytest.fixture
def fake_triton(monkeypatch):
    """Replaces the Triton modules by recorders and makes every op take the Triton branch."""
    calls = {}

    def recorder(name):
        def fn(*args, **kwargs):
            calls[name] = (args, kwargs)
            return "from " + name

        return fn

    for module, fn in (
        ("scan_triton", "selective_scan_triton"),
        ("conv_triton", "causal_conv1d_triton"),
        ("norm_triton", "rms_norm_triton"),
        ("step_triton", "selective_state_update_triton"),
    ):
        fake = types.ModuleType(f"seqbackbone.kernels.{module}")
        setattr(fake, fn, recorder(fn))
        monkeypatch.setitem(sys.modules, f"seqbackbone.kernels.{module}", fake)
    for op_module in (scan, conv, norm, step):
        monkeypatch.setattr(op_module, "backend", lambda tensor: "triton")
    return calls


def test_scan_dispatch(fake_triton):
    args = random_scan_inputs(batch=2, dim=4, length=5, n_state=3, mask=True, initial_state=True)
    assert kernels.selective_scan(**args, reverse=True, return_last_state=True) == "from selective_scan_triton"
    (u, delta, A, B, C, D, z, bias, softplus, reverse, mask, init, last), kw = fake_triton["selective_scan_triton"]
    assert not kw and u is args["u"] and delta is args["delta"] and A is args["A"]
    assert B.shape == (2, 1, 3, 5) and torch.equal(B[:, 0], args["B"]) and C.shape == (2, 1, 3, 5)
    assert D is args["D"] and z is args["z"] and bias is args["delta_bias"] and softplus is True
    assert reverse is True and mask is args["mask"] and init is args["initial_state"] and last is True


def test_conv_norm_step_dispatch(fake_triton):
    x, w, b, m = torch.randn(2, 3, 6), torch.randn(3, 1, 4), torch.randn(3), torch.ones(2, 6, dtype=torch.bool)
    assert kernels.causal_conv1d(x, w, b, "silu", m, True) == "from causal_conv1d_triton"
    args, _ = fake_triton["causal_conv1d_triton"]
    assert args[0] is x and args[1].shape == (3, 4) and args[2:] == (b, "silu", m, True)

    h, r = torch.randn(2, 8), torch.randn(2, 8)
    assert kernels.rms_norm(h, torch.ones(8), 1e-6, r, True, True) == "from rms_norm_triton"
    args, _ = fake_triton["rms_norm_triton"]
    assert args[0] is h and args[2:] == (1e-6, r, True, True)

    state = torch.zeros(2, 4, 3)
    x1, dt, A, B1 = torch.randn(2, 4), torch.randn(2, 4), torch.randn(4, 3), torch.randn(2, 3)
    assert kernels.selective_state_update(state, x1, dt, A, B1, B1, dt_softplus=True) == "from " + (
        "selective_state_update_triton"
    )
    args, _ = fake_triton["selective_state_update_triton"]
    assert args[0] is state and args[4].shape == (2, 1, 3) and args[5].shape == (2, 1, 3) and args[-1] is True


def test_scan_keeps_fp64_on_the_pytorch_path(fake_triton):
    """The Triton scan keeps an fp32 state, so fp64 inputs (gradcheck, references) must never be sent to it."""
    args = random_scan_inputs(batch=1, dim=3, length=6, n_state=2, dtype=torch.float64)
    out = kernels.selective_scan(**args)
    assert "selective_scan_triton" not in fake_triton
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
