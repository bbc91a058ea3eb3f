"""The fused decoding step of a Mamba layer against the unfused step written here from the PyTorch references, the
number of kernels one step launches, and greedy decoding on the fused path.

On the CPU the Triton kernels run through the interpreter (SEQBACKBONE_KERNELS=triton with TRITON_INTERPRET=1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from seqbackbone.kernels import conv_update_triton, step_triton
from seqbackbone.kernels.conv import causal_conv1d_update_ref
from seqbackbone.kernels.step import selective_state_update_ref

import seqbackbone
from seqbackbone import Mamba, MambaBackbone
from seqbackbone.bench.decode import OpCounter
from seqbackbone.generation import generate

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# bf16: activations and the dt projection round to bf16 on both paths, from sums taken in other orders
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.fixture
def fused(monkeypatch):
    """Every op on its Triton kernel, with channel blocks small enough to cross block boundaries."""
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "triton")
    monkeypatch.setattr(conv_update_triton, "BLOCK_D", 8)
    monkeypatch.setattr(step_triton, "BLOCK_D", 8)


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    assert torch.isfinite(got).all()
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def randomize_(layer: Mamba, seed: int) -> Mamba:
    """Parameters away from their init (A_log, D, biases all differ per channel) so that a mixed-up index shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name == "A_log":
                p.copy_(torch.log(torch.rand(p.shape, generator=gen) * 8 + 0.5))
            elif name == "dt_proj.bias":
                p.copy_(torch.rand(p.shape, generator=gen) * 3 - 5)
            else:
                p.copy_(noise * (0.5 if p.dim() == 1 else p.shape[-1] ** -0.5))
    return layer


