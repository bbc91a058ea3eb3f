"""The baseline a user would pick instead of Mamba: a pre-norm Transformer built on `scaled_dot_product_attention`.

Dimensions: B batch, L length, Dm d_model, H heads, Dh head dim (Dm / H), F MLP hidden (mlp_ratio * Dm), T cache
capacity (tokens a KV cache can hold).

    x (B, L, Dm) -> [ x + attn(LN(x)) ; x + MLP(LN(x)) ] * n_layer -> LN -> (B, L, Dm)

GPT-2 / ViT blocks: LayerNorm, fused qkv projection, GELU MLP with 4x hidden, biases, no positional encoding (the
encoder in front supplies positions, as for MambaBackbone; adding RoPE would only make the baseline slower).
`bidirectional=False` is a decoder-only stack (causal attention) with a KV cache for decoding; `bidirectional=True` an
encoder (full attention). On CUDA in fp16/bf16 attention is forced onto the FlashAttention backend, so a shape that
flash cannot run raises instead of silently falling back to the quadratic-memory math path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, flash: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) v: q (B, H, Lq, Dh), k and v (B, H, Lk, Dh) -> (B, H, Lq, Dh).

    causal masks key j > query i (top-left aligned: use it only when Lq == Lk). flash=True allows only the
    FlashAttention backend; flash=False lets torch choose (the math path on CPU).
    """
    if flash:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far, in preallocated buffers updated in place.

    keys, values: one (B, H, T, Dh) tensor per layer; positions [0, seqlen_offset) hold real entries.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    seqlen_offset: int = 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def reset(self) -> None:
        """Forget every token (the buffers keep their storage; stale entries are never read)."""
        self.seqlen_offset = 0

    def nbytes(self, tokens: int | None = None) -> int:
        """Bytes the cache holds for `tokens` positions (default: the ones filled so far)."""
        tokens = self.seqlen_offset if tokens is None else tokens
        per_token = sum(t.shape[0] * t.shape[1] * t.shape[3] * t.element_size() for t in self.keys + self.values)
        return per_token * tokens


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then + MLP(LN(.)). (B, L, Dm) -> (B, L, Dm)."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        mlp_ratio: float = 4.0,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.n_head = n_head
        self.head_dim = d_model // n_head
        hidden = int(mlp_ratio * d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=eps, **factory)
        self.qkv = nn.Linear(d_model, 3 * d_model, **factory)
        self.proj = nn.Linear(d_model, d_model, **factory)
        self.norm2 = nn.LayerNorm(d_model, eps=eps, **factory)
        self.fc1 = nn.Linear(d_model, hidden, **factory)
        self.fc2 = nn.Linear(hidden, d_model, **factory)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, L, Dm) -> q, k, v, each (B, H, L, Dh)."""
        batch, length, _ = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, length, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _finish(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Residual adds around the attention output o (B, H, L, Dh) and the MLP."""
        batch, _, length, _ = o.shape
        x = x + self.proj(o.transpose(1, 2).reshape(batch, length, -1))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))

    def forward(
        self, x: torch.Tensor, causal: bool, flash: bool, kv: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """x: (B, L, Dm). With kv = (key buffer, value buffer) of shape (B, H, T, Dh), this is a prefill from an
        empty cache: the L keys and values are written to positions [0, L)."""
        q, k, v = self._qkv(x)
        if kv is not None:
            kv[0][:, :, : k.shape[2]].copy_(k)
            kv[1][:, :, : v.shape[2]].copy_(v)
        return self._finish(x, attention(q, k, v, causal=causal, flash=flash))

    def step(
        self, x_t: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], position: int, flash: bool
    ) -> torch.Tensor:
        """One token x_t (B, 1, Dm) at `position`: its key and value go to the cache; the query attends to keys
        [0, position]."""
        q, k, v = self._qkv(x_t)
        kv[0][:, :, position : position + 1].copy_(k)
        kv[1][:, :, position : position + 1].copy_(v)
        keys, values = kv[0][:, :, : position + 1], kv[1][:, :, : position + 1]
        return self._finish(x_t, attention(q, keys, values, causal=False, flash=flash))


