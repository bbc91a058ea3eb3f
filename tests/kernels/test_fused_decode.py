"""The one-kernel decoding step (seqbackbone.kernels.decode) against the layer-by-layer PyTorch step.

On the CPU the kernel runs through the Triton interpreter with one program (its grid barriers are then trivial); the
work is planned for several programs so that every phase loops over many small items and crosses block boundaries.
Tiny fp32 LMs with non-power-of-two sizes, fresh random weights and random non-zero states, NaN-poisoned outputs.
Batches above 1 run fused only when forced (SEQBACKBONE_FUSED_DECODE=1), so the tests that use them set it.
"""

from __future__ import annotations

import pytest
import torch
from seqbackbone.kernels import decode
from seqbackbone.kernels.decode import FusedDecodeStep, fused_decode_supported, fused_decode_unsupported_reason

import seqbackbone
from seqbackbone import generation
from seqbackbone.generation import StepDecoder, _decoder_for, generate

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def triton_path(monkeypatch):
    """Triton kernels (interpreted on the CPU), SEQBACKBONE_FUSED_DECODE unset (automatic: fused at batch 1 only)."""
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "triton")
    monkeypatch.delenv("SEQBACKBONE_FUSED_DECODE", raising=False)


@pytest.fixture
def forced(triton_path, monkeypatch):
    """The fused step forced for batches up to 8."""
    monkeypatch.setenv("SEQBACKBONE_FUSED_DECODE", "1")


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


def _poison(step: FusedDecodeStep) -> None:
    """NaN in the logits and every scratch buffer, so that whatever the kernel does not write shows (FLAGGED's
    tagged words: -1, a tag no layer writes, so that reading one that was not written never ends)."""
    for buf in step.scratch():
        buf.fill_(float("nan") if buf.is_floating_point() else -1)


