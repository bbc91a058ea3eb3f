"""The Triton scan on a real GPU: realistic shapes, long L, a batch x dim x L above 2^31, gradients, and the Mamba
layer / backbone on the GPU against the CPU. Skipped without CUDA (run on the H200)."""

from __future__ import annotations

import pytest
import torch
import triton
from seqbackbone.kernels import scan_triton
from seqbackbone.kernels.scan_torch import selective_scan_chunked, selective_scan_ref
from seqbackbone.kernels.scan_triton import selective_scan_triton

from .reference import random_scan_inputs

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
GRAD_TOL = {torch.float32: 1e-3, torch.bfloat16: 3e-2}
ACT = ("u", "delta", "z", "B", "C")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(scan_triton, "_POISON", [True])


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double(), ref.double().to(got.device)
    assert torch.isfinite(got).all(), "non-finite values (unwritten output?)"
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _inputs(dtype, batch, dim, L, N=16, groups=None, mask=False, initial_state=False, seed=0):
    args = random_scan_inputs(batch=batch, dim=dim, length=L, n_state=N, groups=groups, mask=mask,
                              initial_state=initial_state, seed=seed)
    args.pop("delta_softplus")
    out = {k: (v.to(dtype) if k in ACT else v).cuda() for k, v in args.items()}
    for k in ("B", "C"):
        if out[k].dim() == 3:
            out[k] = out[k][:, None]
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("reverse,mask,groups", [(False, False, None), (True, True, 4)])
def test_forward_realistic(dtype, reverse, mask, groups):
    x = _inputs(dtype, 2, 1536, 4096, groups=groups, mask=mask, initial_state=True)
    out, last = selective_scan_triton(**x, delta_softplus=True, reverse=reverse, return_last_state=True)
    ref, ref_last = selective_scan_ref(**{k: (v.float() if k in ACT else v) for k, v in x.items()},
                                       delta_softplus=True, reverse=reverse, return_last_state=True)
    assert _rel(out, ref) < TOL[dtype] and _rel(last, ref_last) < TOL[torch.float32] * 10


def _use_backward(monkeypatch, bwd: str) -> None:
    """'assoc': the tl.associative_scan backward; 'seq': the sequential one, split into time groups, with the
    warp-shuffle reduction of dB / dC."""
    if bwd == "seq":
        monkeypatch.setattr(scan_triton, "BWD_SEQ_TR", 4)
        monkeypatch.setattr(scan_triton, "BWD_SEGMENTS", True)
        monkeypatch.setattr(scan_triton, "BWD_SHFL", True)
    else:
        monkeypatch.setattr(scan_triton, "BWD_SEQ_TR", 0)


