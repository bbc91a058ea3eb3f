"""The one-kernel decoding step (seqbackbone.kernels.decode) against the layer-by-layer PyTorch step.

On the CPU the kernel runs through the Triton interpreter with one program (its grid barriers are then trivial); the
work is planned for several programs so that every phase loops over many small items and crosses block boundaries.
Tiny fp32 LMs with non-power-of-two sizes, fresh random weights and random non-zero states, NaN-poisoned outputs.
"""

from __future__ import annotations

import pytest
import torch
from seqbackbone.kernels import decode
from seqbackbone.kernels.decode import FusedDecodeStep, fused_decode_supported, fused_decode_unsupported_reason

import seqbackbone
from seqbackbone.generation import StepDecoder, generate

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def triton_path(monkeypatch):
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "triton")
    monkeypatch.delenv("SEQBACKBONE_FUSED_DECODE", raising=False)


def _lm(name: str, seed: int, device: str = DEV, dtype: torch.dtype = torch.float32, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = seqbackbone.create_model(name, **kw).to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # away from the init: every channel's A_log, D, biases and norm weights differ
        for name_, p in model.named_parameters():
            if name_.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=gen) * 8 + 0.5))
            elif name_.endswith("dt_proj.bias"):
                p.copy_(torch.rand(p.shape, generator=gen) * 3 - 5)
            elif p.dim() == 1:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
    return model


def _reference_step(model: torch.nn.Module, token: torch.Tensor, cache) -> torch.Tensor:
    x_t = model.encoder.embed(token[:, None])[:, 0]
    return model.head(model.backbone.step(x_t, cache)).float()


def _random_caches(model: torch.nn.Module, batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    a, b = (model.backbone.allocate_inference_cache(batch) for _ in range(2))
    for la, lb in zip(a.layers, b.layers, strict=True):
        for ta, tb in ((la.conv_state, lb.conv_state), (la.ssm_state, lb.ssm_state)):
            ta.copy_(torch.randn(ta.shape, generator=gen))
            tb.copy_(ta)
    return a, b


@pytest.mark.parametrize(
    ("batch", "kw", "programs", "merge"),
    [(1, {"d_model": 32, "n_layer": 2, "d_state": 5}, 6, False), (3, {"d_model": 24, "n_layer": 3, "d_state": 16}, 4,
                                                                  False),
     (2, {"d_model": 24, "n_layer": 2, "d_state": 3}, 5, True)],
)
def test_fused_steps_match_reference(triton_path, monkeypatch, batch, kw, programs, merge):
    """merge: in_proj inside the conv phase (decode.TUNE's MERGE_IN_CONV)."""
    monkeypatch.setitem(decode.TUNE, "MERGE_IN_CONV", int(merge))
    model = _lm("mamba_dna_lm_tiny", seed=batch, **kw)
    assert fused_decode_supported(model, batch)
    fused_cache, ref_cache = _random_caches(model, batch, seed=10 + batch)
    token = torch.zeros(batch, dtype=torch.long, device=DEV)
    step = FusedDecodeStep(model, token, [c.conv_state for c in fused_cache.layers],
                           [c.ssm_state for c in fused_cache.layers], programs=programs)
    gen = torch.Generator().manual_seed(batch)
    for _ in range(5):
        step.logits.fill_(float("nan"))
        for buf in (step._resid, step._xz, step._xc, step._part, step._y):
            buf.fill_(float("nan"))
        token.copy_(torch.randint(0, model.vocab_size, (batch,), generator=gen))
        got = step()
        monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")
        with torch.no_grad():
            want = _reference_step(model, token, ref_cache)
        monkeypatch.setenv("SEQBACKBONE_KERNELS", "triton")
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
        for f, r in zip(fused_cache.layers, ref_cache.layers, strict=True):
            torch.testing.assert_close(f.conv_state, r.conv_state, atol=2e-5, rtol=2e-5)  # in_proj sums
            torch.testing.assert_close(f.ssm_state, r.ssm_state, atol=2e-5, rtol=2e-5)
    # four grid barriers per layer (three in layer 0, which starts from the embedding, and one before the head);
    # merged, one fewer per layer
    assert step._barrier.item() == 5 * (3 if merge else 4) * kw["n_layer"]


def test_decoder_uses_fused_step_after_prefill(triton_path, monkeypatch):
    """StepDecoder on the fused path: prefill fills the very tensors the kernel reads; steps match the reference."""
    model = _lm("mamba_wave_lm_tiny", seed=7, d_model=32, n_layer=2)
    decoder = StepDecoder(model, 2)
    assert decoder.fused is not None
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")
    monkeypatch.setenv("SEQBACKBONE_FUSED_DECODE", "0")
    reference = StepDecoder(model, 2)
    assert reference.fused is None
    prompt = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(0)).to(DEV)
    ref_logits = reference.prefill(prompt)
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")  # the interpreted parallel scan would be slow
    logits = decoder.prefill(prompt)
    torch.testing.assert_close(logits, ref_logits)
    for _ in range(3):
        tok = ref_logits.argmax(-1)
        ref_logits = reference.step(tok).clone()
        monkeypatch.setenv("SEQBACKBONE_KERNELS", "triton")
        logits = decoder.step(tok)
        monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")
        torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=2e-5)


