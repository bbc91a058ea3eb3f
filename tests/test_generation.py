"""Generation on the recurrent state: sampling filters, prefill + step against the parallel forward, determinism."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torchaudio.functional as AF

import seqbackbone
from seqbackbone.generation import generate, sample_next_token, top_k_filter, top_p_filter

TINY = {"d_model": 32, "n_layer": 2}


@pytest.fixture(scope="module")
def dna_lm() -> torch.nn.Module:
    torch.manual_seed(0)
    return seqbackbone.create_model("mamba_dna_lm_tiny", **TINY).eval()


@pytest.fixture(scope="module")
def wave_lm() -> torch.nn.Module:
    torch.manual_seed(1)
    return seqbackbone.create_model("mamba_wave_lm_tiny", **TINY).eval()


# ------------------------------------------------------------------------------------------------------ filters
def _top_p_keep(probs: torch.Tensor, p: float) -> set[int]:
    """Independent nucleus: walk tokens from most to least likely until the mass taken reaches p."""
    order = sorted(range(len(probs)), key=lambda i: -float(probs[i]))
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += float(probs[i])
        if mass >= p:
            break
    return kept


def _draws(logits: torch.Tensor, n: int, seed: int, **kwargs) -> torch.Tensor:
    """n draws per row of logits (B, V) -> (B, n)."""
    gen = torch.Generator().manual_seed(seed)
    b = logits.shape[0]
    return sample_next_token(logits.repeat_interleave(n, dim=0), generator=gen, **kwargs).view(b, n)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_top_k_never_draws_excluded_tokens(k: int) -> None:
    torch.manual_seed(k)
    logits = torch.randn(4, 12) * 2
    draws = _draws(logits, 4000, seed=k, temperature=1.0, top_k=k)
    for row, d in zip(logits, draws, strict=True):
        allowed = set(torch.argsort(row, descending=True)[:k].tolist())
        assert set(d.tolist()) <= allowed
        # the kept tokens are drawn in proportion to their renormalised probabilities
        probs = torch.softmax(row[sorted(allowed)], dim=0)
        freq = torch.stack([(d == i).float().mean() for i in sorted(allowed)])
        torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)
    filtered = top_k_filter(logits, k)
    assert (torch.isfinite(filtered).sum(-1) == k).all()


@pytest.mark.parametrize("p", [0.3, 0.75, 0.95])
def test_top_p_never_draws_excluded_tokens(p: float) -> None:
    torch.manual_seed(int(p * 100))
    logits = torch.randn(5, 10) * 1.5
    draws = _draws(logits, 4000, seed=1, temperature=1.0, top_p=p)
    filtered = top_p_filter(logits, p)
    for row, f, d in zip(logits, filtered, draws, strict=True):
        allowed = _top_p_keep(torch.softmax(row, dim=0), p)
        assert set(torch.isfinite(f).nonzero()[:, 0].tolist()) == allowed
        assert set(d.tolist()) <= allowed
        probs = torch.softmax(row[sorted(allowed)], dim=0)
        freq = torch.stack([(d == i).float().mean() for i in sorted(allowed)])
        torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


def test_top_k_then_top_p_and_temperature() -> None:
    torch.manual_seed(3)
    logits = torch.randn(3, 16) * 3
    temperature, k, p = 0.7, 6, 0.8
    draws = _draws(logits, 3000, seed=2, temperature=temperature, top_k=k, top_p=p)
    for row, d in zip(logits, draws, strict=True):
        scaled = row / temperature
        top = torch.argsort(scaled, descending=True)[:k]
        probs_k = torch.zeros_like(scaled)
        probs_k[top] = torch.softmax(scaled[top], dim=0)
        allowed = _top_p_keep(probs_k, p) & set(top.tolist())
        assert set(d.tolist()) <= allowed


def test_greedy_and_argument_checks() -> None:
    logits = torch.randn(4, 9)
    assert torch.equal(sample_next_token(logits, temperature=0), logits.argmax(-1))
    assert torch.equal(top_p_filter(logits, 1.0), logits) and torch.equal(top_k_filter(logits, 9), logits)
    assert torch.isfinite(top_p_filter(logits, 1e-6)).sum(-1).eq(1).all()  # the top token always survives
    for kwargs in ({"temperature": -1.0}, {"temperature": math.nan}, {"top_k": 0}, {"top_k": 2.5},
                   {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            sample_next_token(logits, **kwargs)
    with pytest.raises(ValueError, match="logits"):
        sample_next_token(logits[0])


# ------------------------------------------------------------------------------------------------- model decoding
def test_greedy_matches_parallel_forward(dna_lm: torch.nn.Module) -> None:
    """Every greedily generated token is the argmax of the parallel forward over the final sequence."""
    torch.manual_seed(4)
    prompt = torch.randint(4, 9, (3, 9))
    out, logits = generate(dna_lm, prompt, 12, temperature=0, return_logits=True)
    assert out.shape == (3, 21) and out.dtype == torch.long
    assert torch.equal(out[:, :9], prompt)
    with torch.no_grad():
        # (B, L, V), position t predicting token t + 1; an explicit mask, as a generated [PAD] id is still a token
        full = dna_lm(out, mask=torch.ones_like(out, dtype=torch.bool))
    assert torch.equal(full[:, 8:-1].argmax(-1), out[:, 9:])
    torch.testing.assert_close(logits, full[:, 8:-1].float(), atol=1e-4, rtol=1e-4)


def test_waveform_greedy_matches_parallel_forward(wave_lm: torch.nn.Module) -> None:
    torch.manual_seed(5)
    prompt = torch.sin(torch.arange(40.0) * 0.3)[None].repeat(2, 1) * torch.tensor([[0.5], [0.9]])
    out = generate(wave_lm, prompt, 15, temperature=0)
    assert out.shape == (2, 55) and out.dtype == prompt.dtype
    assert torch.equal(out[:, :40], prompt)
    assert out.abs().max() <= 1.0
    codes = AF.mu_law_encoding(out, 256)
    assert torch.equal(AF.mu_law_encoding(AF.mu_law_decoding(codes, 256), 256), codes)  # decoding is invertible
    with torch.no_grad():
        full = wave_lm(out)
    assert torch.equal(full[:, 39:-1].argmax(-1), codes[:, 40:])


@pytest.mark.parametrize("length", [1, 11, 150])
def test_prefill_state_equals_stepping(dna_lm: torch.nn.Module, length: int) -> None:
    """The parallel scan's final states, handed to the cache, equal the states after stepping token by token."""
    torch.manual_seed(6)
    prompt = torch.randint(4, 9, (2, length))
    backbone, embed = dna_lm.backbone, dna_lm.encoder.embed
    with torch.no_grad():
        prefilled = backbone.allocate_inference_cache(2)
        hidden = backbone(embed(prompt), cache=prefilled)
        stepped = backbone.allocate_inference_cache(2)
        for t in range(prompt.shape[1]):
            last = backbone.step(embed(prompt[:, t]), stepped)
    for a, b in zip(prefilled.layers, stepped.layers, strict=True):
        torch.testing.assert_close(a.conv_state, b.conv_state, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.ssm_state, b.ssm_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[:, -1], last, atol=1e-5, rtol=1e-5)
    assert prefilled.seqlen_offset == stepped.seqlen_offset == length


