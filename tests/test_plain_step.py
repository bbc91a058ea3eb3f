"""PlainBackboneStep (seqbackbone.plain_step): bitwise the modules' step, and refused where it could not be."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import seqbackbone
from seqbackbone import MambaBackbone
from seqbackbone.bench import cpu_decode
from seqbackbone.generation import StepDecoder
from seqbackbone.mamba import Mamba
from seqbackbone.plain_step import PlainBackboneStep, plain_step_unsupported_reason


@pytest.fixture(autouse=True)
def _torch_ops(monkeypatch):
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")


def _prefilled(backbone: MambaBackbone, batch: int, seed: int) -> tuple[object, torch.Tensor]:
    """A cache filled by a random prompt of 7 steps, and a generator's next inputs (5, B, Dm)."""
    g = torch.Generator().manual_seed(seed)
    dtype = backbone.norm_f.weight.dtype
    cache = backbone.allocate_inference_cache(batch)
    with torch.no_grad():
        backbone(torch.randn(batch, 7, backbone.d_model, generator=g).to(dtype), cache=cache)
    return cache, torch.randn(5, batch, backbone.d_model, generator=g).to(dtype)


CONFIGS = {
    "fp32": dict(),
    "bf16": dict(dtype=torch.bfloat16),
    "biases": dict(bias=True, conv_bias=True),
    "no-conv-bias": dict(conv_bias=False),
    "residual-in-dtype": dict(residual_in_fp32=False, dtype=torch.bfloat16),
    "odd-sizes": dict(d_state=5, d_conv=3, expand=1.5, dt_rank=3),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("batch", [1, 3])
def test_plain_step_is_bitwise_the_modules_step(config, batch):
    kwargs = dict(CONFIGS[config])
    dtype = kwargs.pop("dtype", torch.float32)
    torch.manual_seed(0)
    backbone = MambaBackbone(24, n_layer=3, **kwargs).to(dtype)
    with torch.no_grad():  # the in/out projection biases start at zero; make them count
        for p in backbone.parameters():
            if p.dim() == 1 and not p.any():
                p.normal_()
    assert plain_step_unsupported_reason(backbone) is None
    ref_cache, inputs = _prefilled(backbone, batch, seed=1)
    plain_cache, _ = _prefilled(backbone, batch, seed=1)
    plain = PlainBackboneStep(backbone, [c.conv_state for c in plain_cache.layers],
                              [c.ssm_state for c in plain_cache.layers])
    for x_t in inputs:
        expected = backbone.step(x_t, ref_cache)
        got = plain(x_t)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected)
        for a, b in zip(plain_cache.layers, ref_cache.layers, strict=True):
            assert torch.equal(a.conv_state, b.conv_state) and torch.equal(a.ssm_state, b.ssm_state)
    assert not torch.equal(inputs[0], inputs[1])  # the steps saw different inputs


def test_plain_step_reads_the_live_weights():
    torch.manual_seed(0)
    backbone = MambaBackbone(16, n_layer=2)
    ref_cache, inputs = _prefilled(backbone, 2, seed=2)
    plain_cache, _ = _prefilled(backbone, 2, seed=2)
    plain = PlainBackboneStep(backbone, [c.conv_state for c in plain_cache.layers],
                              [c.ssm_state for c in plain_cache.layers])
    with torch.no_grad():  # trained in place after the step was built
        for p in backbone.parameters():
            p.mul_(1.1)
    assert torch.equal(plain(inputs[0]), backbone.step(inputs[0], ref_cache))


class _LoggingLinear(nn.Linear):
    pass


class _MyMamba(Mamba):
    pass


def _with_hook(backbone):
    backbone.layers[0].mixer.out_proj.register_forward_hook(lambda *args: None)


def _replace_in_proj(backbone):
    old = backbone.layers[1].mixer.in_proj
    new = _LoggingLinear(old.in_features, old.out_features, bias=False)
    backbone.layers[1].mixer.in_proj = new


def _subclass_mixer(backbone):
    backbone.layers[0].mixer.__class__ = _MyMamba


@pytest.mark.parametrize("change, words", [
    (lambda b: None, None),
    (_with_hook, "hooks"),
    (_replace_in_proj, "nn.Linear"),
    (_subclass_mixer, "plain Block"),
])
def test_plain_step_refuses_what_it_cannot_reproduce(change, words):
    backbone = MambaBackbone(16, n_layer=2)
    change(backbone)
    reason = plain_step_unsupported_reason(backbone)
    if words is None:
        assert reason is None
        return
    assert words in reason
    cache = backbone.allocate_inference_cache(1)
    with pytest.raises(ValueError, match="plain decoding step cannot run"):
        PlainBackboneStep(backbone, [c.conv_state for c in cache.layers], [c.ssm_state for c in cache.layers])


def test_plain_step_refuses_while_a_hook_for_every_module_is_registered():
    backbone = MambaBackbone(16, n_layer=1)
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert "hooks" in plain_step_unsupported_reason(backbone)
    finally:
        handle.remove()
    assert plain_step_unsupported_reason(backbone) is None


@pytest.mark.parametrize("kwargs, words", [
    (dict(rms_norm=False), "RMSNorm"),
    (dict(bidirectional="add"), "causal"),
])
def test_plain_step_refuses_other_backbones(kwargs, words):
    assert words in plain_step_unsupported_reason(MambaBackbone(16, n_layer=1, **kwargs))


def test_plain_step_refuses_the_triton_path(monkeypatch):
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    assert "Triton" in plain_step_unsupported_reason(MambaBackbone(16, n_layer=1))


def _greedy(model, prompt, steps):
    return model.generate(prompt, steps, temperature=0.0, return_logits=True)


def test_decoder_takes_the_plain_step_on_the_cpu_and_the_modules_otherwise():
    torch.manual_seed(0)
    model = seqbackbone.create_model("mamba_dna_lm_tiny", d_model=32, n_layer=2).eval()
    assert StepDecoder(model, 2).plain is not None
    prompt = torch.randint(0, model.vocab_size, (2, 9))
    ids, logits = _greedy(model, prompt, 6)
    model.backbone.norm_f.register_forward_hook(lambda *args: None)  # now only the modules can run it
    assert StepDecoder(model, 2).plain is None
    ids_modules, logits_modules = _greedy(model, prompt, 6)
    assert torch.equal(ids, ids_modules) and torch.equal(logits, logits_modules)


def test_cpu_decode_benchmark_checks_both_paths_agree(monkeypatch):
    torch.manual_seed(0)
    model = seqbackbone.create_model("mamba_wave_lm_tiny", d_model=16, n_layer=1).eval()
    with torch.inference_mode():
        decoder = StepDecoder(model, 2)
        decoder.prefill(torch.randint(0, model.vocab_size, (2, 5)))
        assert cpu_decode.check_bitwise(decoder)
        plain = decoder.plain
        decoder.plain = lambda x: plain(x) * 1.001  # a plain step that is off must be caught
        assert not cpu_decode.check_bitwise(decoder)


def test_cpu_decode_benchmark_runs(capsys):
    args = ["--models", "mamba_dna_lm_tiny", "--batch-sizes", "1", "--steps", "2", "--rounds", "1"]
    assert cpu_decode.main(args) == 0
    out = capsys.readouterr().out
    assert "| mamba_dna_lm_tiny |" in out and "bitwise equal" in out
