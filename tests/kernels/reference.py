"""The truth the kernel tests compare against: a float64 selective scan loop written apart from the package.

It imports nothing from seqbackbone, so a shared mistake cannot hide in both. Differentiable by autograd, so its
gradients are the truth too.
"""

from __future__ import annotations

import math

import torch


def scan_loop_fp64(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    reverse=False,
    mask=None,
    initial_state=None,
):
    """Returns (out, last_state), both float64.

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L) or (batch, groups, N, L); D, delta_bias: (dim,);
    mask: bool (batch, L); initial_state: (batch, dim, N). Padded steps take delta = 0, u = 0 and give out = 0.
    """
    f64 = lambda t: None if t is None else t.double()
    u, delta, A, B, C, D, z, delta_bias, initial_state = map(f64, (u, delta, A, B, C, D, z, delta_bias, initial_state))
    batch, dim, length = u.shape
    n_state = A.shape[1]
    if B.dim() == 3:
        B = B[:, None]
    if C.dim() == 3:
        C = C[:, None]
    group_of = torch.arange(dim) // (dim // B.shape[1])  # channel -> its B group
    group_of_c = torch.arange(dim) // (dim // C.shape[1])
    h = torch.zeros(batch, dim, n_state, dtype=torch.float64) if initial_state is None else initial_state
    outs = {}
    order = reversed(range(length)) if reverse else range(length)
    for t in order:
        keep = None if mask is None else mask[:, t][:, None]  # (batch, 1), True = real token
        dt = delta[:, :, t]
        if delta_bias is not None:
            dt = dt + delta_bias
        if delta_softplus:
            # log(1 + e^x), written out (no F.softplus); the split keeps it finite for large x
            dt = torch.clamp(dt, min=0) + torch.log1p(torch.exp(-dt.abs()))
        ut = u[:, :, t]
        if keep is not None:
            dt = torch.where(keep, dt, torch.zeros_like(dt))
            ut = torch.where(keep, ut, torch.zeros_like(ut))
        Bt = B[:, group_of, :, t]  # (batch, dim, N)
        Ct = C[:, group_of_c, :, t]
        if keep is not None:
            keep3 = keep[:, :, None]
            Bt = torch.where(keep3, Bt, torch.zeros_like(Bt))
            Ct = torch.where(keep3, Ct, torch.zeros_like(Ct))
        h = torch.exp(dt[:, :, None] * A[None]) * h + (dt * ut)[:, :, None] * Bt
        y = torch.einsum("bdn,bdn->bd", h, Ct)
        if D is not None:
            y = y + D * ut
        if z is not None:
            zt = z[:, :, t]
            if keep is not None:
                zt = torch.where(keep, zt, torch.zeros_like(zt))
            y = y * zt / (1 + torch.exp(-zt))
        if keep is not None:
            y = torch.where(keep, y, torch.zeros_like(y))
        outs[t] = y
    out = torch.stack([outs[t] for t in range(length)], dim=-1) if length else u.new_zeros(batch, dim, 0)
    return out, h


def random_scan_inputs(
    batch=2,
    dim=4,
    length=7,
    n_state=3,
    groups=None,
    *,
    D=True,
    z=True,
    delta_bias=True,
    mask=False,
    initial_state=False,
    delta_softplus=True,
    dtype=torch.float32,
    seed=None,
    generator=None,
):
    """Fresh random inputs in the ranges a Mamba layer produces: dict of keyword arguments for the scan
    (delta_softplus included).

    A = -exp(A_log) with A_log = log(1..N) + noise. With delta_softplus, delta + delta_bias is spread around
    softplus^-1(0.05); without, delta + delta_bias is positive (0.01 to 0.6), as a step size must be.
    groups=None gives shared (batch, N, L) B/C, an int gives (batch, groups, N, L).
    """
    g = generator or torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    bc = (batch, n_state, length) if groups is None else (batch, groups, n_state, length)
    args = dict(
        u=r(batch, dim, length),
        delta=(
            0.5 * r(batch, dim, length) - 1.0
            if delta_softplus
            else 0.01 + 0.5 * torch.rand(batch, dim, length, generator=g, dtype=torch.float64)
        ),
        A=-torch.exp(torch.log(torch.arange(1, n_state + 1, dtype=torch.float64)) + 0.3 * r(dim, n_state)),
        B=r(*bc),
        C=r(*bc),
    )
    if D:
        args["D"] = r(dim)
    if z:
        args["z"] = r(batch, dim, length)
    if delta_bias:
        args["delta_bias"] = (
            0.3 * r(dim) + math.log(math.expm1(0.05))
            if delta_softplus
            else 0.1 * torch.rand(dim, generator=g, dtype=torch.float64)
        )
    if mask:
        m = torch.rand(batch, length, generator=g) > 0.3
        m[:, 0] = True
        args["mask"] = m
    if initial_state:
        args["initial_state"] = r(batch, dim, n_state)
    args = {k: (v.to(dtype) if v.dtype == torch.float64 else v) for k, v in args.items()}
    args["delta_softplus"] = delta_softplus
    return args