def _random_caches(model: torch.nn.Module, batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    a, b = (model.backbone.allocate_inference_cache(batch) for _ in range(2))
    for la, lb in zip(a.layers, b.layers, strict=True):
        for ta, tb in ((la.conv_state, lb.conv_state), (la.ssm_state, lb.ssm_state)):
            ta.copy_(torch.randn(ta.shape, generator=gen))
            tb.copy_(ta)
    return a, b


def _step_and_compare(step: FusedDecodeStep, model, token, fused_cache, ref_cache, gen, monkeypatch) -> None:
    """One fused step on poisoned scratch and random tokens, against the reference step on its own cache: logits and
    every layer's conv and SSM state."""
    _poison(step)
    token.copy_(torch.randint(0, model.vocab_size, token.shape, generator=gen))
    got = step()
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")
    with torch.no_grad():
        want = _reference_step(model, token, ref_cache)
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "triton")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    for f, r in zip(fused_cache.layers, ref_cache.layers, strict=True):
        torch.testing.assert_close(f.conv_state, r.conv_state, atol=2e-5, rtol=2e-5)  # in_proj sums
        torch.testing.assert_close(f.ssm_state, r.ssm_state, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize(
    ("batch", "kw", "programs", "merge"),
    [(1, {"d_model": 32, "n_layer": 2, "d_state": 5}, 6, False), (3, {"d_model": 24, "n_layer": 3, "d_state": 16}, 4,
                                                                  False),
     (2, {"d_model": 24, "n_layer": 2, "d_state": 3}, 5, True)],
)
def test_fused_steps_match_reference(forced, monkeypatch, batch, kw, programs, merge):
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
        _step_and_compare(step, model, token, fused_cache, ref_cache, gen, monkeypatch)
    # four grid barriers per layer (three in layer 0, which starts from the embedding, and one before the head);
    # merged, one fewer per layer
    assert step._barrier.item() == 5 * (3 if merge else 4) * kw["n_layer"] * step.grid  # an arrival per program


def test_breakdown_flags_skip_what_they_name(forced, monkeypatch):
    """decode.TUNE's timing flags, one program: NO_WAIT drops every barrier (one program needs none: same results);
    each SKIP_* leaves its phase's outputs unwritten while the other phases run and every barrier is still met."""
    model = _lm("mamba_dna_lm_tiny", seed=11, d_model=16, n_layer=2, d_state=3)
    batch, n_layer = 2, 2
    token = torch.randint(0, model.vocab_size, (batch,), generator=torch.Generator().manual_seed(11)).to(DEV)
    start, _ = _random_caches(model, batch, seed=11)

    def run(**flags: int):
        monkeypatch.setattr(decode, "TUNE", dict(flags))
        cache, _ = _random_caches(model, batch, seed=11)  # the same start every time
        step = FusedDecodeStep(model, token, [c.conv_state for c in cache.layers],
                               [c.ssm_state for c in cache.layers], programs=3)
        _poison(step)
        step()
        return step, cache

    full, full_cache = run()
    assert full._barrier.item() == 4 * n_layer * full.grid and torch.isfinite(full.logits).all()
    nowait, nowait_cache = run(NO_WAIT=1)
    assert nowait._barrier.item() == 0
    torch.testing.assert_close(nowait.logits, full.logits, atol=0, rtol=0)
    for a, b in zip(nowait_cache.layers, full_cache.layers, strict=True):
        assert torch.equal(a.ssm_state, b.ssm_state) and torch.equal(a.conv_state, b.conv_state)

    unwritten = {"SKIP_P1": "_xz", "SKIP_P2": "_xc", "SKIP_P3": "_y", "SKIP_P4": "_resid", "SKIP_HEAD": "logits"}
    for flag, buf in unwritten.items():
        step, cache = run(**{flag: 1})
        assert step._barrier.item() == 4 * n_layer * step.grid, flag
        assert torch.isnan(getattr(step, buf)).all(), flag
        others = [name for name in unwritten.values() if name != buf and name != "logits"]
        if flag == "SKIP_HEAD":  # everything before the head ran as in the full step
            for name in others:
                assert torch.equal(getattr(step, name), getattr(full, name)), name
        for layer, s0, f in zip(cache.layers, start.layers, full_cache.layers, strict=True):
            if flag == "SKIP_P2":  # conv windows not rolled
                assert torch.equal(layer.conv_state, s0.conv_state)
            if flag == "SKIP_P3":  # SSM states not advanced
                assert torch.equal(layer.ssm_state, s0.ssm_state)
            if flag == "SKIP_HEAD":
                assert torch.equal(layer.ssm_state, f.ssm_state) and torch.equal(layer.conv_state, f.conv_state)

    # merged in_proj + conv phase: SKIP_P2 drops the merged phase (z and the windows), SKIP_P1 has nothing to drop
    step, cache = run(MERGE_IN_CONV=1, SKIP_P2=1)
    assert step._barrier.item() == 3 * n_layer * step.grid and torch.isnan(step._xz).all()
    assert all(torch.equal(c.conv_state, s.conv_state) for c, s in zip(cache.layers, start.layers, strict=True))
    with pytest.raises(ValueError, match="SKIP_P1"):
        run(MERGE_IN_CONV=1, SKIP_P1=1)


# relative to DEFAULT_TUNE (BATCH_TILE, ONE_ITEM, ARRIVE_FIRST, EARLY_LOADS, JOINT_READS; MERGE_IN_CONV at batch 1
# only), whose switches give way to a setting they cannot join (decode.resolved_tune)
VARIANTS = [{"BARRIER": 1}, {"ONE_ITEM": 0}, {"BATCH_TILE": 0, "ARRIVE_FIRST": 0, "ONE_ITEM": 0},
            {"BARRIER": 1, "ONE_ITEM": 0, "EARLY_LOADS": 0}, {"MERGE_IN_CONV": 1, "ONE_ITEM": 1, "BATCH_TILE": 1},
            {"BARRIER": 1, "LOCAL_P2": 1}, {"BARRIER": 1, "LOCAL_P2": 1, "ONE_ITEM": 0, "BATCH_TILE": 0},
            {"ARRIVE_FIRST": 0}, {"BATCH_TILE": 0}, {"EARLY_LOADS": 0}, {"EARLY_LOADS": 1, "MERGE_IN_CONV": 1},
            {"ONE_ITEM": 0, "ARRIVE_FIRST": 0, "EARLY_LOADS": 0}, {"PREFETCH": 2}, {"FLAGGED": 1},
            {"FLAGGED": 1, "ONE_ITEM": 0, "EARLY_LOADS": 0}, {"JOINT_READS": 0},
            {"JOINT_READS": 0, "ONE_ITEM": 0, "EARLY_LOADS": 0}, {"CH_CONV": 8}, {"L2_TILES": 1},
            {"L2_TILES": 1, "ONE_ITEM": 0}, {"MERGE_IN_CONV": 1, "ARRIVE_FIRST": 0}]


# a FLAGGED reader waiting for a tag nobody writes spins for ever: fail instead of hanging the suite
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("variant", "batch", "programs"),
    [(VARIANTS[0], 2, 1), *((v, 3, 5) for v in VARIANTS[1:]), (VARIANTS[3], 1, 1)],
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else str(v),
)
def test_variants_match_reference_and_default(forced, monkeypatch, variant, batch, programs):
    """decode.TUNE's variants against the layer-by-layer step and the default kernel, over two steps from random
    states. programs=5 plans items of sizes that are not powers of two under ONE_ITEM (in_proj 20 rows in a tile of
    32, ...) on one interpreted program; programs=1 is the whole grid of one."""
    model = _lm("mamba_dna_lm_tiny", seed=20 + batch, d_model=24, n_layer=2, d_state=6)
    n_layer = 2
    tokens = torch.randint(0, model.vocab_size, (2, batch), generator=torch.Generator().manual_seed(batch)).to(DEV)

    def run(tune: dict[str, int]):
        monkeypatch.setattr(decode, "TUNE", dict(tune))
        fused_cache, ref_cache = _random_caches(model, batch, seed=30 + batch)
        token = torch.zeros(batch, dtype=torch.long, device=DEV)
        step = FusedDecodeStep(model, token, [c.conv_state for c in fused_cache.layers],
                               [c.ssm_state for c in fused_cache.layers], programs=programs)
        logits = []
        for t in tokens:
            _poison(step)
            token.copy_(t)
            logits.append(step().clone())
        return step, logits, fused_cache, ref_cache

    step, got, cache, ref_cache = run(variant)
    c = step._constexprs
    if c["ONE_ITEM"] and programs > 1:
        assert (c["PER_IN"], c["ROWS_IN"]) == (20, 32) and (c["PER_SSM"], c["CH_SSM"]) == (10, 16)
        assert -(-2 * 48 // c["PER_IN"]) <= programs and -(-48 // c["PER_SSM"]) <= programs
    if c["BATCH_TILE"]:
        assert c["BLOCK_B"] == {1: 1, 2: 2, 3: 4}[batch]
    _, base, base_cache, _ = run({k: v for k, v in variant.items() if k == "MERGE_IN_CONV"})
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")
    with torch.no_grad():
        want = [_reference_step(model, t, ref_cache) for t in tokens]
    for g, b, w in zip(got, base, want, strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(g, b, atol=1e-5, rtol=1e-5)
    for f, b, r in zip(cache.layers, base_cache.layers, ref_cache.layers, strict=True):
        torch.testing.assert_close(f.conv_state, r.conv_state, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(f.ssm_state, r.ssm_state, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(f.ssm_state, b.ssm_state, atol=1e-5, rtol=1e-5)
    per_step = (3 if c["MERGE_IN_CONV"] or c["LOCAL_P2"] else 4) * n_layer
    if variant.get("BARRIER"):  # one flag per program, each the count of barriers met over every launch
        flags = step._barrier.tolist()
        assert flags[:step.grid] == [2 * per_step] * step.grid
        # then, under LOCAL_P2, each in_proj item's ready flag: the last layer's epoch + 1
        n_ready = -(-2 * 48 // c["PER_IN"]) if variant.get("LOCAL_P2") else 0
        assert flags[step.grid:] == [2 * per_step - 2] * n_ready
    elif c["FLAGGED"]:  # no barrier: the count of programs that ended a launch, two launches
        assert step._barrier.item() == 2 * step.grid
        words = torch.cat([buf.flatten() for buf in step.scratch()[1:]])
        assert (words >> 32).max() <= 2 * (n_layer + 1)  # the last launch's tags, no higher
    else:
        assert step._barrier.item() == 2 * per_step * step.grid


def test_variant_plans_at_the_benchmark_size():
    """The plans of the variants for the 90M LM (d_model 768: Di 1536, N 16, R 48, V 256) on 132 SMs."""
    args = (768, 1536, 16, 48, 4, 256)
    several = {"ONE_ITEM": 0, "ARRIVE_FIRST": 0, "EARLY_LOADS": 0}  # several items a program
    rows = decode.plan_constexprs(*args, 8, 132, {**several, "BATCH_TILE": 0})  # a loop over the batch rows
    assert (rows["ROWS_IN"], rows["CH_CONV"], rows["CH_SSM"], rows["ROWS_OUT"], rows["ROWS_HEAD"]) == (8, 64, 16, 4, 2)
    assert not rows["ONE_ITEM"] and not rows["BATCH_TILE"] and rows["BARRIER"] == 0 and rows["BLOCK_B"] == 1
    # the batch rows as one tile, so the conv phase's items shrink to keep x_proj's product in a tile
    tile = decode.plan_constexprs(*args, 8, 132, several)
    assert (tile["ROWS_IN"], tile["CH_CONV"], tile["CH_SSM"], tile["ROWS_OUT"], tile["ROWS_HEAD"]) == (8, 16, 16, 4, 2)
    assert tile["BATCH_TILE"] and tile["BLOCK_B"] == 8 and tile["BARRIER"] == 0
    # the default: one item a program, the arrival before the weight loads, the states loaded with the weights
    base = decode.plan_constexprs(*args, 1, 132, {})
    assert base["ONE_ITEM"] and base["ARRIVE_FIRST"] and base["EARLY_LOADS"] and base["BATCH_TILE"]
    assert base["BLOCK_B"] == 1 and base["BARRIER"] == 0
    # in_proj merged into the conv phase at batch 1 only: one item of 12 channels a program (u and z rows: 2 x 12
    # of 768, the tile of in_proj's 24 rows), whose 128 partial x_proj sums the SSM phase reads in one tile
    assert base["MERGE_IN_CONV"] and (base["PER_CONV"], base["CH_CONV"], base["BLOCK_J"]) == (12, 16, 128)
    assert not decode.plan_constexprs(*args, 8, 132, {})["MERGE_IN_CONV"]
    assert decode.plan_constexprs(*args, 8, 132, {"MERGE_IN_CONV": 1})["MERGE_IN_CONV"]
    for other in ({"SKIP_P1": 1}, {"PREFETCH": 1}, {"FLAGGED": 1}, {"BARRIER": 1, "LOCAL_P2": 1}):
        assert not decode.plan_constexprs(*args, 1, 132, other)["MERGE_IN_CONV"], other
    assert decode.plan_constexprs(*args, 1, 132, {"TRACE": 1})["MERGE_IN_CONV"]  # the trace times it as it runs
    # by default only in the plan it was measured with, one conv item a program: not with ONE_ITEM off, nor at
    # d_model 2048 (32 channels of u and z rows of 2048: past _ONE_ITEM_TILE), unless asked for
    assert not decode.plan_constexprs(*args, 1, 132, {"ONE_ITEM": 0})["MERGE_IN_CONV"]
    wide = (2048, 4096, 16, 128, 4, 256)
    assert not decode.plan_constexprs(*wide, 1, 132, {})["MERGE_IN_CONV"]
    assert decode.plan_constexprs(*wide, 1, 132, {"MERGE_IN_CONV": 1})["MERGE_IN_CONV"]
    # an explicit setting that a default switch cannot join turns that switch off instead of failing
    assert not decode.plan_constexprs(*args, 1, 132, {"BARRIER": 1})["ARRIVE_FIRST"]
    assert decode.plan_constexprs(*args, 1, 132, {"TRACE": 1})["ARRIVE_FIRST"]  # the trace times either barrier
    assert not decode.plan_constexprs(*args, 1, 132, {"BATCH_TILE": 0})["EARLY_LOADS"]
    assert decode.plan_constexprs(*args, 1, 132, {"BATCH_TILE": 0})["ARRIVE_FIRST"]
    one = decode.plan_constexprs(*args, 1, 132, {"ONE_ITEM": 1, "MERGE_IN_CONV": 0})  # the four-phase layer
    # one item a program: in_proj 24 rows (tile 32), SSM 12 channels (16), out_proj 6 rows (8), head 2 rows
    assert [(one[f"PER_{k}"], one[b]) for k, b in (("IN", "ROWS_IN"), ("SSM", "CH_SSM"), ("OUT", "ROWS_OUT"),
                                                    ("HEAD", "ROWS_HEAD"))] == [(24, 32), (12, 16), (6, 8), (2, 2)]
    # the conv phase: about one item a program too (16 channels, 96 items), whose partial x_proj sums the SSM phase
    # reads in one tile (JOINT_READS); without JOINT_READS a few items (64 channels), summed 32 at a time
    assert (one["PER_CONV"], one["CH_CONV"], one["BLOCK_J"]) == (16, 16, 128)
    apart = decode.plan_constexprs(*args, 1, 132, {"JOINT_READS": 0, "MERGE_IN_CONV": 0})
    assert (apart["PER_CONV"], apart["CH_CONV"], apart["BLOCK_J"]) == (64, 64, 32)
    assert base["JOINT_READS"] and not decode.plan_constexprs(*args, 1, 132, {"FLAGGED": 1})["JOINT_READS"]
    assert not decode.plan_constexprs(*args, 1, 132, {"BATCH_TILE": 0})["JOINT_READS"]
    for bad in ({"BATCH_TILE": 0}, {"FLAGGED": 1}):
        with pytest.raises(ValueError, match="JOINT_READS"):
            decode.plan_constexprs(*args, 1, 132, {"JOINT_READS": 1, **bad})
    # a batch tile of 8 caps the rows of a projection item at 8 (64 fp32 sums a thread): in_proj keeps its plan
    tiled = decode.plan_constexprs(*args, 8, 132, {"ONE_ITEM": 1, "BATCH_TILE": 1})
    assert tiled["BLOCK_B"] == 8 and (tiled["PER_IN"], tiled["ROWS_IN"]) == (8, 8)
    assert (tiled["PER_OUT"], tiled["ROWS_OUT"]) == (6, 8) and tiled["CH_CONV"] == 16
    assert tiled["BLOCK_J"] == 32  # 32 items x 8 rows x 64 (dt_rank 48) sums: _TILE
    # an explicit tile size wins over ONE_ITEM's plan
    assert decode.plan_constexprs(*args, 1, 132, {"ONE_ITEM": 1, "ROWS_IN": 16})["PER_IN"] == 16
    with pytest.raises(ValueError, match="BARRIER"):
        decode.plan_constexprs(*args, 1, 132, {"BARRIER": 2})
    # a conv item's channels span at most 2 in_proj items of 24 rows (16 channels; 4 for the 64 without JOINT_READS)
    assert decode.plan_constexprs(*args, 1, 132, {"BARRIER": 1, "LOCAL_P2": 1, "ONE_ITEM": 1})["BLOCK_Q"] == 2
    assert decode.plan_constexprs(*args, 1, 132, {"BARRIER": 1, "LOCAL_P2": 1, "JOINT_READS": 0})["BLOCK_Q"] == 4
    with pytest.raises(ValueError, match="LOCAL_P2"):
        decode.plan_constexprs(*args, 1, 132, {"LOCAL_P2": 1})
    with pytest.raises(ValueError, match="BARIER"):
        decode.plan_constexprs(*args, 1, 132, {"BARIER": 1})
    assert decode.plan_constexprs(*args, 1, 132, {"MERGE_IN_CONV": 1})["ARRIVE_FIRST"]
    for other in ({"BARRIER": 1}, {"LOCAL_P2": 1, "BARRIER": 1}):
        with pytest.raises(ValueError, match="ARRIVE_FIRST"):
            decode.plan_constexprs(*args, 1, 132, {"ARRIVE_FIRST": 1, **other})
    with pytest.raises(ValueError, match="EARLY_LOADS"):
        decode.plan_constexprs(*args, 1, 132, {"EARLY_LOADS": 1, "BATCH_TILE": 0})
    assert decode.plan_constexprs(*args, 1, 132, {"PREFETCH": 2})["PREFETCH"] == 2
    flagged = decode.plan_constexprs(*args, 1, 132, {"FLAGGED": 1})  # ARRIVE_FIRST gives way; no barrier
    assert flagged["FLAGGED"] and not flagged["ARRIVE_FIRST"] and flagged["NO_WAIT"]
    assert decode.plan_constexprs(*args, 1, 132, {"FLAGGED": 1, "TRACE": 1})["TRACE"]  # its waits, timed
    for bad in ({"BATCH_TILE": 0}, {"MERGE_IN_CONV": 1}, {"ARRIVE_FIRST": 1}, {"SKIP_P3": 1}, {"BARRIER": 1}):
        with pytest.raises(ValueError, match="FLAGGED"):
            decode.plan_constexprs(*args, 1, 132, {"FLAGGED": 1, **bad})
    for bad in ({"PREFETCH": 5}, {"PREFETCH": True}, {"PREFETCH": 1, "MERGE_IN_CONV": 1}):
        with pytest.raises(ValueError, match="PREFETCH"):
            decode.plan_constexprs(*args, 1, 132, bad)


@pytest.mark.parametrize(("batch", "programs", "copies", "arrive_first", "more"),
                         [(1, 1, 8, 0, {}), (3, 5, 2, 0, {}), (2, 7, 1, 0, {}), (3, 5, 4, 1, {}),
                          (3, 7, 4, 1, {"FIXED": 1}), (2, 1, 2, 1, {"FIXED": 1, "PER_C": 48}),
                          (1, 1, 1, 0, {"PER_C": 48}), (1, 1, 2, 1, {"PER_C": 48}),
                          (1, 1, 2, 1, {"FIXED": 1, "PER_C": 48, "SUMS_1D": 0}),
                          (1, 1, 2, 1, {"FIXED": 1, "PER_C": 48}), (1, 1, 2, 1, {"PER_C": 48, "SUMS_1D": 0}),
                          (1, 1, 2, 1, {"PER_C": 48, "GATE_EARLY": 0}), (1, 1, 2, 1, {"PER_C": 48, "SKIP_ATOMICS": 12}),
                          (1, 1, 2, 1, {"PER_C": 48, "WARP_SUMS": 0}), (1, 1, 2, 1, {"FIXED": 1, "PER_C": 48,
                                                                                    "WARP_SUMS": 0}),
                          (1, 1, 2, 1, {"PER_C": 48, "ROLES": 1})])
def test_split_kernel_matches_reference(forced, monkeypatch, batch, programs, copies, arrive_first, more):
    """SPLIT=1 (kernels/decode_split_triton.py) against the layer-by-layer step over three steps from random states:
    programs=5 or 7 plans channel blocks of 10 or 7 (tiles of 16 and 8) that one interpreted program loops over, each
    adding into its copy of the accumulators; PER_C=48 makes one block, which the one program keeps in registers
    (ONE_PASS), at batch 1 in the warp layout (WARP_CH: 8 channels a warp of the 64-lane block) unless WARP_SUMS=0,
    there with the sums read once a program (SUMS_1D) unless SUMS_1D=0 and the gate rows loaded in phase A
    (GATE_EARLY) unless GATE_EARLY=0; the timing flag SKIP_ATOMICS=12 (arrivals without their fence) changes
    nothing for one program, and ROLES (roles by SM) is left off where the kernel is not compiled for a GPU.
    Between launches every accumulator is zero but the last layer's out_proj sums (zeroed at the start of
    the next launch); FIXED (int64 fixed-point sums) changes neither."""
    monkeypatch.setattr(decode, "TUNE", {"SPLIT": 1, "COPIES": copies, "ARRIVE_FIRST": arrive_first, **more})
    n_layer = 3
    model = _lm("mamba_dna_lm_tiny", seed=40 + batch, d_model=24, n_layer=n_layer, d_state=6)
    fused_cache, ref_cache = _random_caches(model, batch, seed=50 + batch)
    token = torch.zeros(batch, dtype=torch.long, device=DEV)
    step = FusedDecodeStep(model, token, [c.conv_state for c in fused_cache.layers],
                           [c.ssm_state for c in fused_cache.layers], programs=programs)
    c = step._constexprs
    per = more.get("PER_C", min(-(-48 // programs), 32))  # at most _SPLIT_MAX_C channels an item
    assert step.split and (c["PER_C"], c["BLOCK_C"], c["COPIES"]) == (per, max(2, 1 << (per - 1).bit_length()), copies)
    assert c["ONE_PASS"] == (per == 48) and c["FIXED"] == bool(more.get("FIXED"))
    assert c["WARP_CH"] == (8 if per == 48 and batch == 1 and more.get("WARP_SUMS", 1) else 0)
    assert c["SUMS_1D"] == bool(c["WARP_CH"] and more.get("SUMS_1D", 1))
    assert c["GATE_EARLY"] == bool(c["WARP_CH"] and more.get("GATE_EARLY", 1))  # 8 x 32 elements a warp
    assert tuple(step._oacc.shape) == (n_layer, copies, batch, 24)
    assert step._oacc.dtype == (torch.int64 if more.get("FIXED") else torch.float32)
    gen = torch.Generator().manual_seed(batch)
    for i in range(3):
        _step_and_compare(step, model, token, fused_cache, ref_cache, gen, monkeypatch)
        assert not step._xacc.any() and not step._oacc[:-1].any() and step._oacc[-1].any()
        assert step._barrier.item() == (i + 1) * 2 * n_layer * step.grid  # two barriers a layer
    assert not c["ROLES"] and step.tune.get("ROLES", 0) == 0


@pytest.mark.parametrize("sums_1d", [0, 1])
def test_split_kernel_warp_layout_over_chunks(forced, monkeypatch, sums_1d):
    """The batch-1 warp layout with d_model 160: two chunks of 128 lanes, the second mostly masked, so the norm, the
    in_proj sums and the residual stream handed to the head cross a chunk border; d_inner 320 in one block of 512
    lanes (64 channels a warp), dt_rank 10; the residual stream in every warp or (SUMS_1D) once a program."""
    monkeypatch.setattr(decode, "TUNE", {"SPLIT": 1, "ARRIVE_FIRST": 1, "PER_C": 320, "SUMS_1D": sums_1d})
    model = _lm("mamba_dna_lm_tiny", seed=46, d_model=160, n_layer=2, d_state=6)
    fused_cache, ref_cache = _random_caches(model, 1, seed=56)
    token = torch.zeros(1, dtype=torch.long, device=DEV)
    step = FusedDecodeStep(model, token, [c.conv_state for c in fused_cache.layers],
                           [c.ssm_state for c in fused_cache.layers], programs=1)
    c = step._constexprs
    assert (c["WARP_CH"], c["KCH"], c["BLOCK_DM"], c["VW"], c["BLOCK_C"]) == (64, 128, 256, 128, 512)
    assert c["SUMS_1D"] == bool(sums_1d)
    gen = torch.Generator().manual_seed(9)
    for _ in range(2):
        _step_and_compare(step, model, token, fused_cache, ref_cache, gen, monkeypatch)


@pytest.mark.parametrize("copies", [1, 4])
def test_tally_sums_match_reference(forced, monkeypatch, copies):
    """TALLY: x_proj's sums as fp64 words that count their contributions, read by phase B without a barrier (one
    barrier a layer): the same logits and states as the layer-by-layer step over three steps, every word zero again
    after each launch (a copy nobody adds to is whole at zero contributions)."""
    monkeypatch.setattr(decode, "TUNE", {"SPLIT": 1, "ARRIVE_FIRST": 1, "PER_C": 48, "TALLY": copies})
    n_layer = 3
    model = _lm("mamba_dna_lm_tiny", seed=41, d_model=24, n_layer=n_layer, d_state=6)
    fused_cache, ref_cache = _random_caches(model, 1, seed=51)
    token = torch.zeros(1, dtype=torch.long, device=DEV)
    step = FusedDecodeStep(model, token, [c.conv_state for c in fused_cache.layers],
                           [c.ssm_state for c in fused_cache.layers], programs=1)
    assert step._constexprs["TALLY"] == copies and step._xacc.dtype == torch.float64
    assert tuple(step._xacc.shape) == (n_layer, copies, 1, 2 + 2 * 6)
    gen = torch.Generator().manual_seed(1)
    for i in range(3):
        _step_and_compare(step, model, token, fused_cache, ref_cache, gen, monkeypatch)
        assert not step._xacc.any()
        assert step._barrier.item() == (i + 1) * n_layer * step.grid  # one barrier a layer


def _lm_with_bad_weight(seed: int, proj: str, where: tuple[int, int], scale: float | None) -> torch.nn.Module:
    """A tiny DNA LM whose first layer's `proj` weight (out_proj or x_proj) has a NaN at `where`, or, given `scale`,
    is scaled by it."""
    model = _lm("mamba_dna_lm_tiny", seed=seed, d_model=24, n_layer=2, d_state=6)
    with torch.no_grad():
        weight = getattr(model.backbone.layers[0].mixer, proj).weight
        if scale is None:
            weight[where] = float("nan")
        else:
            weight.mul_(scale)
    return model


@pytest.mark.parametrize(("batch", "per_c"), [(1, 48), (2, 16)])
def test_fixed_sums_show_bad_values_as_nan(forced, monkeypatch, batch, per_c):
    """FIXED's int64 sums cannot hold a NaN, an infinity or a value past their range: such a contribution poisons its
    sum, which reads as NaN. A NaN weight gives NaN logits, as in the reference; out_proj weights scaled so that its
    partial sums reach 2^20 give NaN logits too, where the reference's are finite. At batch 1 in the warp layout, at
    batch 2 in the general tiles."""
    monkeypatch.setattr(decode, "TUNE", {"SPLIT": 1, "FIXED": 1, "ARRIVE_FIRST": 1, "PER_C": per_c})
    for how in ("nan", "huge"):
        model = _lm_with_bad_weight(49, "out_proj", (3, 5), 2.0 ** 24 if how == "huge" else None)
        cache, ref_cache = _random_caches(model, batch, seed=59)
        token = torch.ones(batch, dtype=torch.long, device=DEV)
        step = FusedDecodeStep(model, token, [c.conv_state for c in cache.layers],
                               [c.ssm_state for c in cache.layers], programs=1)
        assert step._constexprs["FIXED"] and bool(step._constexprs.get("WARP_CH")) == (batch == 1)
        got = step()
        monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")
        with torch.no_grad():
            want = _reference_step(model, token, ref_cache)
        monkeypatch.setenv("SEQBACKBONE_KERNELS", "triton")
        assert torch.isnan(got).all()
        assert torch.isnan(want).all() if how == "nan" else torch.isfinite(want).all()


@pytest.mark.parametrize("how", ["nan", "huge"])
def test_tally_sums_show_bad_values_as_nan(forced, monkeypatch, how):
    """TALLY's counting words hold a contribution that is not finite or reaches 2^17 (past which a partial sum could
    be misread as a count) as NaN: a NaN x_proj weight gives NaN logits, as in the reference, and weights scaled by 2^22
    give NaN logits too, never a finite wrong answer, nor a wait that never ends."""
    monkeypatch.setattr(decode, "TUNE", {"SPLIT": 1, "ARRIVE_FIRST": 1, "PER_C": 48, "TALLY": 2})
    model = _lm_with_bad_weight(48, "x_proj", (1, 5), 2.0 ** 22 if how == "huge" else None)
    cache, ref_cache = _random_caches(model, 1, seed=58)
    token = torch.ones(1, dtype=torch.long, device=DEV)
    step = FusedDecodeStep(model, token, [c.conv_state for c in cache.layers], [c.ssm_state for c in cache.layers],
                           programs=1)
    assert step._constexprs["TALLY"] == 2
    got = step()
    assert torch.isnan(got).all()
    if how == "nan":
        monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")
        with torch.no_grad():
            assert torch.isnan(_reference_step(model, token, ref_cache)).all()


def test_tma_sums_need_a_gpu_and_the_warp_layout(forced, monkeypatch):
    """TMA_SUMS (out_proj's sums as one TMA bulk reduction a program) needs TMA, which the interpreter lacks, and the
    batch-1 warp layout with SUMS_1D: both refused with the setting named."""
    model = _lm("mamba_dna_lm_tiny", seed=43, d_model=24, n_layer=2, d_state=6)
    cache, _ = _random_caches(model, 1, seed=53)
    token = torch.zeros(1, dtype=torch.long, device=DEV)
    monkeypatch.setattr(decode, "TUNE", {"SPLIT": 1, "ARRIVE_FIRST": 1, "PER_C": 48, "TMA_SUMS": 1})
    with pytest.raises(ValueError, match="TMA_SUMS needs a GPU with TMA"):
        FusedDecodeStep(model, token, [c.conv_state for c in cache.layers], [c.ssm_state for c in cache.layers],
                        programs=1)
    assert decode.plan_split_constexprs(768, 1536, 16, 48, 4, 256, 1, 132, {"SPLIT": 1, "TMA_SUMS": 1})["TMA_SUMS"]


@pytest.mark.parametrize("arrive_first", [0, 1])
def test_split_kernel_with_prefetchers(forced, monkeypatch, arrive_first):
    """PREFETCHERS=2: the last two programs only ask L2 for weights (nothing under the interpreter) and never meet
    the barriers; the working programs' results are unchanged, the counter counts only their arrivals, and each
    prefetcher counts the launches it served in its own word, which paces its waits in the next launch."""
    monkeypatch.setattr(decode, "TUNE", {"SPLIT": 1, "ARRIVE_FIRST": arrive_first, "PREFETCHERS": 2, "AHEAD": 1})
    n_layer, batch = 3, 2
    model = _lm("mamba_dna_lm_tiny", seed=44, d_model=24, n_layer=n_layer, d_state=6)
    fused_cache, ref_cache = _random_caches(model, batch, seed=54)
    token = torch.zeros(batch, dtype=torch.long, device=DEV)
    step = FusedDecodeStep(model, token, [c.conv_state for c in fused_cache.layers],
                           [c.ssm_state for c in fused_cache.layers], programs=5)
    c = step._constexprs
    assert (c["PREFETCHERS"], c["AHEAD"], c["PER_C"]) == (2, 1, 16)  # 48 channels over the 3 working programs
    working = step.grid - 2  # one under the interpreter
    gen = torch.Generator().manual_seed(7)
    for i in range(3):
        _step_and_compare(step, model, token, fused_cache, ref_cache, gen, monkeypatch)
        assert step._barrier.item() == (i + 1) * 2 * n_layer * working
        assert step._bar_words[16:].tolist() == [i + 1, i + 1]


@pytest.mark.parametrize("merge", [0, 1])
def test_fused_kernel_with_prefetchers(forced, monkeypatch, merge):
    """PREFETCHERS=2 in the default kernel (three or four counter barriers a layer): the same checks as the split
    kernel's above."""
    monkeypatch.setattr(decode, "TUNE", {"MERGE_IN_CONV": merge, "PREFETCHERS": 2, "AHEAD": 2})
    n_layer, batch = 3, 1
    model = _lm("mamba_dna_lm_tiny", seed=45, d_model=24, n_layer=n_layer, d_state=6)
    fused_cache, ref_cache = _random_caches(model, batch, seed=55)
    token = torch.zeros(batch, dtype=torch.long, device=DEV)
    step = FusedDecodeStep(model, token, [c.conv_state for c in fused_cache.layers],
                           [c.ssm_state for c in fused_cache.layers])
    assert (step._constexprs["PREFETCHERS"], step._constexprs["MERGE_IN_CONV"]) == (2, bool(merge))
    per_layer = 3 if merge else 4
    gen = torch.Generator().manual_seed(8)
    for i in range(3):
        _step_and_compare(step, model, token, fused_cache, ref_cache, gen, monkeypatch)
        assert step._barrier.item() == (i + 1) * per_layer * n_layer * (step.grid - 2)
        assert step._bar_words[16:].tolist() == [i + 1, i + 1]


def test_split_warp_layout_plan(monkeypatch):
    """The warp layout's plan at the 90M LM's sizes on 132 programs with 36 prefetchers: at batch 1, one pass and
    8 warps it holds 2 channels a warp of the 16-lane block, the sums read once a program (SUMS_1D) unless
    SUMS_1D=0, from COPIES copies of each accumulator (2 unless set), with both weights' columns in blocks (BLOCKS=3)
    and the spin poll (SPIN) unless set otherwise, x_proj's sums counting themselves (TALLY) where set and
    possible; off for batch 2, for more blocks than working programs, for
    WARP_SUMS=0, and on a GPU with a Triton other than 3.6, whose layouts it was checked with (the interpreter has
    no layouts)."""
    import triton

    args = (768, 1536, 16, 48, 4, 256)
    def plan(batch=1, working=96, **tune):
        tune = {"SPLIT": 1, "PREFETCHERS": 36, **tune}
        return decode.plan_split_passes(decode.plan_split_constexprs(*args, batch, 132, tune), 1536, working, tune)

    monkeypatch.setattr(decode, "interpreting", lambda: True)
    assert plan() == dict(ONE_PASS=True, WARP_CH=2, KCH=128, VW=128, SUMS_1D=True, COPIES=2, BLOCKS=3, SPIN=True,
                          GATE_EARLY=True, TALLY=0, TALLY_ROWS=128)
    # TALLY: its poll tile of one word a thread (64 rows of 4 copies), never fewer rows than dt_low's 48
    assert (plan(TALLY=4, ARRIVE_FIRST=1)["TALLY"], plan(TALLY=4, ARRIVE_FIRST=1)["TALLY_ROWS"]) == (4, 64)
    assert plan(TALLY=8, ARRIVE_FIRST=1)["TALLY_ROWS"] == 64 and plan(TALLY=2, ARRIVE_FIRST=1)["TALLY_ROWS"] == 128
    with pytest.raises(ValueError, match="TALLY is 0 or the copies"):
        plan(TALLY=3, ARRIVE_FIRST=1)
    for bad in ({"TALLY": 4}, {"TALLY": 4, "ARRIVE_FIRST": 1, "FIXED": 1}, {"TALLY": 1, "ARRIVE_FIRST": 1},
                {"TALLY": 4, "ARRIVE_FIRST": 1, "SUMS_1D": 0}, {"TALLY": 4, "ARRIVE_FIRST": 1, "TRACE": 1}):
        with pytest.raises(ValueError, match="TALLY .x_proj's sums read without a barrier"):
            plan(**bad)
    assert not plan(GATE_EARLY=0)["GATE_EARLY"] and not plan(num_warps=4)["GATE_EARLY"]  # 4 x 1024 elements a warp
    assert plan(BLOCKS=1)["BLOCKS"] == 1 and plan(BLOCKS=0)["BLOCKS"] == 0 and not plan(SPIN=0)["SPIN"]
    with pytest.raises(ValueError, match="BLOCKS is a bit mask"):
        plan(BLOCKS=4)
    assert plan(COPIES=4)["COPIES"] == 4 and plan(FIXED=1)["COPIES"] == 2 and plan(SUMS_1D=0)["COPIES"] == 2
    assert plan(num_warps=4)["WARP_CH"] == 4
    assert plan(batch=2)["WARP_CH"] == 0 and plan(batch=2)["ONE_PASS"]
    assert plan(working=95) == dict(ONE_PASS=False, WARP_CH=0, KCH=128, VW=128, SUMS_1D=False, COPIES=2, BLOCKS=0,
                                    SPIN=False, GATE_EARLY=False, TALLY=0, TALLY_ROWS=128)
    assert plan(batch=2, BLOCKS=3, SPIN=1)["BLOCKS"] == 0 and not plan(batch=2, SPIN=1)["SPIN"]
    assert plan(WARP_SUMS=0)["WARP_CH"] == 0
    assert plan(FIXED=1)["WARP_CH"] == 2 and plan(FIXED=1)["SUMS_1D"] and not plan(SUMS_1D=0)["SUMS_1D"]
    assert not plan(FIXED=1, SUMS_1D=0)["SUMS_1D"] and not plan(WARP_SUMS=0)["SUMS_1D"]
    monkeypatch.setattr(decode, "interpreting", lambda: False)
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    assert plan()["WARP_CH"] == 2
    for other in ("3.8.0", "3.5.1"):
        monkeypatch.setattr(triton, "__version__", other)
        assert plan()["WARP_CH"] == 0


def test_prefetcher_settings():
    """PREFETCHERS leaves at least one working program and both kernels plan their items over the working ones;
    AHEAD is a count of layers; the flag barriers refuse prefetchers."""
    args = (768, 1536, 16, 48, 4, 256)
    assert decode.plan_any(*args, 1, 132, {"SPLIT": 1, "PREFETCHERS": 4})["PER_C"] == 12  # 128 working programs
    assert decode.plan_any(*args, 1, 132, {"SPLIT": 1, "PREFETCHERS": 36})["PER_C"] == 16  # 96
    assert decode.plan_any(*args, 1, 132, {"PREFETCHERS": 36})["PER_CONV"] == 16  # over 96 working programs
    default = decode.plan_any(*args, 1, 132, {})  # DEFAULT_TUNE: 4 prefetchers, 2 layers ahead, on a full grid
    assert (default["PREFETCHERS"], default["AHEAD"], default["PER_CONV"]) == (4, 2, 12)
    assert decode.plan_any(*args, 1, 32, {})["PREFETCHERS"] == 0  # a small grid keeps every program working
    assert decode.plan_any(*args, 1, 132, {"PREFETCHERS": 0})["PREFETCHERS"] == 0
    assert decode.plan_any(*args, 1, 132, {"BARRIER": 1})["PREFETCHERS"] == 0  # the default gives way
    assert decode.plan_any(*args, 1, 132, {"SPLIT": 1})["PREFETCHERS"] == 0  # not the split kernel's default
    for bad in ({"PREFETCHERS": 132}, {"PREFETCHERS": -1}, {"PREFETCHERS": True}, {"AHEAD": -1}, {"AHEAD": 1.5}):
        with pytest.raises(ValueError, match="PREFETCHERS|AHEAD"):
            decode.plan_any(*args, 1, 132, {"SPLIT": 1, **bad})
        with pytest.raises(ValueError, match="PREFETCHERS|AHEAD"):
            decode.plan_any(*args, 1, 132, bad)
    for other in ({"BARRIER": 1}, {"FLAGGED": 1}):  # the flag barriers keep their own slots
        with pytest.raises(ValueError, match="PREFETCHERS"):
            decode.plan_any(*args, 1, 132, {"PREFETCHERS": 4, **other})


@pytest.mark.parametrize(("batch", "more", "chunk"), [(1, {"PER_C": 48}, 16), (2, {}, 16), (1, {"PER_C": 48}, 2),
                                                     (1, {"PER_C": 48}, 3)])
def test_greedy_steps_pick_the_tokens_in_the_kernel(forced, monkeypatch, batch, more, chunk):
    """Greedy generate on the split kernel's greedy steps (each step picks its token and feeds the next itself)
    gives what the step-by-step loop gives (return_logits takes that loop), with suppressed tokens and a history of 4
    columns copied out every 4 steps; with the warp layout at batch 1 and the general tiles at batch 2; in chunks of
    2 steps (which fill the history), of 3 (which fit in it only from its first two columns, else single steps) or
    of 16 (never: single steps)."""
    monkeypatch.setattr(decode, "TUNE", {"SPLIT": 1, "ARRIVE_FIRST": 1, **more})
    monkeypatch.setattr(decode, "GREEDY_HISTORY", 4)
    monkeypatch.setattr(generation, "GREEDY_CHUNK", chunk)
    model = _lm("mamba_dna_lm_tiny", seed=60 + batch, d_model=24, n_layer=2, d_state=6)
    prompt = torch.randint(4, 9, (batch, 5), generator=torch.Generator().manual_seed(batch)).to(DEV)
    banned = [4, 5]
    fast = generate(model, prompt, 11, temperature=0, suppress_tokens=banned, cuda_graph=False, progress=True)
    decoder = _decoder_for(model, batch, False)
    assert decoder.greedy and decoder.fused.history.shape == (batch, 4) and decoder.greedy_chunk == chunk
    slow, _ = generate(model, prompt, 11, temperature=0, suppress_tokens=banned, cuda_graph=False,
                       return_logits=True)
    assert torch.equal(fast, slow) and not torch.isin(fast[:, 5:], torch.tensor(banned, device=DEV)).any()
    assert decoder.cache.seqlen_offset == 5 + 10
    plain = generate(model, prompt, 11, temperature=0, cuda_graph=False)  # no bias: zeros again
    assert torch.equal(plain, generate(model, prompt, 11, temperature=0, cuda_graph=False, return_logits=True)[0])
    with pytest.raises(ValueError, match="token must be int64"):
        decoder.fused.start_greedy(torch.zeros(batch + 1, dtype=torch.long, device=DEV))
    with pytest.raises(ValueError, match="bias must be a float tensor of shape"):
        decoder.fused.start_greedy(prompt[:, 0], torch.zeros(3, device=DEV))


def test_greedy_steps_need_the_split_kernel(forced, monkeypatch):
    """The other kernel takes no greedy steps: generate keeps the step-by-step loop, and asking for one is refused."""
    monkeypatch.setattr(decode, "TUNE", {})
    model = _lm("mamba_dna_lm_tiny", seed=61, d_model=24, n_layer=2, d_state=6)
    decoder = StepDecoder(model, 1)
    assert decoder.fused is not None and not decoder.greedy
    with pytest.raises(RuntimeError, match="split kernel"):
        decoder.fused(greedy=True)
    with pytest.raises(RuntimeError, match="split kernel"):
        decoder.greedy_steps(torch.zeros(1, 3, dtype=torch.long, device=DEV))


def test_split_kernel_is_the_gpu_default_at_batch_1(monkeypatch):
    """On sm_90 at batch 1 the step runs the split kernel where its warp layout holds (36 of 132 programs prefetching),
    with FIXED's integer sums (and TMA_SUMS) under torch.use_deterministic_algorithms; TUNE's settings apply over it,
    and SPLIT in TUNE or a setting only the other kernel takes keeps that kernel, as do batch 2, an older GPU, the CPU
    and a Triton without the layout."""
    import triton

    sizes, cuda = (768, 1536, 16, 48, 4, 256), torch.device("cuda", 0)
    capability = [(9, 0)]
    monkeypatch.setattr(decode.torch.cuda, "get_device_capability", lambda device=None: capability[0])
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(decode, "interpreting", lambda: False)  # a GPU run
    default = decode.split_default({}, cuda, sizes, 1, 132)
    assert default == {"SPLIT": 1, "ARRIVE_FIRST": 1, "AHEAD": 2, "ROLES": 1, "TALLY": 4, "COPIES": 4,
                       "PREFETCHERS": 36}
    assert decode.split_default({}, cuda, sizes, 1, 114)["PREFETCHERS"] == 31
    assert decode.split_default({"COPIES": 2, "AHEAD": 1}, cuda, sizes, 1, 132) == {**default, "COPIES": 2,
                                                                                    "AHEAD": 1}
    # TALLY where it applies: not with TRACE or SUMS_1D=0 (then 2 copies); asked for where it cannot count the
    # contributions (96 programs into one copy: 64 at most), the other kernel
    untallied = {**default, "TALLY": 0, "COPIES": 2}
    assert decode.split_default({"TRACE": 1}, cuda, sizes, 1, 132) == {**untallied, "TRACE": 1}
    assert decode.split_default({"SUMS_1D": 0}, cuda, sizes, 1, 132) == {**untallied, "SUMS_1D": 0}
    assert decode.split_default({"TALLY": 1}, cuda, sizes, 1, 132) is None
    monkeypatch.setattr(decode.torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert decode.split_default({}, cuda, sizes, 1, 132) == {**untallied, "FIXED": 1, "TMA_SUMS": 1}
    assert decode.split_default({}, cuda, (576, 1152, 16, 36, 4, 256), 1, 132)["TMA_SUMS"] == 0  # 576 % 128
    monkeypatch.setattr(decode.torch, "are_deterministic_algorithms_enabled", lambda: False)
    assert decode.split_default({"SPLIT": 0}, cuda, sizes, 1, 132) is None
    assert decode.split_default({"SPLIT": 1}, cuda, sizes, 1, 132) is None  # TUNE's own choice
    assert decode.split_default({"JOINT_READS": 1}, cuda, sizes, 1, 132) is None
    assert decode.split_default({}, cuda, sizes, 2, 132) is None
    assert decode.split_default({}, torch.device("cpu"), sizes, 1, 132) is None
    assert decode.split_default({}, cuda, (64, 128, 16, 4, 4, 256), 1, 132) is None  # 2 channels a program < 8 warps
    monkeypatch.setattr(triton, "__version__", "3.8.0")
    assert decode.split_default({}, cuda, sizes, 1, 132) is None
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    capability[0] = (8, 0)
    assert decode.split_default({}, cuda, sizes, 1, 132) is None


def test_sm_roles_are_a_fixed_permutation():
    """ROLES' table: entry s is the role of the program on SM s, a permutation of the programs, the same every time
    and not the identity (roles spread over the SMs however the block scheduler places the programs)."""
    roles = decode.sm_roles(132)
    assert roles.dtype == torch.int32 and sorted(roles.tolist()) == list(range(132))
    assert torch.equal(roles, decode.sm_roles(132)) and not torch.equal(roles, torch.arange(132, dtype=torch.int32))
    assert decode.sm_roles(1).tolist() == [0]


@pytest.mark.parametrize(("n_regs", "shared", "num_warps", "alone"),
                         [(224, 1024, 8, True), (224, 1024, 4, False), (128, 1024, 8, False), (129, 1024, 8, True),
                          (64, 120 * 1024, 8, True)])
def test_one_program_an_sm(n_regs, shared, num_warps, alone):
    """ROLES needs a kernel of which two programs cannot share an SM (65,536 registers and 228 KB of shared memory):
    by registers (224 a thread at 8 warps: 114,688 for two) or by shared memory (120 KB each)."""
    assert decode.one_program_an_sm(n_regs, shared, num_warps, 65536, 228 * 1024) == alone


def test_prefetchers_need_sm90(monkeypatch):
    """Below sm_90 (no bulk L2 prefetch) the default's prefetchers are left out and an explicit PREFETCHERS is refused
    by name; on sm_90 and on the interpreter TUNE is used as it is."""
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(decode.torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(decode, "TUNE", {"JOINT_READS": 1})
    assert decode._device_tune(cuda) == {"JOINT_READS": 1, "PREFETCHERS": 0}
    monkeypatch.setattr(decode, "TUNE", {"PREFETCHERS": 4})
    with pytest.raises(ValueError, match="PREFETCHERS needs sm_90.*sm_80"):
        decode._device_tune(cuda)
    assert decode._device_tune(torch.device("cpu")) == {"PREFETCHERS": 4}
    monkeypatch.setattr(decode.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert decode._device_tune(cuda) == {"PREFETCHERS": 4}


@pytest.mark.parametrize("variant", [{"ARRIVE_FIRST": 0}, {"ARRIVE_FIRST": 1}, {"FLAGGED": 1},
                                     {"MERGE_IN_CONV": 1}, {"SPLIT": 1, "ARRIVE_FIRST": 1}],
                         ids=["counter", "ARRIVE_FIRST", "FLAGGED", "MERGE_IN_CONV", "SPLIT"])
def test_trace_records_every_barrier_and_changes_nothing(forced, monkeypatch, variant):
    """TRACE=1 (timing from inside the kernel) gives the same logits and states as without it and writes every entry
    of its trace: the start, each of the 4 * layers barriers (3 * layers merged, 2 * layers in the split kernel;
    whole, or split in two by ARRIVE_FIRST; under FLAGGED the waits in their place) and the end (the interpreter's
    clocks read 0, so a trace poisoned with -1 shows every entry written)."""
    model = _lm("mamba_dna_lm_tiny", seed=60, d_model=24, n_layer=2, d_state=6)
    runs = []
    for trace in (0, 1):
        monkeypatch.setattr(decode, "TUNE", {"TRACE": trace, **variant})
        cache, _ = _random_caches(model, 2, seed=61)
        token = torch.tensor([3, 1], device=DEV)
        step = FusedDecodeStep(model, token, [c.conv_state for c in cache.layers],
                               [c.ssm_state for c in cache.layers], programs=4)
        if trace:
            per_layer = 2 if variant.get("SPLIT") else 3 if variant.get("MERGE_IN_CONV") else 4
            assert tuple(step.trace.shape) == (step.grid, per_layer * 2 + 2, 4)
            step.trace.fill_(-1)
        else:
            assert step.trace is None
        runs.append((step().clone(), [c.ssm_state.clone() for c in cache.layers], step))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    assert (runs[1][2].trace == 0).all()
    with pytest.raises(ValueError, match="TRACE"):
        decode.plan_constexprs(768, 1536, 16, 48, 4, 256, 1, 132, {"TRACE": 1, "BARRIER": 1})
    with pytest.raises(ValueError, match="NO_WAIT"):
        decode.plan_constexprs(768, 1536, 16, 48, 4, 256, 1, 132, {"TRACE": 1, "NO_WAIT": 1})
    with pytest.raises(ValueError, match="ARRIVE_FIRST=1"):
        decode.plan_any(768, 1536, 16, 48, 4, 256, 1, 132, {"SPLIT": 1, "TRACE": 1})


def test_split_plan_and_its_errors():
    """SPLIT's plan for the 90M LM on 132 SMs (12 channels an item, 128 items) and the settings it refuses."""
    args = (768, 1536, 16, 48, 4, 256)
    plan = decode.plan_any(*args, 1, 132, {"SPLIT": 1})
    assert (plan["PER_C"], plan["BLOCK_C"], plan["COPIES"], plan["BLOCK_B"]) == (12, 16, 2, 1)
    assert decode.plan_any(*args, 1, 4, {"SPLIT": 1})["PER_C"] == 32  # at most _SPLIT_MAX_C: several items a program
    assert decode.plan_any(*args, 1, 132, {"SPLIT": 1, "PER_C": 16})["BLOCK_C"] == 16
    with pytest.raises(ValueError, match="COPIES"):
        decode.plan_any(*args, 1, 132, {"SPLIT": 1, "COPIES": 3})
    with pytest.raises(ValueError, match="PER_C"):
        decode.plan_any(*args, 1, 132, {"SPLIT": 1, "PER_C": 2000})
    with pytest.raises(ValueError, match="ROWS_IN"):  # the other kernel's settings do not apply
        decode.plan_any(*args, 1, 132, {"SPLIT": 1, "ROWS_IN": 8})
    assert "ROWS_IN" in decode.plan_any(*args, 1, 132, {})  # no SPLIT: the four-barrier kernel's plan


def test_unaligned_parameters_fall_back(triton_path):
    """The kernels' vector loads need 16-byte aligned tensors: a parameter that is an offset view is refused with a
    reason (the decoder then steps layer by layer)."""
    model = _lm("mamba_dna_lm_tiny", seed=5, d_model=16, n_layer=1)
    assert fused_decode_unsupported_reason(model, 1) is None
    w = model.backbone.layers[0].mixer.D
    with torch.no_grad():
        shifted = torch.empty(w.numel() + 1, dtype=w.dtype, device=w.device)[1:]  # 4 bytes past an aligned start
        shifted.copy_(w)
    model.backbone.layers[0].mixer.D = torch.nn.Parameter(shifted)
    assert "16-byte" in fused_decode_unsupported_reason(model, 1)


def test_decoder_uses_fused_step_after_prefill(triton_path, monkeypatch):
    """StepDecoder on the fused path: prefill fills the very tensors the kernel reads; steps match the reference.
    Batch 2: by default layer by layer, fused when forced."""
    model = _lm("mamba_wave_lm_tiny", seed=7, d_model=32, n_layer=2)
    assert StepDecoder(model, 1).fused is not None and StepDecoder(model, 2).fused is None
    assert _decoder_for(model, 2, cuda_graph=False).fused is None
    monkeypatch.setenv("SEQBACKBONE_FUSED_DECODE", "1")
    assert _decoder_for(model, 2, cuda_graph=False).fused is not None  # the setting is part of the cached key
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
        ref_logits = _greedy_steps_agree(decoder, reference, ref_logits, monkeypatch)


def _greedy_steps_agree(decoder: StepDecoder, reference: StepDecoder, ref_logits: torch.Tensor,
                        monkeypatch) -> torch.Tensor:
    """One greedy step of both decoders (the decoder on the Triton path, the reference's on the torch one) from the
    argmax of `ref_logits`: their logits agree; returns the reference's."""
    tok = ref_logits.argmax(-1)
    ref_logits = reference.step(tok).clone()
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "triton")
    logits = decoder.step(tok)
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=2e-5)
    return ref_logits


def test_split_decoder_reads_weights_changed_in_place(triton_path, monkeypatch):
    """The split kernel's warp layout reads out_proj's and x_proj's columns from copies (BLOCKS=3), and A = -exp(A_log)
    from copies of its own: after an in-place change of the weights, the decoder's next prefill refreshes them, so its
    steps match the reference again."""
    monkeypatch.setattr(decode, "TUNE", {"SPLIT": 1, "ARRIVE_FIRST": 1, "PER_C": 64})
    model = _lm("mamba_wave_lm_tiny", seed=8, d_model=32, n_layer=2)
    decoder = StepDecoder(model, 1)
    assert decoder.fused is not None and decoder.fused._constexprs["BLOCKS"] == 3
    assert len(decoder.fused._blocks) == 2
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")
    monkeypatch.setenv("SEQBACKBONE_FUSED_DECODE", "0")
    reference = StepDecoder(model, 1)
    prompt = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(1)).to(DEV)
    for scale in (1.0, -0.5):
        with torch.no_grad():
            for layer in model.backbone.layers:
                layer.mixer.out_proj.weight.mul_(scale)
                layer.mixer.x_proj.weight.mul_(scale)
                layer.mixer.A_log.add_(0.5 * scale)
        decoder.prefill(prompt)
        _greedy_steps_agree(decoder, reference, reference.prefill(prompt), monkeypatch)


def test_unsupported_models_fall_back(triton_path, monkeypatch):
    model = _lm("mamba_dna_lm_tiny", seed=3, d_model=16, n_layer=1)
    # unset: batch 1 only; forced: up to 8; off: never
    assert fused_decode_supported(model, 1) and not fused_decode_supported(model, 2)
    assert fused_decode_unsupported_reason(model, 8) is None
    monkeypatch.setenv("SEQBACKBONE_FUSED_DECODE", "1")
    assert fused_decode_supported(model, 8)
    assert not fused_decode_supported(model, 9)
    assert "batch" in fused_decode_unsupported_reason(model, 0)
    monkeypatch.setenv("SEQBACKBONE_FUSED_DECODE", "sometimes")
    with pytest.raises(ValueError, match="SEQBACKBONE_FUSED_DECODE"):
        fused_decode_supported(model, 1)
    monkeypatch.setenv("SEQBACKBONE_FUSED_DECODE", "1")
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


def _gpu_steps_match_reference(batch: int) -> FusedDecodeStep:
    """8 fused steps of a bf16 two-layer LM at the 90M LM's layer size on the real grid against the reference step
    (random states); returns the step for further checks."""
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
    return step


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 8])
def test_gpu_fused_step_matches_reference_bf16(monkeypatch, batch):
    """The real grid (one program per SM) at the 90M LM's layer size in bf16, two layers, against the reference."""
    monkeypatch.delenv("SEQBACKBONE_KERNELS", raising=False)
    _gpu_steps_match_reference(batch)


@pytest.mark.gpu
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("variant", "batch"), [
    ({"BARRIER": 1, "LOCAL_P2": 1, "ONE_ITEM": 1, "BATCH_TILE": 1}, 8),
    ({"BARRIER": 1, "LOCAL_P2": 1, "ONE_ITEM": 1, "BATCH_TILE": 1}, 1),
    ({"BARRIER": 1}, 3),
    ({"ONE_ITEM": 0}, 5),
    ({"SPLIT": 1}, 1),
    ({"ONE_ITEM": 0, "ARRIVE_FIRST": 0, "EARLY_LOADS": 0}, 1),
    ({"ONE_ITEM": 0, "ARRIVE_FIRST": 0, "EARLY_LOADS": 0}, 8),
    ({"EARLY_LOADS": 0}, 1),
    ({"ARRIVE_FIRST": 0}, 8),
    ({"PREFETCH": 1}, 1),
    ({"PREFETCH": 2}, 8),
    ({"FLAGGED": 1}, 1),
    ({"FLAGGED": 1}, 8),
    ({"JOINT_READS": 0}, 1),
    ({"JOINT_READS": 0}, 8),
    ({"L2_TILES": 1}, 1),
    ({"L2_TILES": 1}, 8),
    ({"MERGE_IN_CONV": 1}, 1),
    ({"MERGE_IN_CONV": 1}, 8),
    ({"SPLIT": 1, "COPIES": 1}, 2),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "FIXED": 1}, 1),
    ({"SPLIT": 1, "FIXED": 1, "COPIES": 1}, 2),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "PREFETCHERS": 4}, 1),
    ({"SPLIT": 1, "PREFETCHERS": 36, "AHEAD": 2}, 2),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "PREFETCHERS": 36, "AHEAD": 2}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "WARP_SUMS": 0}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "FIXED": 1, "PREFETCHERS": 36, "AHEAD": 2}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "SUMS_1D": 0, "PREFETCHERS": 36, "AHEAD": 2}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "TMA_SUMS": 1, "PREFETCHERS": 36, "AHEAD": 2}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "FIXED": 1, "TMA_SUMS": 1, "PREFETCHERS": 36, "AHEAD": 2}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "PREFETCHERS": 36, "AHEAD": 2, "BLOCKS": 0, "SPIN": 0}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "PREFETCHERS": 36, "AHEAD": 2, "COPIES": 4}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "PREFETCHERS": 36, "AHEAD": 2, "GATE_EARLY": 0}, 1),
    ({"SPLIT": 0}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "PREFETCHERS": 20, "AHEAD": 2}, 1),  # 14 channels in 16-lane blocks
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "PREFETCHERS": 36, "AHEAD": 2, "BLOCKS": 2, "SPIN": 1, "TRACE": 1}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "PREFETCHERS": 36, "AHEAD": 2, "ROLES": 1, "TRACE": 1}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "FIXED": 1, "TMA_SUMS": 1, "PREFETCHERS": 36, "AHEAD": 2, "SPIN": 1}, 1),
    ({"PREFETCHERS": 36, "AHEAD": 2}, 1),
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "PREFETCHERS": 36, "AHEAD": 2, "TALLY": 2}, 1),  # 48 contributions a word
    ({"SPLIT": 1, "ARRIVE_FIRST": 1, "PREFETCHERS": 36, "AHEAD": 2, "TALLY": 8, "COPIES": 2}, 1),
    ({"PREFETCHERS": 4, "MERGE_IN_CONV": 0}, 8),
], ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else f"batch{v}")
def test_gpu_variants_match_reference_bf16(monkeypatch, variant, batch):
    """decode.TUNE's variants on the real grid (one program per SM: flags and ready flags raced for real) at the 90M
    LM's layer size in bf16, two layers, against the reference; every program's flag ends at the same epoch; a
    traced step left every barrier after arriving at it."""
    monkeypatch.delenv("SEQBACKBONE_KERNELS", raising=False)
    monkeypatch.setattr(decode, "TUNE", dict(variant))
    step = _gpu_steps_match_reference(batch)
    if variant.get("BARRIER"):
        per_step = (3 if step._constexprs["MERGE_IN_CONV"] or variant.get("LOCAL_P2") else 4) * 2
        assert step._barrier[:step.grid].tolist() == [8 * per_step] * step.grid
    if variant.get("TRACE"):  # every working program's every barrier: left (global time) after it arrived
        trace = step.trace[:step.grid - step._constexprs["PREFETCHERS"], 1:-1].cpu()
        assert (trace[..., 2] > 0).all() and (trace[..., 3] >= trace[..., 2]).all()
        # beside the start, each program's SM: one program an SM, as the grid barriers need
        sms = step.trace[:step.grid - step._constexprs["PREFETCHERS"], 0, 1].tolist()
        n_sm = torch.cuda.get_device_properties(0).multi_processor_count
        assert len(set(sms)) == len(sms) and 0 <= min(sms) and max(sms) < n_sm
        if variant.get("ROLES"):  # the trace's rows are roles: role p ran on an SM whose table entry is p
            assert step._constexprs["ROLES"] and n_sm == step.grid
            assert [step.roles[s].item() for s in sms] == list(range(len(sms)))


