"""The selective scan in plain PyTorch: `selective_scan_ref` (the readable ground truth) and `selective_scan_chunked`
(the fast path used off the GPU, with its own backward that recomputes states from chunk boundaries).

Dimensions: batch (b), dim = channels (d), L = time (l), N = states (n), groups of B/C (g), dim // groups (k),
steps in a chunk (t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .validate import check_scan, compute_dtype


def selective_scan_ref(
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
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t;  out_t = (C_t . h_t + D u_t) * silu(z_t), one step at a time.

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L) or (batch, groups, N, L); D, delta_bias: (dim,);
    mask: bool (batch, L), True = real token (padded steps keep the state and give 0 out); initial_state:
    (batch, dim, N), the state before the first step taken (t = L-1 when reverse).
    Returns out (batch, dim, L) in u's dtype, and the state after the last step taken (batch, dim, N) in fp32
    (fp64 for fp64 inputs) when return_last_state.
    """
    u, delta, A, B, C, D, z, delta_bias, mask, initial_state = check_scan(
        u, delta, A, B, C, D, z, delta_bias, mask, initial_state
    )
    out_dtype = u.dtype
    cdt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]

    u, delta, A, B, C = (t.to(cdt) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if mask is not None:
        # Padded steps: delta = 0 and u = 0, so exp(0 * A) = 1 and the state passes through untouched.
        # `where` (not a product) keeps whatever the padding holds (even inf or nan) out of the result.
        real = mask[:, None, :]  # (b, 1, l)
        delta = torch.where(real, delta, 0.0)
        u = torch.where(real, u, 0.0)
        B = torch.where(real[:, None], B, 0.0)
        C = torch.where(real[:, None], C, 0.0)
    # Channel d reads group d // (dim // groups): repeat each group's B/C over its channels.
    B = B.repeat_interleave(dim // groups, dim=1)  # (b, d, n, l)
    C = C.repeat_interleave(dim // groups, dim=1)  # (b, d, n, l)

    h = u.new_zeros(batch, dim, n_state) if initial_state is None else initial_state.to(cdt)
    ys = [None] * length
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for t in steps:
        dA = torch.exp(delta[:, :, t, None] * A)  # (b, d, n)
        dBu = delta[:, :, t, None] * B[:, :, :, t] * u[:, :, t, None]  # (b, d, n)
        h = dA * h + dBu
        ys[t] = (h * C[:, :, :, t]).sum(-1)  # (b, d)
    y = torch.stack(ys, dim=-1) if length > 0 else u.new_zeros(batch, dim, 0)  # (b, d, l)

    out = y
    if D is not None:
        out = out + D.to(cdt)[:, None] * u
    if z is not None:
        z = z.to(cdt)
        if mask is not None:
            z = torch.where(mask[:, None, :], z, 0.0)
        out = out * F.silu(z)
    if mask is not None:
        out = torch.where(mask[:, None, :], out, 0.0)
    out = out.to(out_dtype)
    return (out, h) if return_last_state else out


def selective_scan_chunked(
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
    """The fast PyTorch scan on validated inputs (B, C as (batch, groups, N, L)); same results as the reference."""
    # Placeholder until the chunked kernel lands: the reference gives the same results.
    return selective_scan_ref(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, mask, initial_state, return_last_state
    )
