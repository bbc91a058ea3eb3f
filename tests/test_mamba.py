"""The Mamba layer: paper init, state-dict names, agreement with an independent implementation (mambapy), causality,
both bidirectional modes, masks with garbage padding, prefill + step, bf16 autocast and input checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqbackbone import Mamba, MambaCache

MODES = [None, "add", "tied"]
REVERSE_PARAMS = ["conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight", "dt_proj_b.bias",
                  "A_b_log", "D_b"]


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its init (D = 1, A_log = log n, zero biases would hide wiring mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))
    return module


def mambapy_twin(layer: Mamba) -> torch.nn.Module:
    """The same weights in mambapy's MambaBlock (causal) or its Vim block (bidirectional, averaged directions):
    an implementation written independently of ours (nn.Conv1d, flips, its own sequential scan)."""
    if layer.bidirectional is None:
        from mambapy.mamba import MambaBlock, MambaConfig

        cfg = MambaConfig(d_model=layer.d_model, n_layers=1, d_state=layer.d_state, d_conv=layer.d_conv,
                          expand_factor=int(layer.expand), dt_rank=layer.dt_rank, pscan=False)
        twin = MambaBlock(cfg)
        twin.load_state_dict(layer.state_dict())
        return twin
    from mambapy.vim import MambaConfig, VMambaBlock

    cfg = MambaConfig(d_model=layer.d_model, n_layers=1, d_state=layer.d_state, d_conv=layer.d_conv,
                      expand_factor=int(layer.expand), dt_rank=layer.dt_rank, pscan=False, bidirectional=True,
                      divide_output=True)
    twin = VMambaBlock(cfg)
    state = layer.state_dict()
    if layer.bidirectional == "tied":  # the reverse half reuses the forward parameters
        for name in ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "D"):
            head, _, leaf = name.rpartition(".")
            state[f"{head}_b.{leaf}" if head else f"{leaf}_b"] = state[name]
        state["A_b_log"] = state["A_log"]
    state["A_log_b"] = state.pop("A_b_log")  # mambapy's name for Vim's A_b_log
    twin.load_state_dict(state)
    return twin


# ---- init and names ----


def test_defaults_and_paper_init() -> None:
    torch.manual_seed(0)
    layer = Mamba(d_model=160)  # d_inner 320 channels give the dt draw a spread to check
    assert (layer.d_state, layer.d_conv, layer.d_inner, layer.dt_rank) == (16, 4, 320, math.ceil(160 / 16))
    expected_A_log = torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(320, 16)
    torch.testing.assert_close(layer.A_log.data, expected_A_log, rtol=0, atol=0)
    assert torch.equal(layer.D.data, torch.ones(320))
    assert layer.A_log._no_weight_decay and layer.D._no_weight_decay
    dt = F.softplus(layer.dt_proj.bias.detach().double())
    assert dt.min() >= 1e-4 * (1 - 1e-6) and dt.max() <= 1e-1 * (1 + 1e-6)
    log_dt = dt.log()  # log-uniform on [log 1e-3, log 1e-1]: mean in the middle, both ends reached
    assert abs(log_dt.mean().item() - (math.log(1e-3) + math.log(1e-1)) / 2) < 0.4
    assert log_dt.min() < math.log(2e-3) and log_dt.max() > math.log(5e-2)
    bound = layer.dt_rank**-0.5
    w = layer.dt_proj.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert layer.conv1d.weight.shape == (320, 1, 4)


def test_dt_floor_applies() -> None:
    layer = Mamba(d_model=32, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4)
    torch.testing.assert_close(F.softplus(layer.dt_proj.bias.detach()), torch.full((64,), 1e-4), rtol=1e-4, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_keys_are_public_api(mode: str | None) -> None:
    keys = set(Mamba(d_model=8, bidirectional=mode).state_dict())
    causal = {"A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
              "dt_proj.bias", "out_proj.weight"}
    assert keys == (causal | set(REVERSE_PARAMS) if mode == "add" else causal)


def test_tied_has_causal_parameter_count() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())
    causal, add, tied = (Mamba(d_model=16, bidirectional=m) for m in MODES)
    assert count(tied) == count(causal) < count(add)


def test_factory_kwargs() -> None:
    layer = Mamba(d_model=8, device="cpu", dtype=torch.float64)
    assert all(p.device.type == "cpu" for p in layer.parameters())
    assert layer.in_proj.weight.dtype == torch.float64 and layer.conv1d.weight.dtype == torch.float64
    assert layer.A_log.dtype == torch.float32  # kept fp32 as in mamba_ssm
    out = layer(torch.randn(2, 5, 8, dtype=torch.float64))
    assert out.dtype == torch.float64


# ---- agreement with an independent implementation ----


@pytest.mark.parametrize("mode", MODES)
def test_matches_mambapy(mode: str | None) -> None:
    pytest.importorskip("mambapy")  # an independent pure-PyTorch Mamba; skipped where not installed
    torch.manual_seed(1)
    layer = randomize_(Mamba(d_model=12, d_state=4, dt_rank=3, bidirectional=mode), seed=1)
    x = torch.randn(2, 11, 12)
    torch.testing.assert_close(layer(x), mambapy_twin(layer)(x), rtol=1e-4, atol=1e-5)


def test_step_matches_mambapy_step() -> None:
    pytest.importorskip("mambapy")
    torch.manual_seed(2)
    layer = randomize_(Mamba(d_model=8, d_state=4), seed=2)
    twin = mambapy_twin(layer)
    cache = layer.allocate_inference_cache(3)
    ref_cache = (None, torch.zeros(3, layer.d_inner, layer.d_conv - 1))
    for _ in range(5):
        x_t = torch.randn(3, 8)
        ref, ref_cache = twin.step(x_t, ref_cache)
        torch.testing.assert_close(layer.step(x_t, cache), ref, rtol=1e-4, atol=1e-5)


# ---- directions ----


def test_causal_layer_is_causal() -> None:
    torch.manual_seed(3)
    layer = randomize_(Mamba(d_model=8, d_state=4), seed=3)
    x = torch.randn(2, 12, 8)
    for t in (0, 5, 11):
        x2 = x.clone()
        x2[:, t] += torch.randn(2, 8)
        y, y2 = layer(x), layer(x2)
        torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=0, atol=0)
        assert (y2[:, t] - y[:, t]).abs().max() > 1e-4


@pytest.mark.parametrize("mode", ["add", "tied"])
def test_bidirectional_sees_the_future(mode: str) -> None:
    torch.manual_seed(4)
    layer = randomize_(Mamba(d_model=8, d_state=4, bidirectional=mode), seed=4)
    x = torch.randn(2, 12, 8)
    x2 = x.clone()
    x2[:, -1] += torch.randn(2, 8)
    assert (layer(x2)[:, 0] - layer(x)[:, 0]).abs().max() > 1e-5


def test_every_reverse_parameter_gets_a_gradient() -> None:
    torch.manual_seed(5)
    layer = randomize_(Mamba(d_model=8, d_state=4, bidirectional="add"), seed=5)
    x = torch.randn(2, 10, 8)
    layer(x)[:, :3].square().sum().backward()  # early outputs: only the reverse half carries later inputs there
    params = dict(layer.named_parameters())
    for name in REVERSE_PARAMS:
        assert params[name].grad is not None and params[name].grad.abs().max() > 0, name


def test_add_reverse_half_matters() -> None:
    torch.manual_seed(6)
    layer = randomize_(Mamba(d_model=8, d_state=4, bidirectional="add"), seed=6)
    x = torch.randn(2, 10, 8)
    y = layer(x)
    with torch.no_grad():
        layer.x_proj_b.weight.mul_(1.5)
    assert (layer(x) - y).abs().max() > 1e-4


# ---- masks ----


def pad_batch(seqs: list[torch.Tensor], length: int, left: bool, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Stack (l_i, d) sequences into (B, length, d) with large random garbage in the padding, and the bool mask."""
    d = seqs[0].shape[-1]
    x = 50 * torch.randn(len(seqs), length, d, generator=gen)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for i, s in enumerate(seqs):
        span = slice(length - len(s), length) if left else slice(0, len(s))
        x[i, span] = s
        mask[i, span] = True
    return x, mask