def _split_layout_on_this_gpu() -> bool:
    import triton

    on_sm90 = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)
    return on_sm90 and triton.__version__.startswith("3.6.")


@pytest.mark.gpu
def test_gpu_split_step_without_register_counts_drops_roles(monkeypatch):
    """A Triton whose compiled kernel does not show its registers: the split step cannot check that it keeps to one
    program an SM, so it runs without ROLES, and still matches the reference."""
    from seqbackbone.kernels import decode_split_triton

    def no_counts(*args, **kwargs):
        raise AttributeError("'CompiledKernel' object has no attribute 'n_regs'")

    monkeypatch.delenv("SEQBACKBONE_KERNELS", raising=False)
    monkeypatch.setattr(decode, "TUNE", {"SPLIT": 1, "ARRIVE_FIRST": 1, "PREFETCHERS": 36, "AHEAD": 2, "ROLES": 1})
    monkeypatch.setattr(decode_split_triton, "compiled", no_counts)
    step = _gpu_steps_match_reference(1)
    assert not step._constexprs["ROLES"] and step.tune["ROLES"] == 0


@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [False, True])
def test_gpu_default_step_at_batch_1_is_the_split_kernel(monkeypatch, deterministic):
    """On sm_90 (Triton 3.6) the default step at batch 1 is the split kernel (it matches the reference), with integer
    sums under torch.use_deterministic_algorithms(True): there two runs from the same states give the same bits, and
    greedy steps pick what torch.argmax picks from the logits they write."""
    if not _split_layout_on_this_gpu():
        pytest.skip("the split kernel's warp layout needs sm_90 and Triton 3.6")
    monkeypatch.delenv("SEQBACKBONE_KERNELS", raising=False)
    monkeypatch.setattr(decode, "TUNE", {})
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: deterministic)
    step = _gpu_steps_match_reference(1)
    assert step.split and step.tune["PREFETCHERS"] > 0 and bool(step._constexprs["FIXED"]) == deterministic
    assert step.tune["ROLES"] == 1 and step._constexprs["ROLES"]  # one program an SM: the roles hold
    # x_proj's sums count themselves (4 copies, and 4 of out_proj's), except under FIXED's bit-identical sums
    assert (step._constexprs["TALLY"], step._constexprs["COPIES"]) == ((0, 2) if deterministic else (4, 4))
    model = _lm("mamba_wave_lm_base", seed=3, device="cuda", dtype=torch.bfloat16, d_model=768, n_layer=2)
    cache, _ = _random_caches(model, 1, seed=3)
    states = [t for c in cache.layers for t in (c.conv_state, c.ssm_state)]
    saved = [t.clone() for t in states]
    step = FusedDecodeStep(model, torch.zeros(1, dtype=torch.long, device="cuda"),
                           [c.conv_state for c in cache.layers], [c.ssm_state for c in cache.layers])
    runs = []
    for _ in range(2):
        for t, first in zip(states, saved, strict=True):
            t.copy_(first)
        step.start_greedy(torch.tensor([7], device="cuda"))
        logits = [step(greedy=True).clone() for _ in range(4)]
        runs.append((torch.stack(logits), step.history[:, :4].clone()))
    picked = runs[0][0].argmax(dim=-1).T  # (1, 4): the token each step picked from its own logits
    assert torch.equal(runs[0][1], picked) and torch.equal(step.token, picked[:, -1])
    if deterministic:
        assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.gpu