class TransformerBackbone(nn.Module):
    """A stack of pre-norm Transformer blocks and a final LayerNorm: (B, L, d_model) -> (B, L, d_model).

    n_head defaults to d_model // 64 (64-wide heads, at least one). flash=None uses the FlashAttention backend
    exactly when the input is a CUDA fp16/bf16 tensor.
    """

    def __init__(
        self,
        d_model: int,
        n_layer: int,
        n_head: int | None = None,
        mlp_ratio: float = 4.0,
        bidirectional: bool = False,
        eps: float = 1e-5,
        flash: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("n_layer", n_layer)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        n_head = max(1, d_model // 64) if n_head is None else n_head
        if isinstance(n_head, bool) or not isinstance(n_head, int) or n_head < 1 or d_model % n_head:
            raise ValueError(f"n_head must be a positive int dividing d_model={d_model}, got {n_head!r}")
        if not isinstance(bidirectional, bool):
            raise TypeError(
                f"bidirectional must be a bool (False: causal, True: full attention), got {bidirectional!r}"
            )
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        self.d_model = d_model
        self.n_layer = n_layer
        self.n_head = n_head
        self.bidirectional = bidirectional
        self.flash = flash
        self.layers = nn.ModuleList(
            TransformerBlock(d_model, n_head, mlp_ratio, eps, device=device, dtype=dtype) for _ in range(n_layer)
        )
        self.norm_f = nn.LayerNorm(d_model, eps=eps, device=device, dtype=dtype)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02), zero biases, residual output projections scaled down by sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * self.n_layer) if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def _use_flash(self, x: torch.Tensor) -> bool:
        if self.flash is not None:
            return self.flash
        return x.is_cuda and x.dtype in _FLASH_DTYPES

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x: (B, L, d_model) -> (B, L, d_model). With a cache (causal only) this is the prefill: it must be empty,
        and afterwards holds the L keys and values of every layer."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3 or x.shape[-1] != self.d_model:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a float tensor of shape (batch, length, d_model={self.d_model}), got {got}")
        if cache is not None:
            self._check_cache(cache, x.shape[0], x.shape[1])
            if cache.seqlen_offset != 0:
                raise ValueError(f"prefill needs an empty cache (call cache.reset()), got {cache.seqlen_offset} tokens")
        flash = self._use_flash(x)
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.keys[i], cache.values[i])
            x = layer(x, causal=not self.bidirectional, flash=flash, kv=kv)
        if cache is not None:
            cache.seqlen_offset = x.shape[1]
        return self.norm_f(x)

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decoding step: x_t (B, d_model) -> (B, d_model), attending to every cached token and itself; the
        cache grows by one token."""
        if not isinstance(x_t, torch.Tensor):
            raise TypeError(f"x_t must be a torch.Tensor of shape (batch, d_model), got {type(x_t).__name__}")
        self._check_cache(cache, None, 1)
        if not x_t.is_floating_point() or tuple(x_t.shape) != (cache.batch_size, self.d_model):
            raise ValueError(
                f"x_t must be a float tensor of shape (batch={cache.batch_size}, d_model={self.d_model}), "
                f"got {tuple(x_t.shape)} {x_t.dtype}"
            )
        position = cache.seqlen_offset
        flash = self._use_flash(x_t)
        x = x_t[:, None, :]  # (B, 1, Dm)
        for i, layer in enumerate(self.layers):
            x = layer.step(x, (cache.keys[i], cache.values[i]), position, flash)
        cache.seqlen_offset = position + 1
        return self.norm_f(x[:, 0])

    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None
    ) -> KVCache:
        """Empty key and value buffers, (B, H, max_seqlen, Dh) per layer, in `dtype` (default: the weights')."""
        if self.bidirectional:
            raise RuntimeError("a bidirectional Transformer has no KV cache: every output depends on later tokens")
        for name, value in (("batch_size", batch_size), ("max_seqlen", max_seqlen)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        weight = self.norm_f.weight
        shape = (batch_size, self.n_head, max_seqlen, self.d_model // self.n_head)
        factory = {"device": weight.device, "dtype": weight.dtype if dtype is None else dtype}
        return KVCache(
            keys=[torch.empty(shape, **factory) for _ in self.layers],
            values=[torch.empty(shape, **factory) for _ in self.layers],
        )

    def _check_cache(self, cache: object, batch: int | None, new_tokens: int) -> None:
        if self.bidirectional:
            raise RuntimeError("a bidirectional Transformer cannot use a KV cache: its outputs depend on later tokens")
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache (see allocate_inference_cache), got {type(cache).__name__}")
        if len(cache.keys) != self.n_layer:
            raise ValueError(f"cache holds {len(cache.keys)} layers, the model has {self.n_layer}")
        if batch is not None and batch != cache.batch_size:
            raise ValueError(f"input has batch size {batch} but the cache was allocated for {cache.batch_size}")
        if cache.seqlen_offset + new_tokens > cache.capacity:
            raise ValueError(
                f"the cache holds at most {cache.capacity} tokens; it has {cache.seqlen_offset} and {new_tokens} more "
                "were given (allocate a larger max_seqlen)"
            )


def transformer_layer_parameters(d_model: int, mlp_ratio: float = 4.0) -> int:
    """Parameters of one TransformerBlock (weights and biases of qkv, proj, fc1, fc2 and two LayerNorms)."""
    hidden = int(mlp_ratio * d_model)
    attn = d_model * 3 * d_model + 3 * d_model + d_model * d_model + d_model
    mlp = d_model * hidden + hidden + hidden * d_model + d_model
    return attn + mlp + 4 * d_model


def matching_n_layer(target_parameters: int, d_model: int, mlp_ratio: float = 4.0) -> int:
    """The number of Transformer layers whose parameter count (with the final norm) is closest to the target."""
    per_layer = transformer_layer_parameters(d_model, mlp_ratio)
    base = 2 * d_model
    n = max(1, round((target_parameters - base) / per_layer))
    return min((m for m in (n - 1, n, n + 1) if m >= 1), key=lambda m: abs(base + m * per_layer - target_parameters))