def unfused_step(layer: Mamba, x_t: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
    """The layer's step op by op from the reference functions: x_t (B, d_model) -> (B, d_model); states in place."""
    u, z = F.linear(x_t, layer.in_proj.weight, layer.in_proj.bias).chunk(2, dim=-1)
    u = causal_conv1d_update_ref(u, conv_state, layer.conv1d.weight, layer.conv1d.bias, "silu")
    dt, B, C = torch.split(F.linear(u, layer.x_proj.weight), [layer.dt_rank, layer.d_state, layer.d_state], dim=-1)
    dt = F.linear(dt, layer.dt_proj.weight)
    A = -torch.exp(layer.A_log.float())
    y = selective_state_update_ref(ssm_state, u, dt, A, B, C, layer.D.float(), z, layer.dt_proj.bias.float(), True)
    return F.linear(y, layer.out_proj.weight, layer.out_proj.bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_layer_step_matches_unfused_step(monkeypatch, dtype, backend):
    """Several steps from a random (not zero) state, with fresh random inputs at each."""
    monkeypatch.setenv("SEQBACKBONE_KERNELS", backend)
    monkeypatch.setattr(conv_update_triton, "BLOCK_D", 8)
    monkeypatch.setattr(step_triton, "BLOCK_D", 8)
    torch.manual_seed(0)
    layer = randomize_(Mamba(d_model=12, d_state=5, d_conv=4, dt_rank=3, device=DEV), seed=1).to(dtype)
    cache = layer.allocate_inference_cache(3)
    cache.conv_state.copy_(torch.randn(cache.conv_state.shape))
    cache.ssm_state.copy_(torch.randn(cache.ssm_state.shape))
    conv_ref, ssm_ref = cache.conv_state.clone(), cache.ssm_state.clone()
    tol = TOL[dtype] if backend == "triton" else 1e-6
    for _ in range(4):
        x_t = torch.randn(3, 12, device=DEV).to(dtype)
        got = layer.step(x_t, cache)
        with torch.no_grad():
            want = unfused_step(layer, x_t, conv_ref, ssm_ref)
        assert got.dtype == dtype and got.shape == (3, 12)
        assert _rel(got, want) < tol
        assert torch.equal(cache.conv_state, conv_ref)
        assert _rel(cache.ssm_state, ssm_ref) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backbone_step_fused_matches_pytorch_path(monkeypatch, dtype):
    torch.manual_seed(2)
    backbone = MambaBackbone(d_model=16, n_layer=2, d_state=4, device=DEV).to(dtype)
    for i, block in enumerate(backbone.layers):
        randomize_(block.mixer, seed=10 + i)
    prompt = torch.randn(2, 5, 16, device=DEV).to(dtype)
    steps = torch.randn(4, 2, 16, device=DEV).to(dtype)
    outs = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")  # the same prefill for both
        cache = backbone.allocate_inference_cache(2)
        with torch.no_grad():
            backbone(prompt, cache=cache)
        monkeypatch.setenv("SEQBACKBONE_KERNELS", backend)
        outs[backend] = torch.stack([backbone.step(x_t, cache) for x_t in steps])
        outs[backend + " state"] = torch.stack([layer.ssm_state for layer in cache.layers])
    assert _rel(outs["triton"], outs["torch"]) < TOL[dtype]
    assert _rel(outs["triton state"], outs["torch state"]) < TOL[dtype]


def _step_ops(n_layer: int) -> list[str]:
    torch.manual_seed(3)
    backbone = MambaBackbone(d_model=16, n_layer=n_layer, d_state=4, device=DEV)
    cache = backbone.allocate_inference_cache(1)
    x_t = torch.randn(1, 16, device=DEV)
    backbone.step(x_t, cache)  # warm-up outside the count
    with torch.inference_mode(), OpCounter() as counter:
        backbone.step(x_t, cache)
    return counter.ops


@pytest.mark.skipif(DEV == "cuda", reason="counts Triton launches through the interpreter")
def test_six_kernels_per_layer(fused):
    """Per layer: fused add + norm, in_proj, conv step, x_proj, SSM step, out_proj; no element-wise ops between."""
    one, two = _step_ops(1), _step_ops(2)
    layer = two[len(one) - 1 : len(two) - 1]  # the second layer's ops: between layer one's and the final norm
    assert len(two) - len(one) == 6, two
    assert sum(op.startswith("triton:") for op in layer) == 3 and layer.count("linear") == 3, layer
    assert "triton:_conv_update_kernel" in layer and "triton:_step_kernel" in layer
    assert len(one) == 7  # one layer and the final norm


def test_greedy_generation_on_fused_path_matches_parallel_forward(fused, monkeypatch):
    torch.manual_seed(4)
    model = seqbackbone.create_model("mamba_dna_lm_tiny", d_model=16, n_layer=2).to(DEV).eval()
    prompt = torch.randint(4, 9, (2, 5), device=DEV)
    out, logits = generate(model, prompt, 6, temperature=0, return_logits=True, cuda_graph=False)
    monkeypatch.setenv("SEQBACKBONE_KERNELS", "torch")  # the reference, and quicker than the interpreted scan
    with torch.no_grad():
        full = model(out, mask=torch.ones_like(out, dtype=torch.bool))
    assert torch.equal(full[:, 4:-1].argmax(-1), out[:, 5:])
    torch.testing.assert_close(logits, full[:, 4:-1].float(), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64])
def test_gpu_fused_step_matches_pytorch_path_at_full_size(monkeypatch, batch):
    """The 90M LM's layer size (d_model 768, d_inner 1536, N 16, R 48) in bf16, 8 steps, default block sizes."""
    torch.manual_seed(5)
    layer = randomize_(Mamba(d_model=768, device="cuda"), seed=5).to(torch.bfloat16)
    caches = {b: layer.allocate_inference_cache(batch) for b in ("torch", "triton")}
    start = torch.randn(caches["torch"].ssm_state.shape)
    for cache in caches.values():
        cache.ssm_state.copy_(start)
    outs = {}
    for backend, cache in caches.items():
        monkeypatch.setenv("SEQBACKBONE_KERNELS", backend)
        gen = torch.Generator(device="cuda").manual_seed(6)
        xs = [torch.randn(batch, 768, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(8)]
        outs[backend] = torch.stack([layer.step(x, cache) for x in xs])
    assert _rel(outs["triton"], outs["torch"]) < TOL[torch.bfloat16]
    assert _rel(caches["triton"].ssm_state, caches["torch"].ssm_state) < TOL[torch.bfloat16]
    assert torch.equal(caches["triton"].conv_state, caches["torch"].conv_state)


@pytest.mark.gpu
def test_gpu_kernels_per_step():
    """What a CUDA graph replays per token, layer by layer, for the benchmark's 24-layer LM: six ops per layer (three of
    them cuBLAS matmuls, which may take more than one kernel each), the embedding, the final norm, the head and its
    cast to fp32."""
    from seqbackbone.bench.decode import kernels_per_step, step_ops

    model = seqbackbone.create_model("mamba_wave_lm_base", d_model=768, n_layer=24).to("cuda", torch.bfloat16).eval()
    n_layer = len(model.backbone.layers)
    assert n_layer == 24
    ops = step_ops(model, torch.device("cuda"))
    assert len(ops) == 6 * n_layer + 4, ops
    assert ops.count("triton:_conv_update_kernel") == ops.count("triton:_step_kernel") == n_layer
    assert kernels_per_step(model, torch.device("cuda")) <= 9 * n_layer + 4