def test_gpu_greedy_generation_same_both_ways(monkeypatch):
    monkeypatch.delenv("SEQBACKBONE_KERNELS", raising=False)
    # weights away from the init, so that the logits are spread and no near-tie decides a token
    model = _lm("mamba_wave_lm_base", seed=0, device="cuda", dtype=torch.bfloat16, d_model=768, n_layer=2)
    prompt = torch.rand(1, 16, generator=torch.Generator().manual_seed(0)).cuda() * 2 - 1
    assert fused_decode_supported(model, 1)
    fused = generate(model, prompt, 64, temperature=0)  # 3 chunks of 16 steps, one graph replay each, then 15 steps
    assert _decoder_for(model, 1, True).greedy_chunk_graph is not None
    monkeypatch.setenv("SEQBACKBONE_FUSED_DECODE", "0")
    reference = generate(model, prompt, 64, temperature=0)
    assert torch.equal(fused, reference)


@pytest.mark.parametrize(("share", "want"), [(None, 132), ("", 132), ("100", 132), ("50", 66), ("0.5", 1),
                                             ("25.5", 32), ("x", 132)])
def test_resident_programs_follow_the_mps_share(share, want):
    """Under CUDA MPS only a share of the SMs runs the process's programs at once: the grid must not exceed it."""
    assert decode.resident_programs(132, share) == want
