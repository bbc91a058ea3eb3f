"""The embedding-free Mamba backbone: a stack of pre-norm residual blocks and a final norm.

Dimensions: B batch, L length, Dm d_model.

    x (B, L, Dm) -> [Block: residual += hidden; hidden = mixer(norm(residual))] x n_layer -> norm_f(hidden + residual)

Names follow mamba_ssm's MixerModel (layers.{i}.norm, layers.{i}.mixer, norm_f), so its state dicts port (minus the
embedding). The residual stream is kept in fp32 by default, and each norm adds the residual in the same fused kernel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from seqbackbone.cache import InferenceCache
from seqbackbone.layers.norm import LayerNorm, RMSNorm
from seqbackbone.mamba import BIDIRECTIONAL_MODES, Mamba, check_sequence_input, check_step_input

Norm = RMSNorm | LayerNorm


@dataclass
class BackboneConfig:
    """Everything that shapes a MambaBackbone (its config.json); dt_rank "auto" becomes ceil(d_model / 16)."""

    d_model: int
    n_layer: int
    d_state: int = 16
    d_conv: int = 4
    expand: float = 2
    dt_rank: int | str = "auto"
    bidirectional: str | None = None
    rms_norm: bool = True
    residual_in_fp32: bool = True
    norm_epsilon: float = 1e-5
    rescale_prenorm_residual: bool = True
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.bidirectional not in BIDIRECTIONAL_MODES:
            raise ValueError(f"bidirectional must be one of {BIDIRECTIONAL_MODES}, got {self.bidirectional!r}")
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)

    def mixer_kwargs(self) -> dict:
        return {
            "d_state": self.d_state, "d_conv": self.d_conv, "expand": self.expand, "dt_rank": self.dt_rank,
            "dt_min": self.dt_min, "dt_max": self.dt_max, "dt_init_floor": self.dt_init_floor,
            "conv_bias": self.conv_bias, "bias": self.bias, "bidirectional": self.bidirectional,
        }

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm residual block: (hidden, residual) -> (mixer(norm(hidden + residual)), hidden + residual).

    The add and the norm are one fused call; the returned residual is fp32 when residual_in_fp32.
    """

    def __init__(self, mixer: Mamba, norm: Norm, residual_in_fp32: bool = True) -> None:
        super().__init__()
        self.norm = norm
        self.mixer = mixer
        self.residual_in_fp32 = residual_in_fp32

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: object | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden, residual: (B, L, Dm); mask: bool (B, L). Returns the new (hidden, residual)."""
        hidden, residual = self.norm(hidden, residual=residual, prenorm=True, residual_in_fp32=self.residual_in_fp32)
        return self.mixer(hidden, mask=mask, cache=cache), residual

    def step(
        self, hidden: torch.Tensor, residual: torch.Tensor | None, cache: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token: hidden, residual (B, Dm)."""
        hidden, residual = self.norm(hidden, residual=residual, prenorm=True, residual_in_fp32=self.residual_in_fp32)
        return self.mixer.step(hidden, cache), residual


def _init_weights(module: nn.Module, n_layer: int, rescale_prenorm_residual: bool = True) -> None:
    """mamba_ssm's init: Linear biases to zero (but dt_proj's), out_proj redrawn and scaled by 1/sqrt(n_layer),
    so the residual stream's variance does not grow with depth at init (GPT-2's scheme)."""
    if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
        nn.init.zeros_(module.bias)
    if rescale_prenorm_residual and isinstance(module, Mamba):
        p = module.out_proj.weight
        nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        with torch.no_grad():
            p /= math.sqrt(n_layer)


def _take_indices(n: int, indices: int | list[int] | tuple[int, ...] | None) -> tuple[list[int], int]:
    """timm's convention: None = all layers, int k = the last k, a list = those (negative counts from the end)."""
    if indices is None:
        indices = n
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"indices as an int takes the last k layers, 1 <= k <= {n}, got {indices}")
        take = list(range(n - indices, n))
    else:
        take = []
        for i in indices:
            idx = n + i if i < 0 else i
            if not 0 <= idx < n:
                raise ValueError(f"indices must lie in [{-n}, {n - 1}] for {n} layers, got {i}")
            take.append(idx)
        if not take:
            raise ValueError("indices must name at least one layer, got an empty list")
    return take, max(take)


