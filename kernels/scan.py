"""`selective_scan`, the public op: validates its inputs, then runs Triton on CUDA tensors and the chunked PyTorch
scan elsewhere (`backend(tensor)` decides; `SEQBACKBONE_KERNELS=torch|triton` forces one).

The chunked scan (`scan_torch.selective_scan_chunked`) keeps one state per `scan_torch.CHUNK_SIZE` steps for its
backward, which recomputes the states inside each chunk; large CPU scans are split over single-threaded worker
threads (`scan_torch.WORKERS`, default torch.get_num_threads()). `selective_scan_ref` is the plain loop to check
against."""

from __future__ import annotations

import torch

from .dispatch import backend
from .scan_torch import selective_scan_chunked
from .validate import check_scan


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
    mask: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan (Mamba-1): h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, out_t = (C_t . h_t + D u_t) silu(z_t).

    u, delta, z: (batch, dim, L); A: (dim, N) real; B, C: (batch, N, L) or (batch, groups, N, L) with
    dim % groups == 0 (channel d reads group d // (dim // groups)); D, delta_bias: (dim,).
    delta is softplus(delta + delta_bias) when delta_softplus, else delta + delta_bias.
    mask: bool (batch, L), True = real token; on padded steps the state passes through untouched and out is 0.
    reverse: scan from t = L-1 down to 0. initial_state: (batch, dim, N), the state entering the first step taken.
    Returns out (batch, dim, L) in u's dtype, and with return_last_state also the state after the last step taken
    (batch, dim, N), fp32 (fp64 for fp64 inputs).
    """
    u, delta, A, B, C, D, z, delta_bias, mask, initial_state = check_scan(
        u, delta, A, B, C, D, z, delta_bias, mask, initial_state
    )
    # The Triton scan keeps an fp32 state; fp64 inputs (gradcheck, references) take the PyTorch scan on any device.
    fp64 = any(t is not None and t.dtype == torch.float64 for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
    if backend(u) == "triton" and not fp64:
        from .scan_triton import selective_scan_triton

        return selective_scan_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, mask, initial_state, return_last_state
        )
    return selective_scan_chunked(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, mask, initial_state, return_last_state
    )
