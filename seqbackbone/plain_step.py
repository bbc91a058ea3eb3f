"""The decoding step of a plain causal `MambaBackbone` as straight-line PyTorch, for the CPU.

Dimensions: B batch, Dm d_model, Di d_inner, N d_state, W d_conv.

`MambaBackbone.step` goes through the modules, and each public op checks every argument at every token; on a CPU
that bookkeeping costs as much as the arithmetic of a small model. `PlainBackboneStep` looks the layers up once and
calls the PyTorch functions the ops themselves end in, in the same order on the same tensors, so its hidden states and
cache updates are bitwise those of `MambaBackbone.step`. It reads the model's parameters where they live, so weights
trained in place stay current. Anything it cannot reproduce exactly (other norms or layers, subclasses, replaced
projections, module hooks, the Triton path) makes `plain_step_unsupported_reason` say why, and the caller steps
through the modules instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Block, MambaBackbone
from .kernels.conv import _causal_conv1d_update_torch
from .kernels.dispatch import backend
from .kernels.norm import _rms_norm_torch
from .kernels.step import _fused_torch
from .layers.norm import RMSNorm
from .mamba import Mamba

__all__ = ["PlainBackboneStep", "plain_step_unsupported_reason"]


def _has_hooks(module: nn.Module) -> bool:
    """Hooks on any submodule, or hooks registered for every module (nn.modules.module.register_module_*_hook)."""
    from torch.nn.modules import module as module_mod

    global_hooks = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                    "_global_backward_pre_hooks")
    if any(getattr(module_mod, name, None) for name in global_hooks):
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in module.modules()
    )


def plain_step_unsupported_reason(backbone: nn.Module) -> str | None:
    """Why `PlainBackboneStep` cannot stand in for `backbone.step` (None when it can)."""
    if type(backbone) is not MambaBackbone or not backbone.causal:
        return "the backbone must be a causal MambaBackbone (not a subclass)"
    if type(backbone.norm_f) is not RMSNorm:
        return f"the final norm must be RMSNorm, got {type(backbone.norm_f).__name__}"
    for i, block in enumerate(backbone.layers):
        mixer = getattr(block, "mixer", None)
        if type(block) is not Block or type(mixer) is not Mamba or type(block.norm) is not RMSNorm:
            return f"layer {i} is not a plain Block of an RMSNorm and a Mamba layer"
        if mixer.bidirectional is not None:
            return f"layer {i} is bidirectional"
        projections = (mixer.in_proj, mixer.x_proj, mixer.dt_proj, mixer.out_proj)
        if any(type(p) is not nn.Linear for p in projections) or type(mixer.conv1d) is not nn.Conv1d:
            return f"layer {i}'s projections or convolution are not plain nn.Linear / nn.Conv1d modules"
    if _has_hooks(backbone):
        return "a module of the backbone has hooks (only the modules' own step runs them)"
    if backend(backbone.norm_f.weight) != "torch":
        return "the ops take their Triton path here"
    return None


@dataclass(frozen=True)
class _Layer:
    """One block's tensors and sizes, looked up once."""

    norm_weight: torch.Tensor  # (Dm,)
    norm_eps: float
    in_weight: torch.Tensor  # (2 Di, Dm)
    in_bias: torch.Tensor | None
    conv_weight: torch.Tensor  # (Di, W), a view of the (Di, 1, W) parameter
    conv_bias: torch.Tensor | None
    activation: str | None
    x_weight: torch.Tensor  # (R + 2N, Di)
    x_bias: torch.Tensor | None
    splits: tuple[int, int, int]  # R, N, N
    dt_weight: torch.Tensor  # (Di, R)
    dt_bias: torch.Tensor | None
    A_log: torch.Tensor  # (Di, N)
    D: torch.Tensor  # (Di,)
    out_weight: torch.Tensor  # (Dm, Di)
    out_bias: torch.Tensor | None


class PlainBackboneStep:
    """`backbone.step` without the modules: `step(x_t (B, Dm))` -> normed hidden (B, Dm), advancing
    conv_states[l] (B, Di, W) and ssm_states[l] (B, Di, N) in place (the inference cache's own tensors)."""

    def __init__(
        self, backbone: nn.Module, conv_states: list[torch.Tensor], ssm_states: list[torch.Tensor]
    ) -> None:
        reason = plain_step_unsupported_reason(backbone)
        if reason is not None:
            raise ValueError(f"the plain decoding step cannot run this backbone: {reason}")
        n = len(backbone.layers)
        if len(conv_states) != n or len(ssm_states) != n:
            raise ValueError(f"need {n} conv and SSM states, got {len(conv_states)} and {len(ssm_states)}")
        self.residual_in_fp32 = backbone.residual_in_fp32
        self.norm_f_weight, self.norm_f_eps = backbone.norm_f.weight, float(backbone.norm_f.eps)
        self.states = list(zip(conv_states, ssm_states, strict=True))
        self.layers = []
        for block in backbone.layers:
            m = block.mixer
            weight = m.conv1d.weight
            self.layers.append(_Layer(
                norm_weight=block.norm.weight, norm_eps=float(block.norm.eps),
                in_weight=m.in_proj.weight, in_bias=m.in_proj.bias,
                conv_weight=weight[:, 0] if weight.dim() == 3 else weight, conv_bias=m.conv1d.bias,
                activation=m.activation,
                x_weight=m.x_proj.weight, x_bias=m.x_proj.bias, splits=(m.dt_rank, m.d_state, m.d_state),
                dt_weight=m.dt_proj.weight, dt_bias=m.dt_proj.bias, A_log=m.A_log, D=m.D,
                out_weight=m.out_proj.weight, out_bias=m.out_proj.bias,
            ))

    @torch.no_grad()  # as MambaBackbone.step: the cache is overwritten in place
    def __call__(self, x_t: torch.Tensor) -> torch.Tensor:
        hidden, residual = x_t, None
        for layer, (conv_state, ssm_state) in zip(self.layers, self.states, strict=True):
            # Block.step: the fused add + RMSNorm, then Mamba.step
            normed, residual = _rms_norm_torch(
                hidden, layer.norm_weight, layer.norm_eps, residual, True, self.residual_in_fp32
            )
            u, z = F.linear(normed, layer.in_weight, layer.in_bias).chunk(2, dim=-1)  # (B, Di) each
            u = _causal_conv1d_update_torch(u, conv_state, layer.conv_weight, layer.conv_bias, layer.activation)
            dt, B, C = torch.split(F.linear(u, layer.x_weight, layer.x_bias), layer.splits, dim=-1)
            y = _fused_torch(
                ssm_state, u, dt, layer.dt_weight, layer.A_log, B[:, None], C[:, None], layer.D, z, layer.dt_bias,
                True,
            )  # B, C as one group: (B, 1, N)
            hidden = F.linear(y, layer.out_weight, layer.out_bias)
        return _rms_norm_torch(hidden, self.norm_f_weight, self.norm_f_eps, residual, False, False)