def test_fixed_generator_repeats_samples(dna_lm: torch.nn.Module, wave_lm: torch.nn.Module) -> None:
    prompt = torch.randint(4, 9, (2, 5), generator=torch.Generator().manual_seed(0))
    kwargs = {"temperature": 1.3, "top_k": 4, "top_p": 0.95}
    a = generate(dna_lm, prompt, 20, generator=torch.Generator().manual_seed(7), **kwargs)
    b = generate(dna_lm, prompt, 20, generator=torch.Generator().manual_seed(7), **kwargs)
    c = generate(dna_lm, prompt, 20, generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    wave = torch.zeros(1, 8)
    w1 = generate(wave_lm, wave, 30, generator=torch.Generator().manual_seed(3))
    w2 = generate(wave_lm, wave, 30, generator=torch.Generator().manual_seed(3))
    assert torch.equal(w1, w2)


def test_batched_rows_equal_single_rows(dna_lm: torch.nn.Module) -> None:
    torch.manual_seed(9)
    prompts = torch.randint(4, 9, (4, 6))
    batched = generate(dna_lm, prompts, 10, temperature=0)
    for i in range(4):
        assert torch.equal(generate(dna_lm, prompts[i : i + 1], 10, temperature=0)[0], batched[i])


def test_suppressed_tokens_never_appear(dna_lm: torch.nn.Module) -> None:
    from seqbackbone.tokenizer import A_ID, T_ID

    prompt = torch.full((8, 3), A_ID)
    allowed = set(range(A_ID, T_ID + 1))
    banned = [i for i in range(dna_lm.vocab_size) if i not in allowed]
    out = generate(dna_lm, prompt, 40, temperature=2.0, suppress_tokens=banned,
                   generator=torch.Generator().manual_seed(0))
    assert set(out[:, 3:].unique().tolist()) <= allowed
    greedy = generate(dna_lm, prompt, 5, temperature=0, suppress_tokens=banned)
    assert set(greedy[:, 3:].unique().tolist()) <= allowed


def test_zero_new_tokens_and_training_mode_kept(dna_lm: torch.nn.Module) -> None:
    prompt = torch.randint(4, 9, (2, 4))
    assert torch.equal(generate(dna_lm, prompt, 0), prompt)
    dna_lm.train()
    try:
        generate(dna_lm, prompt, 2)
        assert dna_lm.training
    finally:
        dna_lm.eval()


def test_progress_bar_counts_the_new_tokens(dna_lm: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm.auto

    bars = []
    real = tqdm.auto.tqdm

    def recording(*args, **kwargs):  # shown (into a buffer), so that it counts
        bar = real(*args, **{**kwargs, "disable": False, "file": io.StringIO()})
        bars.append(bar)
        return bar

    monkeypatch.setattr(tqdm.auto, "tqdm", recording)
    prompt = torch.randint(4, 9, (2, 5), generator=torch.Generator().manual_seed(0))
    shown = generate(dna_lm, prompt, 12, generator=torch.Generator().manual_seed(5), progress=True)
    quiet = generate(dna_lm, prompt, 12, generator=torch.Generator().manual_seed(5))
    assert torch.equal(shown, quiet) and [(b.total, b.n, b.unit) for b in bars] == [(12, 12, "token")]
    generate(dna_lm, prompt, 4, temperature=0, progress=True)  # greedy, whichever loop takes the steps
    assert (bars[-1].total, bars[-1].n) == (4, 4)
    bars.clear()
    generate(dna_lm, prompt, 3)
    assert not bars  # no bar unless asked


def test_compiled_step_on_the_cpu_matches_eager(dna_lm: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """compile=True traces the step with torch.compile (here its graph capture alone, backend "eager", so that no C++
    compiler is needed) and decodes as the eager step does."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="eager", **kw))
    torch._dynamo.reset()
    prompt = torch.randint(4, 9, (2, 6), generator=torch.Generator().manual_seed(1))
    eager, eager_logits = generate(dna_lm, prompt, 8, temperature=0, return_logits=True)
    compiled, compiled_logits = generate(dna_lm, prompt, 8, temperature=0, return_logits=True, compile=True)
    from seqbackbone.generation import _DECODERS, _step_logits

    decoder = _DECODERS[dna_lm]
    assert decoder._fn is not _step_logits and decoder.plain is None and decoder.fused is None  # compiled it ran
    assert torch.equal(eager, compiled)
    torch.testing.assert_close(compiled_logits, eager_logits, atol=1e-5, rtol=1e-5)


def test_bad_inputs(dna_lm: torch.nn.Module, wave_lm: torch.nn.Module) -> None:
    ids = torch.randint(4, 9, (2, 4))
    with pytest.raises(TypeError, match="prompt"):
        generate(dna_lm, ids.float(), 3)
    with pytest.raises(TypeError, match="prompt"):
        generate(wave_lm, ids, 3)
    with pytest.raises(ValueError, match="prompt"):
        generate(dna_lm, ids[0], 3)
    with pytest.raises(ValueError, match="prompt"):
        generate(dna_lm, ids[:, :0], 3)
    with pytest.raises(ValueError, match=r"\[0, 9\)"):
        generate(dna_lm, ids + 10, 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(dna_lm, ids, -1)
    with pytest.raises(ValueError, match="suppress_tokens"):
        generate(dna_lm, ids, 3, suppress_tokens=[99])
    classifier = seqbackbone.create_model("mamba_dna_cls_tiny", **TINY)
    with pytest.raises(ValueError, match="language model"):
        generate(classifier, ids, 3)
    with pytest.raises(ValueError, match="cuda_graph"):
        generate(dna_lm, ids, 3, cuda_graph=True)


def test_graph_path_with_a_stand_in_graph(dna_lm: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """The capture / replay plumbing of StepDecoder on the CPU: torch.cuda's stream and graph calls are replaced by
    stand-ins whose replay reruns the step and writes into the tensors captured as outputs, as a real graph does."""
    from contextlib import contextmanager

    from seqbackbone.generation import StepDecoder

    decoder = StepDecoder(dna_lm, batch_size=2)

    class StandInGraph:
        def replay(self) -> None:
            static = decoder.logits
            decoder._run_step()
            static.copy_(decoder.logits)
            decoder.logits = static

    class StandInStream:
        def __init__(self, device=None) -> None:
            pass

        def wait_stream(self, other) -> None:
            pass

    @contextmanager
    def same_context(*args, **kwargs):
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", StandInGraph)
    monkeypatch.setattr(torch.cuda, "Stream", StandInStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: StandInStream())
    monkeypatch.setattr(torch.cuda, "stream", same_context)
    monkeypatch.setattr(torch.cuda, "graph", same_context)
    with torch.inference_mode():
        decoder._capture(warmup_steps=2)
    assert decoder.graph is not None
    assert all(not layer.ssm_state.any() and not layer.conv_state.any() for layer in decoder.cache.layers)
    static = decoder.logits

    torch.manual_seed(11)
    prompt = torch.randint(4, 9, (2, 6))
    tokens = torch.randint(4, 9, (2, 5))
    logits = [decoder.prefill(prompt)] + [decoder.step(tokens[:, t]).clone() for t in range(5)]
    assert decoder.logits is static and decoder.cache.seqlen_offset == 11
    with torch.no_grad():
        full = dna_lm(torch.cat([prompt, tokens], 1), mask=torch.ones(2, 11, dtype=torch.bool))
    torch.testing.assert_close(torch.stack(logits, 1), full[:, 5:].float(), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decoding_matches_eager(dtype: torch.dtype) -> None:
    torch.manual_seed(10)
    model = seqbackbone.create_model("mamba_dna_lm_tiny", **TINY).to("cuda", dtype).eval()
    prompt = torch.randint(4, 9, (3, 7), device="cuda")
    eager, eager_logits = generate(model, prompt, 16, temperature=0, cuda_graph=False, return_logits=True)
    graph, graph_logits = generate(model, prompt, 16, temperature=0, cuda_graph=True, return_logits=True)
    assert torch.equal(eager, graph)
    torch.testing.assert_close(graph_logits, eager_logits, atol=1e-3, rtol=1e-3)
    again = generate(model, prompt, 16, temperature=0, cuda_graph=True)  # the captured graph is reused
    assert torch.equal(again, graph)
    compiled, compiled_logits = generate(model, prompt, 16, temperature=0, cuda_graph=True, compile=True,
                                         return_logits=True)
    # fused kernels round differently: the first step's logits agree closely, and the greedy paths mostly agree
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(compiled_logits[:, :2], eager_logits[:, :2], atol=tol, rtol=tol)
    assert (compiled == eager).float().mean() > 0.8
    gen = torch.Generator(device="cuda")
    s1 = generate(model, prompt, 16, top_k=3, generator=gen.manual_seed(1))
    s2 = generate(model, prompt, 16, top_k=3, generator=gen.manual_seed(1))
    assert torch.equal(s1, s2)