@pytest.mark.parametrize("bwd", ["assoc", "seq"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("reverse,mask,groups", [(False, True, None), (True, False, 2)])
def test_gradients_realistic(monkeypatch, bwd, dtype, reverse, mask, groups):
    _use_backward(monkeypatch, bwd)
    x = _inputs(dtype, 2, 256, 2048, groups=groups, mask=mask, initial_state=True, seed=1)
    names = [k for k, v in x.items() if v.is_floating_point()]
    xt = {k: (v.requires_grad_(True) if k in names else v) for k, v in x.items()}
    xr = {k: (v.detach().float().requires_grad_(True) if k in names else v) for k, v in x.items()}
    out, last = selective_scan_triton(**xt, delta_softplus=True, reverse=reverse, return_last_state=True)
    ref, ref_last = selective_scan_ref(**xr, delta_softplus=True, reverse=reverse, return_last_state=True)
    g, gl = torch.randn_like(ref), torch.randn_like(ref_last)
    torch.autograd.backward((out, last), (g.to(dtype), gl))
    torch.autograd.backward((ref, ref_last), (g.to(dtype).float(), gl))
    assert _rel(out, ref) < TOL[dtype]
    for k in names:
        assert _rel(xt[k].grad, xr[k].grad) < GRAD_TOL[dtype], (k, _rel(xt[k].grad, xr[k].grad))


@pytest.mark.parametrize("bwd", ["assoc", "seq"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_long_sequence(monkeypatch, bwd, dtype):
    """L = 131072 at batch 1: forward and gradients against the chunked PyTorch scan (fp32)."""
    _use_backward(monkeypatch, bwd)
    x = _inputs(dtype, 1, 64, 131072, mask=True, seed=2)
    names = [k for k, v in x.items() if v.is_floating_point()]
    xt = {k: (v.requires_grad_(True) if k in names else v) for k, v in x.items()}
    xr = {k: (v.detach().float().requires_grad_(True) if k in names else v) for k, v in x.items()}
    out = selective_scan_triton(**xt, delta_softplus=True)
    ref = selective_scan_chunked(**xr, delta_softplus=True)
    g = torch.randn_like(ref)
    out.backward(g.to(dtype))
    ref.backward(g.to(dtype).float())
    assert _rel(out, ref) < TOL[dtype]
    for k in names:
        assert _rel(xt[k].grad, xr[k].grad) < GRAD_TOL[dtype], (k, _rel(xt[k].grad, xr[k].grad))


def test_offsets_past_2_31(monkeypatch):
    """batch x dim x L > 2^31: the last channels of a full run equal a run on those channels alone."""
    monkeypatch.setattr(scan_triton, "FWD_CONFIG", scan_triton.fwd_config(1, 16512, 131072))
    monkeypatch.setattr(scan_triton, "BWD_CONFIG", scan_triton.bwd_config(1, 16512, 131072))
    batch, dim, L, N = 1, 16512, 131072, 16
    assert batch * dim * L > 2**31
    x = _inputs(torch.bfloat16, batch, 64, L, N=N, seed=3)  # the last 64 channels
    big = {}
    for k, v in x.items():
        if k in ("u", "delta", "z"):
            full = torch.empty(batch, dim, L, dtype=v.dtype, device="cuda")
            full[:, :-64].normal_()
            full[:, -64:] = v
            big[k] = full.requires_grad_(True)
        elif k in ("A", "D", "delta_bias"):
            full = torch.cat([v[:1].expand(dim - 64, *v.shape[1:]), v]).contiguous()
            big[k] = full.requires_grad_(True)
        else:
            big[k] = v
    small = {k: (v.detach().clone().requires_grad_(True) if k in ("u", "delta", "z") else v) for k, v in x.items()}
    out = selective_scan_triton(**big, delta_softplus=True)
    # Both runs must split time alike (each picks its segment and group counts from its own warp count), or their
    # sums round differently: give the 64-channel run the same counts as the full one.
    full_blocks, small_blocks = triton.cdiv(dim, 32), triton.cdiv(64, 32)
    names = ("SEG_TARGET_WARPS", "BWD_SEG_TARGET_WARPS")
    full_targets = {k: getattr(scan_triton, k) for k in names}
    small_targets = {k: triton.cdiv(v, batch * full_blocks) * batch * small_blocks for k, v in full_targets.items()}

    def use(targets):
        for k, v in targets.items():
            monkeypatch.setattr(scan_triton, k, v)

    use(small_targets)
    ref = selective_scan_triton(**small, delta_softplus=True)
    assert torch.equal(out[:, -64:], ref)
    g = torch.randn(batch, 64, L, device="cuda", dtype=torch.bfloat16)
    gfull = torch.zeros_like(out)
    gfull[:, -64:] = g
    use(full_targets)
    out.backward(gfull)
    use(small_targets)
    ref.backward(g)
    for k in ("u", "delta", "z"):
        assert torch.equal(big[k].grad[:, -64:], small[k].grad), k


@pytest.mark.parametrize("bidirectional", [None, "add"])
def test_mamba_layer_gpu_matches_cpu(bidirectional):
    """The layer and the backbone (fp32) on the GPU, with the Triton kernels, against the CPU path."""
    from seqbackbone import Mamba, MambaBackbone

    torch.manual_seed(0)
    layer = Mamba(64, bidirectional=bidirectional)
    backbone = MambaBackbone(64, 2, bidirectional=bidirectional)
    x = torch.randn(2, 300, 64)
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, 250:] = False
    # a random projection of the output as the loss: the backbone's output is RMS-normalised, so the gradient of
    # sum(y^2) through the final norm is nearly zero (the sum hardly depends on the scale) and all rounding
    weight = torch.randn(2, 300, 64)
    for module in (layer, backbone):
        xc = x.clone().requires_grad_(True)
        yc = module(xc, mask=mask)
        (yc * weight).sum().backward()
        cpu_grads = {"x": xc.grad, **{k: p.grad.clone() for k, p in module.named_parameters()}}
        module.zero_grad(set_to_none=True)
        gpu = module.cuda()
        xg = x.cuda().requires_grad_(True)
        yg = gpu(xg, mask=mask.cuda())
        (yg * weight.cuda()).sum().backward()
        gpu_grads = {"x": xg.grad, **{k: p.grad for k, p in gpu.named_parameters()}}
        errors = {k: _rel(gpu_grads[k], cpu_grads[k]) for k in cpu_grads}
        print(type(module).__name__, bidirectional, "output", _rel(yg, yc), "grads", errors)
        assert _rel(yg, yc) < 1e-4
        assert max(errors.values()) < 1e-3, errors
        module.cpu()