def test_unsupported_models_fall_back(triton_path, monkeypatch):
    model = _lm("mamba_dna_lm_tiny", seed=3, d_model=16, n_layer=1)
    assert fused_decode_supported(model, 8)
    assert not fused_decode_supported(model, 9)
    assert "batch" in fused_decode_unsupported_reason(model, 0)
    with torch.no_grad():
        model.backbone.layers[0].mixer.out_proj.bias = torch.nn.Parameter(torch.zeros(16))
    assert "bias" in fused_decode_unsupported_reason(model, 1)
    assert StepDecoder(model, 1).fused is None
    with pytest.raises(ValueError, match="cannot run this model"):
        FusedDecodeStep(model, torch.zeros(1, dtype=torch.long), [], [])
    monkeypatch.setenv("SEQBACKBONE_FUSED_DECODE", "0")
    assert not fused_decode_supported(_lm("mamba_dna_lm_tiny", seed=3, d_model=16, n_layer=1), 1)
    monkeypatch.setenv("SEQBACKBONE_FUSED_DECODE", "1")
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")
    assert "interpreter" in fused_decode_unsupported_reason(_lm("mamba_dna_lm_tiny", seed=3, d_model=16,
                                                                    n_layer=1, device="cpu"), 1) or DEV == "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 8])
def test_gpu_fused_step_matches_reference_bf16(monkeypatch, batch):
    """The real grid (one program per SM) at the 90M LM's layer size in bf16, two layers, against the reference."""
    monkeypatch.delenv("SEQBACKBONE_KERNELS", raising=False)
    model = _lm("mamba_wave_lm_base", seed=batch, device="cuda", dtype=torch.bfloat16, d_model=768, n_layer=2)
    fused_cache, ref_cache = _random_caches(model, batch, seed=batch)
    token = torch.zeros(batch, dtype=torch.long, device="cuda")
    step = FusedDecodeStep(model, token, [c.conv_state for c in fused_cache.layers],
                           [c.ssm_state for c in fused_cache.layers])
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(8):
        token.copy_(torch.randint(0, 256, (batch,), device="cuda", generator=gen))
        got = step().clone()
        with torch.no_grad():
            want = _reference_step(model, token, ref_cache)
        # bf16 activations round at the same places from sums taken in other orders
        assert ((got - want).norm() / want.norm()).item() < 3e-2
    for f, r in zip(fused_cache.layers, ref_cache.layers, strict=True):
        assert ((f.ssm_state - r.ssm_state).norm() / r.ssm_state.norm()).item() < 3e-2


@pytest.mark.gpu
def test_gpu_greedy_generation_same_both_ways(monkeypatch):
    monkeypatch.delenv("SEQBACKBONE_KERNELS", raising=False)
    # weights away from the init, so that the logits are spread and no near-tie decides a token
    model = _lm("mamba_wave_lm_base", seed=0, device="cuda", dtype=torch.bfloat16, d_model=768, n_layer=2)
    prompt = torch.rand(1, 16, generator=torch.Generator().manual_seed(0)).cuda() * 2 - 1
    assert fused_decode_supported(model, 1)
    fused = generate(model, prompt, 64, temperature=0)
    monkeypatch.setenv("SEQBACKBONE_FUSED_DECODE", "0")
    reference = generate(model, prompt, 64, temperature=0)
    assert torch.equal(fused, reference)