@pytest.mark.parametrize("left", [False, True], ids=["right_padded", "left_padded"])
@pytest.mark.parametrize("mode", MODES)
def test_padding_leaves_real_outputs_unchanged(mode: str | None, left: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    layer = randomize_(Mamba(d_model=8, d_state=4, bidirectional=mode), seed=7)
    seqs = [torch.randn(n, 8, generator=gen) for n in (9, 5, 1)]
    x, mask = pad_batch(seqs, 12, left, gen)
    out = layer(x, mask)
    for i, s in enumerate(seqs):
        alone = layer(s[None])[0]
        torch.testing.assert_close(out[i][mask[i]], alone, rtol=1e-5, atol=1e-6)
    assert torch.all(out[~mask] == 0)


def test_all_true_mask_is_no_mask() -> None:
    layer = randomize_(Mamba(d_model=8, d_state=4, bidirectional="add"))
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(layer(x, torch.ones(2, 6, dtype=torch.bool)), layer(x), rtol=0, atol=0)


# ---- prefill and step ----


def test_step_equals_forward() -> None:
    torch.manual_seed(8)
    layer = randomize_(Mamba(d_model=8, d_state=4), seed=8)
    x = torch.randn(2, 9, 8)
    cache = layer.allocate_inference_cache(2)
    steps = torch.stack([layer.step(x[:, t], cache) for t in range(9)], dim=1)
    torch.testing.assert_close(steps, layer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("left", [False, True], ids=["right_padded", "left_padded"])
def test_prefill_then_step_equals_forward(left: bool) -> None:
    """Prompts of different lengths in one padded batch: each continues from its own last real token."""
    gen = torch.Generator().manual_seed(9)
    layer = randomize_(Mamba(d_model=8, d_state=4), seed=9)
    full = [torch.randn(n + 4, 8, generator=gen) for n in (7, 2, 5)]  # prompt lengths 7, 2, 5; then 4 steps
    prompts, mask = pad_batch([s[:-4] for s in full], 8, left, gen)
    cache = layer.allocate_inference_cache(3)
    layer(prompts, mask, cache=cache)
    steps = torch.stack([layer.step(torch.stack([s[-4 + k] for s in full]), cache) for k in range(4)], dim=1)
    for i, s in enumerate(full):
        torch.testing.assert_close(steps[i], layer(s[None])[0, -4:], rtol=1e-5, atol=1e-6)


def test_prefill_overwrites_old_cache_and_keeps_no_graph() -> None:
    layer = randomize_(Mamba(d_model=8, d_state=4))
    x = torch.randn(2, 6, 8)
    cache = layer.allocate_inference_cache(2)
    cache.ssm_state.fill_(3.0)
    cache.conv_state.fill_(3.0)
    layer(x, cache=cache)
    fresh = layer.allocate_inference_cache(2)
    layer(x, cache=fresh)
    assert torch.equal(cache.ssm_state, fresh.ssm_state) and torch.equal(cache.conv_state, fresh.conv_state)
    assert not cache.ssm_state.requires_grad and not cache.conv_state.requires_grad


def test_cache_layout() -> None:
    layer = Mamba(d_model=8, d_state=4, dtype=torch.float64)
    cache = layer.allocate_inference_cache(3)
    assert isinstance(cache, MambaCache)
    assert cache.conv_state.shape == (3, 16, 4) and cache.conv_state.dtype == torch.float64
    assert cache.ssm_state.shape == (3, 16, 4) and cache.ssm_state.dtype == torch.float32


@pytest.mark.parametrize("mode", ["add", "tied"])
def test_bidirectional_layer_refuses_to_decode(mode: str) -> None:
    layer = Mamba(d_model=8, bidirectional=mode)
    causal_cache = Mamba(d_model=8).allocate_inference_cache(1)
    with pytest.raises(RuntimeError, match="bidirectional"):
        layer.step(torch.randn(1, 8), causal_cache)
    with pytest.raises(RuntimeError, match="bidirectional"):
        layer.allocate_inference_cache(1)
    with pytest.raises(RuntimeError, match="bidirectional"):
        layer(torch.randn(1, 4, 8), cache=causal_cache)


# ---- precision ----


@pytest.mark.parametrize("mode", MODES)
def test_bf16_autocast_on_cpu(mode: str | None) -> None:
    torch.manual_seed(10)
    layer = Mamba(d_model=16, d_state=4, bidirectional=mode)
    x = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), layer(x, mask), rtol=0.1, atol=0.02)
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