class MambaBackbone(nn.Module):
    """Embedding-free Mamba stack: (B, L, d_model) -> hidden (B, L, d_model), with the final norm applied.

    Padded steps (mask False) are zeroed on the way in and come out as 0; real outputs do not depend on them.
    """

    def __init__(
        self,
        d_model: int,
        n_layer: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        bidirectional: str | None = None,
        rms_norm: bool = True,
        residual_in_fp32: bool = True,
        norm_epsilon: float = 1e-5,
        rescale_prenorm_residual: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        cfg = BackboneConfig(
            d_model=d_model, n_layer=n_layer, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
            bidirectional=bidirectional, rms_norm=rms_norm, residual_in_fp32=residual_in_fp32,
            norm_epsilon=norm_epsilon, rescale_prenorm_residual=rescale_prenorm_residual, dt_min=dt_min,
            dt_max=dt_max, dt_init_floor=dt_init_floor, conv_bias=conv_bias, bias=bias,
        )
        self.config = cfg
        self.d_model = d_model
        self.num_features = d_model
        self.residual_in_fp32 = residual_in_fp32
        self.grad_checkpointing = False
        factory = {"device": device, "dtype": dtype}
        norm_cls = RMSNorm if rms_norm else LayerNorm
        self.layers = nn.ModuleList(
            Block(
                Mamba(d_model, layer_idx=i, **cfg.mixer_kwargs(), **factory),
                norm_cls(d_model, eps=norm_epsilon, **factory),
                residual_in_fp32=residual_in_fp32,
            )
            for i in range(n_layer)
        )
        self.norm_f = norm_cls(d_model, eps=norm_epsilon, **factory)
        self.apply(partial(_init_weights, n_layer=n_layer, rescale_prenorm_residual=rescale_prenorm_residual))

    @classmethod
    def from_config(
        cls, config: BackboneConfig | dict, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> MambaBackbone:
        fields = config.to_dict() if isinstance(config, BackboneConfig) else dict(config)
        return cls(**fields, device=device, dtype=dtype)

    @property
    def causal(self) -> bool:
        return self.config.bidirectional is None

    # ---- forward ----

    def _run_block(
        self,
        block: Block,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        mask: torch.Tensor | None,
        cache: object | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.grad_checkpointing and cache is None and torch.is_grad_enabled():
            return checkpoint(block, hidden, residual, mask, None, use_reentrant=False)
        return block(hidden, residual, mask, cache)

    def _start(
        self, x: torch.Tensor, mask: torch.Tensor | None, cache: InferenceCache | None
    ) -> torch.Tensor:
        check_sequence_input(x, mask, self.d_model)
        if cache is not None:
            self._check_cache(cache, x.shape[0])
        return x if mask is None else torch.where(mask[..., None], x, 0.0)  # `where`: even nan padding stays out

    def _finish(
        self, hidden: torch.Tensor, residual: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        out = self.norm_f(hidden, residual=residual, prenorm=False)
        return out if mask is None else torch.where(mask[..., None], out, 0.0)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: InferenceCache | None = None
    ) -> torch.Tensor:
        """x: (B, L, d_model); mask: bool (B, L), True = real token. Returns normed hidden states (B, L, d_model).

        With a cache (causal backbones), this is the prefill: each layer's state after each sequence's last real
        token is written into it, and `step` continues from there.
        """
        hidden, residual = self._start(x, mask, cache), None
        for i, block in enumerate(self.layers):
            layer_cache = None if cache is None else cache.layers[i]
            hidden, residual = self._run_block(block, hidden, residual, mask, layer_cache)
        if cache is not None:
            cache.seqlen_offset = x.shape[1]
        return self._finish(hidden, residual, mask)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm-style features: the residual stream (B, L, d_model) after each layer in `indices` (None = all,
        int k = last k, list = those), passed through the final norm when norm=True. Returns (final hidden,
        intermediates), or only the list when intermediates_only. stop_early skips layers after the last one taken
        (the final hidden is then the normed stream at that layer)."""
        take, last = _take_indices(len(self.layers), indices)
        blocks = self.layers[: last + 1] if stop_early else self.layers
        hidden, residual = self._start(x, mask, None), None
        intermediates = []
        for i, block in enumerate(blocks):
            hidden, residual = self._run_block(block, hidden, residual, mask, None)
            if i in take:
                if norm:
                    intermediates.append(self._finish(hidden, residual, mask))
                else:
                    intermediates.append((hidden + residual).to(hidden.dtype))
        if intermediates_only:
            return intermediates
        return self._finish(hidden, residual, mask), intermediates

    # ---- decoding ----

    def allocate_inference_cache(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> InferenceCache:
        """Zero decoding states for `batch_size` sequences (causal backbones only)."""
        layers = [block.mixer.allocate_inference_cache(batch_size, dtype=dtype, device=device) for block in self.layers]
        return InferenceCache(layers=layers)

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """One token per sequence: x_t (B, d_model) -> normed hidden (B, d_model); the cache advances in place."""
        if not self.causal:
            raise RuntimeError(
                f"step() needs a causal backbone, but this one is bidirectional={self.config.bidirectional!r}: its "
                "outputs depend on later tokens; run forward() on whole sequences"
            )
        self._check_cache(cache)
        check_step_input(x_t, self.d_model, cache.batch_size)
        hidden, residual = x_t, None
        for block, layer_cache in zip(self.layers, cache.layers, strict=True):
            hidden, residual = block.step(hidden, residual, layer_cache)
        cache.seqlen_offset += 1
        return self.norm_f(hidden, residual=residual, prenorm=False)

    def _check_cache(self, cache: object, batch: int | None = None) -> None:
        if not self.causal:
            raise RuntimeError(
                f"a bidirectional={self.config.bidirectional!r} backbone cannot fill or use an inference cache; "
                "call forward(x, mask) without one"
            )
        if not isinstance(cache, InferenceCache):
            raise TypeError(
                f"cache must be an InferenceCache (see allocate_inference_cache), got {type(cache).__name__}"
            )
        if len(cache.layers) != len(self.layers):
            raise ValueError(f"cache must hold {len(self.layers)} layer states, got {len(cache.layers)}")
        if batch is not None and batch != cache.batch_size:
            raise ValueError(f"x has batch size {batch} but the cache was allocated for {cache.batch_size}")

    # ---- training helpers ----

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward instead of storing its activations (torch.utils.checkpoint)."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of parameters to keep out of weight decay: every A_log and D (and their
        reverse twins) and all norm weights and biases."""
        names = set()
        for module_name, module in self.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if getattr(p, "_no_weight_decay", False) or isinstance(module, (RMSNorm, nn.LayerNorm)):
                    names.add(f"{module_name}.{name}" if module_name else name)
        return names
