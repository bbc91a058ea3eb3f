"""MambaBackbone: agreement with mambapy's residual stack, decoding (step, prefill), masks with any padding content,
gradient checkpointing, forward_intermediates, no_weight_decay, init rescaling, bf16, config and input checks."""

from __future__ import annotations

import math

import pytest
import torch

from seqbackbone import BackboneConfig, InferenceCache, MambaBackbone, RMSNorm
from tests.test_mamba import pad_batch, randomize_

MODES = [None, "add", "tied"]


def small(**kwargs: object) -> MambaBackbone:
    torch.manual_seed(0)
    args = {"d_model": 8, "n_layer": 2, "d_state": 4}
    args.update(kwargs)
    return randomize_(MambaBackbone(**args))


def test_matches_mambapy_residual_stack() -> None:
    """Our fused add + norm blocks against mambapy's plain x + mixer(norm(x)) stack, then a final RMSNorm."""
    pytest.importorskip("mambapy")
    from mambapy.mamba import Mamba as MambaStack
    from mambapy.mamba import MambaConfig
    from mambapy.mamba import RMSNorm as RefRMSNorm

    bb = small(d_model=12, dt_rank=2, n_layer=3)
    cfg = MambaConfig(d_model=12, n_layers=3, d_state=4, dt_rank=2, pscan=False)
    ref = MambaStack(cfg)
    ref_norm = RefRMSNorm(12)
    state = bb.state_dict()
    ref_norm.weight.data.copy_(state.pop("norm_f.weight"))
    ref.load_state_dict(state)
    x = torch.randn(2, 10, 12)
    torch.testing.assert_close(bb(x), ref_norm(ref(x)), rtol=1e-4, atol=1e-5)


# ---- decoding ----


@pytest.mark.parametrize(("rms_norm", "residual_in_fp32"), [(True, True), (False, False)])
def test_step_equals_forward(rms_norm: bool, residual_in_fp32: bool) -> None:
    bb = small(rms_norm=rms_norm, residual_in_fp32=residual_in_fp32)
    x = torch.randn(2, 8, 8)
    cache = bb.allocate_inference_cache(2)
    steps = torch.stack([bb.step(x[:, t], cache) for t in range(8)], dim=1)
    torch.testing.assert_close(steps, bb(x), rtol=1e-5, atol=1e-5)
    assert cache.seqlen_offset == 8