# ---- input checks ----


@pytest.mark.parametrize(
    ("x", "mask", "error", "words"),
    [
        (torch.randn(5, 8), None, ValueError, ["x", "(5, 8)", "d_model=8"]),
        (torch.randn(2, 5, 7), None, ValueError, ["x", "(2, 5, 7)", "d_model=8"]),
        (torch.randint(0, 4, (2, 5, 8)), None, TypeError, ["x", "torch.int64", "floating"]),
        ([[0.0] * 8], None, TypeError, ["x", "list"]),
        (torch.randn(2, 5, 8), torch.ones(2, 4, dtype=torch.bool), ValueError, ["mask", "(2, 4)", "(2, 5)"]),
        (torch.randn(2, 5, 8), torch.ones(2, 5), TypeError, ["mask", "torch.float32", "bool"]),
    ],
)
def test_bad_input_raises_naming_the_argument(x: object, mask: object, error: type, words: list[str]) -> None:
    layer = Mamba(d_model=8)
    with pytest.raises(error) as info:
        layer(x, mask)
    for word in words:
        assert word in str(info.value)


def test_bad_step_input_raises() -> None:
    layer = Mamba(d_model=8)
    cache = layer.allocate_inference_cache(2)
    with pytest.raises(ValueError, match=r"x_t.*\(batch=2, d_model=8\).*\(3, 8\)"):
        layer.step(torch.randn(3, 8), cache)
    with pytest.raises(TypeError, match="cache"):
        layer.step(torch.randn(2, 8), (cache.conv_state, cache.ssm_state))
    with pytest.raises(ValueError, match="batch"):
        layer(torch.randn(3, 4, 8), cache=cache)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="bidirectional"):
        Mamba(d_model=8, bidirectional="both")
    with pytest.raises(ValueError, match="d_model"):
        Mamba(d_model=0)
