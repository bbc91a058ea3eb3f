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


# Steps per chunk of the fast path: per-chunk buffers (steps, batch, dim, N) stay cache-sized at Mamba widths, and
# the forward keeps one state per chunk for the backward.
CHUNK_SIZE = 64


class _Chunk:
    """One chunk's inputs, time-major and in the compute dtype (recomputed in the backward instead of saved).

    u, dt, raw (delta + delta_bias before softplus): (t, b, d); B, C: (t, b, g, n); dA, dBu: (t, b, d, n);
    real: (t, b, 1) bool or None.
    """

    def __init__(self, ctx, start: int, stop: int) -> None:
        u, delta, A, B, C, delta_bias, mask = ctx.inputs
        cdt = ctx.cdt
        steps, batch, dim = stop - start, u.shape[0], u.shape[1]
        groups, n_state = B.shape[1], B.shape[2]
        self.u = u[:, :, start:stop].permute(2, 0, 1).to(cdt).contiguous()
        raw = delta[:, :, start:stop].permute(2, 0, 1).to(cdt).contiguous()
        if delta_bias is not None:
            raw = raw + delta_bias.to(cdt)
        self.raw = raw
        dt = F.softplus(raw) if ctx.delta_softplus else raw
        self.B = B[..., start:stop].permute(3, 0, 1, 2).to(cdt)
        self.C = C[..., start:stop].permute(3, 0, 1, 2).to(cdt)
        self.real = None
        if mask is not None:
            # `where`, not a product: padding may hold anything (inf, nan) and must not leak into real steps.
            self.real = mask[:, start:stop].t()[:, :, None]  # (t, b, 1)
            dt = torch.where(self.real, dt, 0.0)
            self.u = torch.where(self.real, self.u, 0.0)
            self.B = torch.where(self.real[..., None], self.B, 0.0)
            self.C = torch.where(self.real[..., None], self.C, 0.0)
        self.B = self.B.contiguous()
        self.C = self.C.contiguous()
        self.dt = dt
        self.dA = torch.exp(dt[..., None] * ctx.A)  # (t, b, d, n)
        self.dBu = ((dt * self.u).view(steps, batch, groups, dim // groups, 1) * self.B[:, :, :, None, :]).view(
            steps, batch, dim, n_state
        )

    def states(self, h: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs the recurrence from the state `h` entering the chunk; returns (states after each step, states
        before each step), both (t, b, d, n) views of one buffer."""
        steps = self.dA.shape[0]
        H = self.dA.new_empty((steps + 1, *h.shape))  # H[i] before step i, H[i + 1] after (forward order)
        Hs, dA, dBu = H.unbind(0), self.dA.unbind(0), self.dBu.unbind(0)
        if reverse:
            H[steps] = h
            for i in range(steps - 1, -1, -1):
                torch.addcmul(dBu[i], dA[i], Hs[i + 1], out=Hs[i])
            return H[:steps], H[1:]
        H[0] = h
        for i in range(steps):
            torch.addcmul(dBu[i], dA[i], Hs[i], out=Hs[i + 1])
        return H[1:], H[:steps]


def _chunks(length: int, size: int, reverse: bool) -> list[tuple[int, int, int]]:
    """(index, start, stop) of each chunk in the order the scan visits them."""
    spans = [(i, s, min(s + size, length)) for i, s in enumerate(range(0, length, size))]
    return spans[::-1] if reverse else spans


def _grouped_dot(hs: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """sum_n hs[t, b, d, n] C[t, b, g(d), n]: hs (t, b, d, n), C (t, b, g, n) -> (t, b, d)."""
    steps, batch, dim, n_state = hs.shape
    groups = C.shape[2]
    y = hs.reshape(steps, batch, groups, dim // groups, n_state) @ C[..., None]  # (t, b, g, k, 1)
    return y.view(steps, batch, dim)


def _group_sum(w: torch.Tensor, hs: torch.Tensor, groups: int) -> torch.Tensor:
    """sum_{d in g} w[t, b, d] hs[t, b, d, n]: w (t, b, d), hs (t, b, d, n) -> (t, b, g, n)."""
    steps, batch, dim, n_state = hs.shape
    k = dim // groups
    out = w.reshape(steps, batch, groups, 1, k) @ hs.reshape(steps, batch, groups, k, n_state)  # (t, b, g, 1, n)
    return out.view(steps, batch, groups, n_state)


class _ChunkedScan(torch.autograd.Function):
    """Selective scan that keeps only chunk-boundary states; the backward recomputes states chunk by chunk.

    Forward memory beyond inputs and output: one (b, d, n) state per chunk. The time loop is sequential (exact,
    no cumulative products that could underflow) and vectorised over (batch, dim, N).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, mask, delta_softplus, reverse, chunk_size):
        cdt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
        batch, dim, length = u.shape
        n_state = A.shape[1]
        ctx.inputs = (u, delta, A, B, C, delta_bias, mask)
        ctx.cdt, ctx.delta_softplus, ctx.A = cdt, delta_softplus, A.to(cdt)
        h = u.new_zeros((batch, dim, n_state), dtype=cdt) if initial_state is None else initial_state.to(cdt)
        chunks = _chunks(length, chunk_size, reverse)
        boundaries = h.new_empty((len(chunks), batch, dim, n_state))  # state entering each chunk
        out = torch.empty_like(u)
        Dc = None if D is None else D.to(cdt)
        for index, start, stop in chunks:
            boundaries[index] = h
            ch = _Chunk(ctx, start, stop)
            hs, _ = ch.states(h, reverse)
            h = (hs[0] if reverse else hs[-1]).clone()
            o = _grouped_dot(hs, ch.C)  # (t, b, d)
            if Dc is not None:
                o = o + Dc * ch.u
            if z is not None:
                zc = z[:, :, start:stop].permute(2, 0, 1).to(cdt)
                if ch.real is not None:
                    zc = torch.where(ch.real, zc, 0.0)
                o = o * F.silu(zc)
            if ch.real is not None:
                o = torch.where(ch.real, o, 0.0)
            out[:, :, start:stop] = o.permute(1, 2, 0)
        del ctx.A  # rebuilt in the backward; keeps the ctx free of tensors outside save_for_backward
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, mask, boundaries)
        ctx.inputs = None
        ctx.reverse, ctx.chunk_size = reverse, chunk_size
        ctx.set_materialize_grads(False)
        return out, h.clone() if length == 0 else h

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u, delta, A, B, C, D, z, delta_bias, initial_state, mask, boundaries = ctx.saved_tensors
        cdt, reverse = ctx.cdt, ctx.reverse
        ctx.inputs = (u, delta, A, B, C, delta_bias, mask)
        ctx.A = A.to(cdt)
        batch, dim, length = u.shape
        groups, n_state = B.shape[1], B.shape[2]
        k = dim // groups
        Dc = None if D is None else D.to(cdt)

        g_u = torch.empty((batch, dim, length), dtype=cdt, device=u.device)
        g_delta = torch.empty_like(g_u)
        g_z = None if z is None else torch.empty_like(g_u)
        g_B = torch.empty((batch, groups, n_state, length), dtype=cdt, device=u.device)
        g_C = torch.empty_like(g_B)
        g_A = torch.zeros((dim, n_state), dtype=cdt, device=u.device)
        g_D = None if D is None else torch.zeros(dim, dtype=cdt, device=u.device)
        g_bias = None if delta_bias is None else torch.zeros(dim, dtype=cdt, device=u.device)
        # carry: gradient reaching the state after the chunk's last step from everything later in scan order
        if grad_last is None:
            carry = torch.zeros((batch, dim, n_state), dtype=cdt, device=u.device)
        else:
            carry = grad_last.to(cdt)

        if grad_out is None:
            grad_out = torch.zeros_like(u)
        for index, start, stop in reversed(_chunks(length, ctx.chunk_size, reverse)):
            steps = stop - start
            ch = _Chunk(ctx, start, stop)
            hs, hprev = ch.states(boundaries[index], reverse)
            g = grad_out[:, :, start:stop].permute(2, 0, 1).to(cdt)  # (t, b, d)
            if ch.real is not None:
                g = torch.where(ch.real, g, 0.0)
            gy = g
            if z is not None:
                zc = z[:, :, start:stop].permute(2, 0, 1).to(cdt)
                if ch.real is not None:
                    zc = torch.where(ch.real, zc, 0.0)
                sz = torch.sigmoid(zc)
                pre = _grouped_dot(hs, ch.C)
                if Dc is not None:
                    pre = pre + Dc * ch.u
                gz = g * pre * sz * (1 + zc * (1 - sz))  # d silu(z) / dz = s (1 + z (1 - s))
                if ch.real is not None:
                    gz = torch.where(ch.real, gz, 0.0)
                g_z[:, :, start:stop] = gz.permute(1, 2, 0)
                gy = g * zc * sz
            gu = torch.zeros_like(ch.u)
            if Dc is not None:
                g_D += (gy * ch.u).sum((0, 1))
                gu = gy * Dc
            g_C[..., start:stop] = _group_sum(gy, hs, groups).permute(1, 2, 3, 0)
            # lam[i]: gradient reaching the state after step i, first through y, then through later steps
            lam = (gy.view(steps, batch, groups, k, 1) * ch.C[:, :, :, None, :]).view(steps, batch, dim, n_state)
            lams, dAs = lam.unbind(0), ch.dA.unbind(0)
            if reverse:
                lams[0].add_(carry)
                for i in range(1, steps):
                    lams[i].addcmul_(dAs[i - 1], lams[i - 1])
                carry = dAs[-1] * lams[-1]
            else:
                lams[-1].add_(carry)
                for i in range(steps - 2, -1, -1):
                    lams[i].addcmul_(dAs[i + 1], lams[i + 1])
                carry = dAs[0] * lams[0]
            # q = d loss / d (dt A) = lam * h_prev * dA, built in dA's buffer (no longer needed)
            q = ch.dA.mul_(hprev).mul_(lam)
            g_A += torch.einsum("tbdn,tbd->dn", q, ch.dt)
            lamB = _grouped_dot(lam, ch.B)  # (t, b, d): sum_n lam B
            gdt = (q * ctx.A).sum(-1) + ch.u * lamB
            gu = gu + ch.dt * lamB
            gB = _group_sum(ch.dt * ch.u, lam, groups)
            if ch.real is not None:
                gdt = torch.where(ch.real, gdt, 0.0)
                gu = torch.where(ch.real, gu, 0.0)
            if ctx.delta_softplus:
                gdt = gdt * torch.sigmoid(ch.raw)
            if g_bias is not None:
                g_bias += gdt.sum((0, 1))
            g_u[:, :, start:stop] = gu.permute(1, 2, 0)
            g_delta[:, :, start:stop] = gdt.permute(1, 2, 0)
            g_B[..., start:stop] = gB.permute(1, 2, 3, 0)

        ctx.inputs = None
        del ctx.A
        cast = lambda grad, like: None if grad is None or like is None else grad.to(like.dtype)
        return (
            cast(g_u, u),
            cast(g_delta, delta),
            cast(g_A, A),
            cast(g_B, B),
            cast(g_C, C),
            cast(g_D, D),
            cast(g_z, z),
            cast(g_bias, delta_bias),
            cast(carry, initial_state),
            None,
            None,
            None,
            None,
        )


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
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The fast PyTorch scan on validated inputs (B, C as (batch, groups, N, L)); same contract as the reference.

    Memory: besides inputs and output, the forward keeps one (batch, dim, N) state per `chunk_size` steps
    (default `CHUNK_SIZE`).
    """
    chunk_size = CHUNK_SIZE if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of steps, got {chunk_size}")
    out, last = _ChunkedScan.apply(
        u, delta, A, B, C, D, z, delta_bias, initial_state, mask, delta_softplus, reverse, chunk_size
    )
    return (out, last) if return_last_state else out