@pytest.mark.parametrize("left", [False, True], ids=["right_padded", "left_padded"])
def test_prefill_then_step_equals_forward(left: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    bb = small()
    full = [torch.randn(n + 3, 8, generator=gen) for n in (6, 1, 4)]
    prompts, mask = pad_batch([s[:-3] for s in full], 7, left, gen)
    cache = bb.allocate_inference_cache(3)
    prefill = bb(prompts, mask, cache=cache)
    steps = torch.stack([bb.step(torch.stack([s[-3 + k] for s in full]), cache) for k in range(3)], dim=1)
    for i, s in enumerate(full):
        alone = bb(s[None])[0]
        torch.testing.assert_close(prefill[i][mask[i]], alone[:-3], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(steps[i], alone[-3:], rtol=1e-5, atol=1e-5)


def test_cache_reset_starts_over() -> None:
    bb = small()
    x = torch.randn(1, 4, 8)
    cache = bb.allocate_inference_cache(1)
    first = [bb.step(x[:, t], cache) for t in range(4)]
    cache.reset()
    assert cache.seqlen_offset == 0
    again = [bb.step(x[:, t], cache) for t in range(4)]
    torch.testing.assert_close(torch.stack(again), torch.stack(first), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["add", "tied"])
def test_bidirectional_backbone_refuses_to_decode(mode: str) -> None:
    bb = small(bidirectional=mode)
    with pytest.raises(RuntimeError, match="bidirectional"):
        bb.allocate_inference_cache(1)
    with pytest.raises(RuntimeError, match="bidirectional"):
        bb.step(torch.randn(1, 8), small().allocate_inference_cache(1))


# ---- masks ----


@pytest.mark.parametrize("left", [False, True], ids=["right_padded", "left_padded"])
@pytest.mark.parametrize("mode", MODES)
def test_padding_of_any_content_leaves_real_outputs_unchanged(mode: str | None, left: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    bb = small(bidirectional=mode)
    seqs = [torch.randn(n, 8, generator=gen) for n in (7, 3)]
    x, mask = pad_batch(seqs, 9, left, gen)
    x[~mask] = x[~mask].index_fill(-1, torch.tensor([0]), float("nan"))  # even nan padding must stay out
    x = x.requires_grad_()
    out = bb(x, mask)
    for i, s in enumerate(seqs):
        torch.testing.assert_close(out[i][mask[i]], bb(s[None])[0], rtol=1e-5, atol=1e-5)
    assert torch.all(out[~mask] == 0)
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[~mask] == 0)
    assert all(torch.isfinite(p.grad).all() for p in bb.parameters())


# ---- training helpers ----


@pytest.mark.parametrize("mode", [None, "add"])
def test_grad_checkpointing_gives_the_same_gradients(mode: str | None) -> None:
    bb = small(bidirectional=mode)
    x = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False

    def grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        bb.zero_grad()
        xi = x.clone().requires_grad_()
        bb(xi, mask).sin().sum().backward()
        return xi.grad, [p.grad.clone() for p in bb.parameters()]

    plain_x, plain = grads()
    bb.set_grad_checkpointing(True)
    ckpt_x, ckpt = grads()
    torch.testing.assert_close(ckpt_x, plain_x, rtol=1e-6, atol=1e-7)
    for a, b in zip(ckpt, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_forward_intermediates() -> None:
    bb = small(n_layer=4, rms_norm=False)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    final, inter = bb.forward_intermediates(x, mask)
    torch.testing.assert_close(final, bb(x, mask), rtol=0, atol=0)
    # by hand: the residual stream after each block
    hidden, residual, stream = torch.where(mask[..., None], x, 0.0), None, []
    for block in bb.layers:
        hidden, residual = block(hidden, residual, mask)
        stream.append(hidden + residual)
    assert len(inter) == 4
    for got, want in zip(inter, stream, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    normed = bb.forward_intermediates(x, mask, indices=[-1], norm=True, intermediates_only=True)
    torch.testing.assert_close(normed[0], final, rtol=0, atol=0)
    last_two = bb.forward_intermediates(x, mask, indices=2, intermediates_only=True)
    torch.testing.assert_close(torch.stack(last_two), torch.stack(stream[2:]), rtol=0, atol=0)
    early_final, early = bb.forward_intermediates(x, mask, indices=[0, 1], norm=True, stop_early=True)
    torch.testing.assert_close(early_final, early[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="indices"):
        bb.forward_intermediates(x, indices=[4])


@pytest.mark.parametrize(("mode", "rms_norm"), [(None, True), ("add", False)])
def test_no_weight_decay_covers_ssm_parameters_and_norms(mode: str | None, rms_norm: bool) -> None:
    bb = MambaBackbone(d_model=8, n_layer=2, d_state=4, bidirectional=mode, rms_norm=rms_norm)
    names = bb.no_weight_decay()
    expected = set()
    for name, _ in bb.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("A_log", "D", "A_b_log", "D_b") or ".norm." in name or name.startswith("norm_f."):
            expected.add(name)
    assert names == expected
    assert sum(n.endswith("A_log") for n in names) == 2
    assert sum(n.endswith("A_b_log") for n in names) == (2 if mode == "add" else 0)
    assert ("norm_f.bias" in names) == (not rms_norm)
    assert not any("proj" in n or "conv" in n for n in names)


def test_init_rescales_out_proj_by_depth_and_zeroes_biases() -> None:
    torch.manual_seed(3)
    n_layer, d_model = 9, 64
    bb = MambaBackbone(d_model=d_model, n_layer=n_layer, bias=True)
    bound = 1 / math.sqrt(2 * d_model) / math.sqrt(n_layer)  # kaiming_uniform(a=sqrt(5)) over fan_in = d_inner
    for block in bb.layers:
        w = block.mixer.out_proj.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert torch.all(block.mixer.in_proj.bias == 0) and torch.all(block.mixer.out_proj.bias == 0)
        assert torch.all(block.mixer.dt_proj.bias < 0)  # inverse softplus of dt <= 0.1 survives the bias reset
    plain = MambaBackbone(d_model=d_model, n_layer=n_layer, rescale_prenorm_residual=False)
    assert plain.layers[0].mixer.out_proj.weight.abs().max() > 2 * bound


def test_norm_modules() -> None:
    bb = MambaBackbone(d_model=8, n_layer=2)
    assert isinstance(bb.norm_f, RMSNorm) and all(isinstance(b.norm, RMSNorm) for b in bb.layers)
    ln = MambaBackbone(d_model=8, n_layer=2, rms_norm=False)
    assert isinstance(ln.norm_f, torch.nn.LayerNorm)


# ---- precision, factory kwargs, config ----


@pytest.mark.parametrize("mode", [None, "add"])
def test_bf16_autocast_on_cpu(mode: str | None) -> None:
    bb = small(bidirectional=mode)
    x = torch.randn(2, 7, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bb(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), bb(x), rtol=0.1, atol=0.05)
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in bb.parameters())


def test_bf16_weights_forward_and_step() -> None:
    bb = MambaBackbone(d_model=8, n_layer=2, d_state=4, dtype=torch.bfloat16)
    assert bb.layers[0].mixer.in_proj.weight.dtype == torch.bfloat16
    x = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    out = bb(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    cache = bb.allocate_inference_cache(2)
    steps = torch.stack([bb.step(x[:, t], cache) for t in range(5)], dim=1)
    torch.testing.assert_close(steps.float(), out.float(), rtol=0.05, atol=0.05)


def test_config_round_trip() -> None:
    bb = MambaBackbone(d_model=20, n_layer=2, bidirectional="tied", rms_norm=False)
    assert isinstance(bb.config, BackboneConfig) and bb.config.dt_rank == 2 and bb.num_features == 20
    again = MambaBackbone.from_config(bb.config.to_dict())
    assert again.config == bb.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in bb.state_dict().items()}
    assert "layers.1.mixer.A_log" in bb.state_dict() and "norm_f.weight" in bb.state_dict()


# ---- input checks ----


@pytest.mark.parametrize(
    ("x", "mask", "error", "words"),
    [
        (torch.randn(2, 5), None, ValueError, ["x", "(2, 5)", "d_model=8"]),
        (torch.randn(2, 5, 4), None, ValueError, ["x", "(2, 5, 4)", "d_model=8"]),
        (torch.zeros(2, 5, 8, dtype=torch.long), None, TypeError, ["x", "torch.int64"]),
        (torch.randn(2, 5, 8), torch.ones(5, 2, dtype=torch.bool), ValueError, ["mask", "(5, 2)", "(2, 5)"]),
        (torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long), TypeError, ["mask", "torch.int64", "bool"]),
    ],
)
def test_bad_input_raises_naming_the_argument(x: object, mask: object, error: type, words: list[str]) -> None:
    bb = MambaBackbone(d_model=8, n_layer=1)
    with pytest.raises(error) as info:
        bb(x, mask)
    for word in words:
        assert word in str(info.value)
    if mask is None:
        with pytest.raises(error):
            bb.forward_intermediates(x)


def test_bad_cache_and_step_input() -> None:
    bb = MambaBackbone(d_model=8, n_layer=2)
    cache = bb.allocate_inference_cache(2)
    assert isinstance(cache, InferenceCache) and cache.batch_size == 2
    with pytest.raises(ValueError, match=r"x_t.*\(3, 8\)"):
        bb.step(torch.randn(3, 8), cache)
    with pytest.raises(TypeError, match="x_t"):
        bb.step(torch.zeros(2, 8, dtype=torch.int32), cache)
    with pytest.raises(ValueError, match="2 layer states"):
        bb.step(torch.randn(2, 8), InferenceCache(layers=cache.layers[:1]))
    with pytest.raises(TypeError, match="InferenceCache"):
        bb.step(torch.randn(2, 8), cache.layers)
    with pytest.raises(ValueError, match="n_layer"):
        MambaBackbone(d_model=8, n_layer=0)


# ---- on a GPU: the Triton kernels behind the same modules ----


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_gpu_matches_cpu(mode: str | None) -> None:
    gen = torch.Generator().manual_seed(4)
    bb = small(d_model=32, d_state=16, bidirectional=mode)
    gpu = MambaBackbone.from_config(bb.config, device="cuda")
    gpu.load_state_dict(bb.state_dict())
    seqs = [torch.randn(n, 32, generator=gen) for n in (50, 17)]
    x, mask = pad_batch(seqs, 64, False, gen)
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    out_c, out_g = bb(xc, mask), gpu(xg, mask.cuda())
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-4, atol=1e-4)
    out_c.sin().sum().backward()
    out_g.sin().sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-3, atol=1e-4)
    for (name, pc), pg in zip(bb.named_parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(pg.grad.cpu(), pc.grad, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.gpu
def test_gpu_bf16_prefill_and_step() -> None:
    gen = torch.Generator().manual_seed(5)
    bb = MambaBackbone(d_model=64, n_layer=2, device="cuda")
    full = [torch.randn(n + 4, 64, generator=gen) for n in (30, 9)]
    prompts, mask = pad_batch([s[:-4] for s in full], 32, False, gen)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        cache = bb.allocate_inference_cache(2)
        bb(prompts.cuda(), mask.cuda(), cache=cache)
        steps = torch.stack([bb.step(torch.stack([s[-4 + k] for s in full]).cuda(), cache) for k in range(4)], 1)
        for i, s in enumerate(full):
            alone = bb(s[None].cuda())[0, -4:]
            assert torch.isfinite(steps[i]).all()
            torch.testing.assert_close(steps[i].float(), alone.float(), rtol=0.05, atol=0.05)
