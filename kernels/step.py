"""One decoding step of the selective scan: `selective_state_update` (dispatching) and its PyTorch twin, and the
Mamba layer's form of it, `selective_state_update_fused` (and `_ref`).

Dimensions: batch (b), dim = channels (d), N = states (n), groups of B/C (g), dim // groups (k), R = dt rank (r).

    dt = softplus(dt + dt_bias);  state = exp(dt A) state + dt B x;  out = (C . state + D x) * silu(z)

The fused form takes what the layer has at hand: dt in low rank (dt = dt_low @ dt_weight^T, dt_weight the dt_proj
weight (d, r)) and A_log (A = -exp(A_log)), so on CUDA the projection, the exp and the parameter casts happen inside
the one kernel instead of as kernels of their own every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cast import cast
from .dispatch import backend
from .validate import check_optional, check_tensor, grouped


def _check_step(
    state: object, x: object, dt: object, A: object, B: object, C: object, D: object, z: object, dt_bias: object
) -> tuple[torch.Tensor, ...]:
    state = check_tensor("state", state, shape=(None, None, None))
    batch, dim, n_state = state.shape
    dev = state.device
    x = check_tensor("x", x, shape=(batch, dim), device=dev)
    dt = check_tensor("dt", dt, shape=(batch, dim), device=dev)
    if isinstance(A, torch.Tensor) and A.is_complex():
        raise TypeError(f"A must be real (dim, N); complex A is not supported, got {A.dtype}")
    A = check_tensor("A", A, shape=(dim, n_state), device=dev)
    B = grouped("B", B, batch, dim, None, dev)
    C = grouped("C", C, batch, dim, None, dev)
    for name, t in (("B", B), ("C", C)):
        if t.shape[2] != n_state:
            raise ValueError(
                f"{name} must have N = {n_state} states (state is {tuple(state.shape)}), got shape {tuple(t.shape)}"
            )
    D = check_optional("D", D, shape=(dim,), device=dev)
    z = check_optional("z", z, shape=(batch, dim), device=dev)
    dt_bias = check_optional("dt_bias", dt_bias, shape=(dim,), device=dev)
    return state, x, dt, A, B, C, D, z, dt_bias


def _state_update_torch(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
) -> torch.Tensor:
    """B, C: (batch, groups, N). Arithmetic in the state's precision, at least fp32."""
    cdt = torch.promote_types(state.dtype, torch.float32)
    batch, dim, n_state = state.shape
    groups = B.shape[1]
    dt = cast(dt, cdt)
    if dt_bias is not None:
        dt = dt + cast(dt_bias, cdt)
    if dt_softplus:
        dt = F.softplus(dt)
    xs = cast(x, cdt)
    Bd, Cd = cast(B, cdt), cast(C, cdt)  # (b, g, n)
    if groups > 1:
        Bd = Bd.repeat_interleave(dim // groups, dim=1)  # (b, d, n)
        Cd = Cd.repeat_interleave(dim // groups, dim=1)  # (b, d, n)
    # one group broadcasts over the channels, with no per-step copies
    new_state = torch.exp(dt[..., None] * cast(A, cdt)) * cast(state, cdt) + (dt * xs)[..., None] * Bd
    state.copy_(new_state)
    out = (new_state * Cd).sum(-1)  # (b, d)
    if D is not None:
        out = out + cast(D, cdt) * xs
    if z is not None:
        out = out * F.silu(cast(z, cdt))
    return cast(out, x.dtype)


def selective_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One step of the scan in plain PyTorch. state: (batch, dim, N), fp32 (or fp64), updated in place;
    x, dt, z: (batch, dim); A: (dim, N); B, C: (batch, N) or (batch, groups, N); D, dt_bias: (dim,).
    Returns (batch, dim) in x's dtype."""
    args = _check_step(state, x, dt, A, B, C, D, z, dt_bias)
    return _state_update_torch(*args, dt_softplus)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One decoding step; same contract as `selective_state_update_ref`, Triton on CUDA tensors."""
    state, x, dt, A, B, C, D, z, dt_bias = _check_step(state, x, dt, A, B, C, D, z, dt_bias)
    if backend(state) == "triton":
        from .step_triton import selective_state_update_triton

        return selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return _state_update_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


# --- the layer's form: dt in low rank, A as A_log ---


def _check_fused(
    state: object, x: object, dt_low: object, dt_weight: object, A_log: object, B: object, C: object, D: object,
    z: object, dt_bias: object
) -> tuple[torch.Tensor, ...]:
    state = check_tensor("state", state, shape=(None, None, None))
    batch, dim, n_state = state.shape
    dev = state.device
    x = check_tensor("x", x, shape=(batch, dim), device=dev)
    dt_weight = check_tensor("dt_weight", dt_weight, shape=(dim, None), device=dev)
    dt_low = check_tensor("dt_low", dt_low, shape=(batch, dt_weight.shape[1]), device=dev)
    if isinstance(A_log, torch.Tensor) and A_log.is_complex():
        raise TypeError(f"A_log must be real (dim, N), got {A_log.dtype}")
    A_log = check_tensor("A_log", A_log, shape=(dim, n_state), device=dev)
    # the rest as the plain update checks them (x stands in for dt, checked above in its own form)
    state, x, _, A_log, B, C, D, z, dt_bias = _check_step(state, x, x, A_log, B, C, D, z, dt_bias)
    return state, x, dt_low, dt_weight, A_log, B, C, D, z, dt_bias


def _fused_torch(
    state: torch.Tensor,
    x: torch.Tensor,
    dt_low: torch.Tensor,
    dt_weight: torch.Tensor,
    A_log: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
) -> torch.Tensor:
    dt = F.linear(dt_low, cast(dt_weight, dt_low.dtype))  # (b, d) in the inputs' dtype, as the parallel forward has it
    A = -torch.exp(cast(A_log, torch.promote_types(torch.promote_types(state.dtype, A_log.dtype), torch.float32)))
    return _state_update_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def selective_state_update_fused_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt_low: torch.Tensor,
    dt_weight: torch.Tensor,
    A_log: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """A Mamba layer's SSM step in plain PyTorch: dt = dt_low @ dt_weight^T (in the inputs' dtype), A = -exp(A_log),
    then `selective_state_update_ref`. state: (batch, dim, N), updated in place; x, z: (batch, dim); dt_low:
    (batch, R); dt_weight: (dim, R); A_log: (dim, N); B, C: (batch, N) or (batch, groups, N); D, dt_bias: (dim,).
    Returns (batch, dim) in x's dtype."""
    args = _check_fused(state, x, dt_low, dt_weight, A_log, B, C, D, z, dt_bias)
    return _fused_torch(*args, dt_softplus)


def selective_state_update_fused(
    state: torch.Tensor,
    x: torch.Tensor,
    dt_low: torch.Tensor,
    dt_weight: torch.Tensor,
    A_log: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """Same contract as `selective_state_update_fused_ref`; on CUDA tensors one Triton kernel does the dt projection,
    softplus, exp(A_log), state update, D skip and gate, reading strided slices (of x_proj's and in_proj's outputs)
    where they lie."""
    args = _check_fused(state, x, dt_low, dt_weight, A_log, B, C, D, z, dt_bias)
    if backend(args[0]) == "triton":
        from .step_triton import selective_state_update_fused_triton

        return selective_state_update_fused_triton(*args, dt_softplus)
    return _fused_torch(*args, dt_softplus)
