"""The selective scan in plain PyTorch: `selective_scan_ref` (the readable ground truth) and `selective_scan_chunked`
(the fast path used off the GPU, with its own backward that recomputes states from chunk boundaries).

Dimensions: batch (b), dim = channels (d), L = time (l), N = states (n), groups of B/C (g), dim // groups (k),
steps in a chunk (t).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

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
CHUNK_SIZE = 32


class _Workspace:
    """Buffers of one chunk's size, reused chunk after chunk: fresh multi-megabyte tensors would cost a page fault
    per 4 KiB on first touch. dA, lam, tmp: (t, b, d, n); H: (t + 1, b, d, n)."""

    def __init__(self, steps: int, batch: int, dim: int, n_state: int, dtype: torch.dtype, device, backward: bool):
        new = lambda *shape: torch.empty(shape, dtype=dtype, device=device)
        self.dA = new(steps, batch, dim, n_state)
        self.H = new(steps + 1, batch, dim, n_state)
        self.tmp = new(steps, batch, dim, n_state)
        self.lam = new(steps, batch, dim, n_state) if backward else None
        # per-step views, made once: the time loops index them thousands of times
        self.dA_steps = self.dA.unbind(0)
        self.H_steps = self.H.unbind(0)
        self.lam_steps = self.lam.unbind(0) if backward else None


class _Chunk:
    """One chunk's inputs, time-major and in the compute dtype (recomputed in the backward instead of saved).

    u, dt, raw (delta + delta_bias before softplus), z: (t, b, d); B, C: (t, b, g, n); dA: (t, b, d, n);
    H: (t + 1, b, d, n), dBu until `states` runs; real: (t, b, 1) bool or None.
    """

    def __init__(self, p: _Part, start: int, stop: int, ws: _Workspace) -> None:
        cdt = p.cdt
        steps, batch, dim = stop - start, p.u.shape[0], p.u.shape[1]
        groups, n_state = p.B.shape[1], p.B.shape[2]
        self.u = p.u[:, :, start:stop].permute(2, 0, 1).to(cdt).contiguous()
        raw = p.delta[:, :, start:stop].permute(2, 0, 1).to(cdt).contiguous()
        if p.delta_bias is not None:
            raw = raw + p.delta_bias.to(cdt)
        self.raw = raw
        dt = F.softplus(raw) if p.softplus else raw
        self.B = p.B[..., start:stop].permute(3, 0, 1, 2).to(cdt)
        self.C = p.C[..., start:stop].permute(3, 0, 1, 2).to(cdt)
        self.z = None if p.z is None else p.z[:, :, start:stop].permute(2, 0, 1).to(cdt)
        self.real = None
        if p.mask is not None:
            # `where`, not a product: padding may hold anything (inf, nan) and must not leak into real steps.
            self.real = p.mask[:, start:stop].t()[:, :, None]  # (t, b, 1)
            dt = torch.where(self.real, dt, 0.0)
            self.u = torch.where(self.real, self.u, 0.0)
            self.B = torch.where(self.real[..., None], self.B, 0.0)
            self.C = torch.where(self.real[..., None], self.C, 0.0)
            if self.z is not None:
                self.z = torch.where(self.real, self.z, 0.0)
        self.B = self.B.contiguous()
        self.C = self.C.contiguous()
        self.dt = dt
        self.dA = torch.mul(dt[..., None], p.A, out=ws.dA[:steps]).exp_()  # (t, b, d, n)
        # H: the states around each step, (t + 1, b, d, n): H[i] before step i and H[i + 1] after it (in forward
        # order). It first holds dBu, which the recurrence turns into states in place.
        self.ws = ws
        self.H = ws.H[: steps + 1]
        dBu = self.H[:steps] if p.reverse else self.H[1:]
        torch.mul(
            (dt * self.u).view(steps, batch, groups, dim // groups, 1),
            self.B[:, :, :, None, :],
            out=dBu.view(steps, batch, groups, dim // groups, n_state),
        )

    def states(self, h: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs the recurrence from the state `h` entering the chunk; returns (states after each step, states
        before each step), both (t, b, d, n) views of one buffer."""
        steps, H = self.dA.shape[0], self.H
        Hs, dA = self.ws.H_steps, self.ws.dA_steps  # views of the workspace; this chunk uses the first steps
        if reverse:
            H[steps] = h
            for i in range(steps - 1, -1, -1):
                Hs[i].addcmul_(dA[i], Hs[i + 1])  # h_i = dA_i h_{i+1} + dBu_i
            return H[:steps], H[1:]
        H[0] = h
        for i in range(steps):
            Hs[i + 1].addcmul_(dA[i], Hs[i])  # h_i = dA_i h_{i-1} + dBu_i
        return H[1:], H[:steps]


def _chunks(length: int, size: int, reverse: bool) -> list[tuple[int, int, int]]:
    """(index, start, stop) of each chunk in the order the scan visits them."""
    spans = [(i, s, min(s + size, length)) for i, s in enumerate(range(0, length, size))]
    return spans[::-1] if reverse else spans


def _grouped_dot(hs: torch.Tensor, C: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """sum_n hs[t, b, d, n] C[t, b, g(d), n]: hs (t, b, d, n), C (t, b, g, n) -> (t, b, d); tmp: a buffer of
    hs's size at least."""
    steps, batch, dim, n_state = hs.shape
    groups = C.shape[2]
    shape = (steps, batch, groups, dim // groups, n_state)
    # multiply-and-sum beats a batched (k x n) @ (n x 1) product here
    prod = torch.mul(hs.view(shape), C[:, :, :, None, :], out=tmp[:steps].view(shape))
    return prod.sum(-1).view(steps, batch, dim)


def _group_sum(w: torch.Tensor, hs: torch.Tensor, groups: int) -> torch.Tensor:
    """sum_{d in g} w[t, b, d] hs[t, b, d, n]: w (t, b, d), hs (t, b, d, n) -> (t, b, g, n)."""
    steps, batch, dim, n_state = hs.shape
    k = dim // groups
    out = w.reshape(steps, batch, groups, 1, k) @ hs.reshape(steps, batch, groups, k, n_state)  # (t, b, g, 1, n)
    return out.view(steps, batch, groups, n_state)


@dataclasses.dataclass
class _Part:
    """The inputs of one independent slice of the scan (a range of batch rows or of channels).

    u, delta, z: (b, d, l); A: (d, n) in the compute dtype; B, C: (b, g, n, l); D, delta_bias: (d,); mask (b, l).
    """

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    z: torch.Tensor | None
    delta_bias: torch.Tensor | None
    mask: torch.Tensor | None
    softplus: bool
    reverse: bool
    chunk_size: int
    cdt: torch.dtype


def _scan_forward(p: _Part, h: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Writes the output (b, d, l) into `out`; returns the last state (b, d, n) and the state entering each chunk."""
    batch, dim, length = p.u.shape
    chunks = _chunks(length, p.chunk_size, p.reverse)
    boundaries = h.new_empty((len(chunks), *h.shape))
    D = None if p.D is None else p.D.to(p.cdt)
    ws = _Workspace(min(p.chunk_size, length), batch, dim, h.shape[2], p.cdt, h.device, backward=False)
    for index, start, stop in chunks:
        boundaries[index] = h
        ch = _Chunk(p, start, stop, ws)
        hs, _ = ch.states(h, p.reverse)
        h = (hs[0] if p.reverse else hs[-1]).clone()
        o = _grouped_dot(hs, ch.C, ws.tmp)  # (t, b, d)
        if D is not None:
            o = o + D * ch.u
        if ch.z is not None:
            o = o * F.silu(ch.z)
        if ch.real is not None:
            o = torch.where(ch.real, o, 0.0)
        out[:, :, start:stop] = o.permute(1, 2, 0)
    return h, boundaries


def _scan_backward(
    p: _Part,
    boundaries: torch.Tensor,
    grad_out: torch.Tensor | None,
    grad_last: torch.Tensor | None,
    into: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Gradients (in the compute dtype) of u, delta, A, B, C, D, z, delta_bias and the initial state. Those named
    in `into` are written there (views of the caller's buffers); the others are returned in new tensors."""
    cdt, reverse = p.cdt, p.reverse
    batch, dim, length = p.u.shape
    groups, n_state = p.B.shape[1], p.B.shape[2]
    k = dim // groups
    new = lambda *shape: torch.empty(shape, dtype=cdt, device=p.u.device)
    zeros = lambda *shape: torch.zeros(shape, dtype=cdt, device=p.u.device)
    D = None if p.D is None else p.D.to(cdt)
    shapes = dict(u=(batch, dim, length), delta=(batch, dim, length), A=(dim, n_state))
    shapes["B"] = shapes["C"] = (batch, groups, n_state, length)
    if p.z is not None:
        shapes["z"] = (batch, dim, length)
    if D is not None:
        shapes["D"] = (dim,)
    if p.delta_bias is not None:
        shapes["delta_bias"] = (dim,)
    # A, D and delta_bias accumulate over the chunks
    fresh = lambda name: (zeros if name in ("A", "D", "delta_bias") else new)(*shapes[name])
    g = {name: into[name] if name in into else fresh(name) for name in shapes}
    # carry: gradient reaching the state after the chunk's last step (in scan order) from everything later
    carry = zeros(batch, dim, n_state) if grad_last is None else grad_last.to(cdt)
    if grad_out is None:
        grad_out = torch.zeros_like(p.u)
    ws = _Workspace(min(p.chunk_size, length), batch, dim, n_state, cdt, p.u.device, backward=True)

    for index, start, stop in reversed(_chunks(length, p.chunk_size, reverse)):
        steps = stop - start
        ch = _Chunk(p, start, stop, ws)
        hs, hprev = ch.states(boundaries[index], reverse)
        gy = grad_out[:, :, start:stop].permute(2, 0, 1).to(cdt).contiguous()  # (t, b, d): d loss / d out
        if ch.real is not None:
            gy = torch.where(ch.real, gy, 0.0)
        if ch.z is not None:
            sz = torch.sigmoid(ch.z)
            pre = _grouped_dot(hs, ch.C, ws.tmp)
            if D is not None:
                pre = pre + D * ch.u
            gz = gy * pre * sz * (1 + ch.z * (1 - sz))  # d silu(z) / dz = s (1 + z (1 - s))
            g["z"][:, :, start:stop] = gz.permute(1, 2, 0)
            gy = gy * ch.z * sz  # now d loss / d y
        gu = None
        if D is not None:
            g["D"] += (gy * ch.u).sum((0, 1))
            gu = gy * D
        g["C"][..., start:stop] = _group_sum(gy, hs, groups).permute(1, 2, 3, 0)
        # lam[i]: gradient reaching the state after step i, through y_i, then through the later steps
        lam = ws.lam[:steps]
        torch.mul(
            gy.view(steps, batch, groups, k, 1), ch.C[:, :, :, None, :], out=lam.view(steps, batch, groups, k, -1)
        )
        lams, dAs = ws.lam_steps, ws.dA_steps  # the first `steps` of them are this chunk's
        if reverse:
            lams[0].add_(carry)
            for i in range(1, steps):
                lams[i].addcmul_(dAs[i - 1], lams[i - 1])
            carry = dAs[steps - 1] * lams[steps - 1]
        else:
            lams[steps - 1].add_(carry)
            for i in range(steps - 2, -1, -1):
                lams[i].addcmul_(dAs[i + 1], lams[i + 1])
            carry = dAs[0] * lams[0]
        # q = d loss / d (dt A) = lam * h_prev * dA, built in dA's buffer (no longer needed)
        q = ch.dA.mul_(hprev).mul_(lam)
        tmp = ws.tmp[:steps]
        g["A"] += torch.mul(q, ch.dt[..., None], out=tmp).sum((0, 1))  # einsum would copy q to (d, n, t, b) first
        gdt = torch.mul(q, p.A, out=tmp).sum(-1)
        lamB = _grouped_dot(lam, ch.B, ws.tmp)  # (t, b, d): sum_n lam B
        gdt += ch.u * lamB
        gu = ch.dt * lamB if gu is None else gu + ch.dt * lamB
        gB = _group_sum(ch.dt * ch.u, lam, groups)
        if ch.real is not None:
            gdt = torch.where(ch.real, gdt, 0.0)
            gu = torch.where(ch.real, gu, 0.0)
        if p.softplus:
            gdt = gdt * torch.sigmoid(ch.raw)
        if p.delta_bias is not None:
            g["delta_bias"] += gdt.sum((0, 1))
        g["u"][:, :, start:stop] = gu.permute(1, 2, 0)
        g["delta"][:, :, start:stop] = gdt.permute(1, 2, 0)
        g["B"][..., start:stop] = gB.permute(1, 2, 3, 0)
    if "initial_state" in into:
        into["initial_state"].copy_(carry)
        carry = into["initial_state"]
    g["initial_state"] = carry
    return g


# Scans of at least this many state updates (batch x dim x N x L) are cut into slices that run on worker threads.
PARALLEL_MIN_ELEMENTS = 1 << 20
# Worker threads for such scans; None: torch.get_num_threads(), at most 8 (Python's dispatch of each op is
# serialised by the GIL, so more threads stop paying).
WORKERS: int | None = None
_pool_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_size = 0


def _single_threaded_worker(barrier: threading.Barrier) -> None:
    # Each worker runs its ops on one core: two OpenMP teams per op on a busy 2-core machine wait on each other at
    # every op's barrier, while independent single-threaded slices only meet once per scan.
    torch.get_num_threads()  # a thread's first torch op reads the process-wide count; have that happen first
    torch.set_num_threads(1)
    barrier.wait()


def _forget_pool() -> None:
    # A forked child inherits the pool object but not its threads.
    global _pool, _pool_size
    _pool, _pool_size = None, 0


os.register_at_fork(after_in_child=_forget_pool)


def _workers(count: int) -> concurrent.futures.ThreadPoolExecutor:
    """A pool of `count` threads whose torch ops run single-threaded (the caller's setting is left as it was)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != count:
            if _pool is not None:
                _pool.shutdown(wait=True)
            threads = torch.get_num_threads()
            barrier = threading.Barrier(count + 1)
            _pool = concurrent.futures.ThreadPoolExecutor(count, thread_name_prefix="seqbackbone-scan")
            for _ in range(count):  # one task per thread, held at the barrier until all have started
                _pool.submit(_single_threaded_worker, barrier)
            barrier.wait()
            torch.set_num_threads(threads)  # set_num_threads(1) above also changed the process-wide default
            _pool_size = count
        return _pool


def _split(batch: int, dim: int, groups: int, work: int, on_cpu: bool = True) -> tuple[str, list[slice]]:
    """How to cut the scan into independent slices: along batch rows, else along channels (whole groups of B/C
    when there are several; shared B/C otherwise). Returns ('batch' | 'dim' | 'none', slices)."""
    parts = min(torch.get_num_threads(), 8) if WORKERS is None else WORKERS
    if parts < 2 or work < PARALLEL_MIN_ELEMENTS or not on_cpu:
        return "none", [slice(None)]
    cut = lambda n, parts: [slice(i * n // parts, (i + 1) * n // parts) for i in range(parts)]
    if batch >= parts:
        return "batch", cut(batch, parts)
    units = groups if groups > 1 else dim  # channels go in whole groups of dim // groups
    parts = min(parts, units)
    if parts < 2:
        return "none", [slice(None)]
    step = dim // units
    return "dim", [slice(s.start * step, s.stop * step) for s in cut(units, parts)]


def _part(args: tuple, how: str, sl: slice, flags: tuple) -> _Part:
    """Slice (u, delta, A, B, C, D, z, delta_bias, mask) for one part; A is in the compute dtype."""
    u, delta, A, B, C, D, z, delta_bias, mask = args
    dim, groups = u.shape[1], B.shape[1]
    if how == "batch":
        u, delta, B, C = u[sl], delta[sl], B[sl], C[sl]
        z = None if z is None else z[sl]
        mask = None if mask is None else mask[sl]
    elif how == "dim":
        u, delta, A = u[:, sl], delta[:, sl], A[sl]
        z = None if z is None else z[:, sl]
        D = None if D is None else D[sl]
        delta_bias = None if delta_bias is None else delta_bias[sl]
        if groups > 1:  # the slice holds whole groups
            per = dim // groups
            B, C = B[:, sl.start // per : sl.stop // per], C[:, sl.start // per : sl.stop // per]
    return _Part(u, delta, A, B, C, D, z, delta_bias, mask, *flags)


def _cut(t: torch.Tensor | None, how: str, sl: slice, axis: int = 1) -> torch.Tensor | None:
    """One part's view of a full-size tensor: rows `sl` of dim 0 ('batch') or of dim `axis` ('dim')."""
    if t is None or how == "none":
        return t
    if how == "batch":
        return t[sl]
    return t[(slice(None),) * axis + (sl,)]


def _run(fn, items: list) -> list:
    """fn(*item) for each item, on the worker threads when there are several, without autograd recording."""

    # grad and inference modes are thread-local: carry the caller's inference mode into the workers, so that
    # inference tensors (e.g. a decoding cache made under torch.inference_mode) may be updated there
    inference = torch.is_inference_mode_enabled()

    def call(item):
        with torch.inference_mode(inference), torch.no_grad():
            return fn(*item)

    if len(items) == 1:
        return [call(items[0])]
    pool = _workers(len(items))
    return [f.result() for f in [pool.submit(call, item) for item in items]]


class _ChunkedScan(torch.autograd.Function):
    """Selective scan that keeps only chunk-boundary states; the backward recomputes states chunk by chunk.

    Forward memory beyond inputs and output: one (b, d, n) state per chunk. The time loop is sequential (exact,
    no cumulative products that could underflow) and vectorised over (batch, dim, N). Large scans are cut into
    independent slices (batch rows or channels) that run on worker threads.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, mask, delta_softplus, reverse, chunk_size):
        cdt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
        batch, dim, length = u.shape
        n_state = A.shape[1]
        how, slices = _split(batch, dim, B.shape[1], batch * dim * n_state * length, u.device.type == "cpu")
        flags = (delta_softplus, reverse, chunk_size, cdt)
        args = (u, delta, A.to(cdt), B, C, D, z, delta_bias, mask)
        h = u.new_zeros((batch, dim, n_state), dtype=cdt) if initial_state is None else initial_state.to(cdt)
        out = torch.empty_like(u)
        results = _run(
            _scan_forward, [(_part(args, how, sl, flags), _cut(h, how, sl), _cut(out, how, sl)) for sl in slices]
        )
        last = results[0][0] if len(results) == 1 else torch.cat([r[0] for r in results], 0 if how == "batch" else 1)
        if length == 0:
            last = last.clone()  # never hand an input back as an output
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, mask, *[r[1] for r in results])
        ctx.how, ctx.slices, ctx.flags = how, slices, flags
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_last):
        u, delta, A, B, C, D, z, delta_bias, initial_state, mask, *boundaries = ctx.saved_tensors
        how, slices, flags = ctx.how, ctx.slices, ctx.flags
        cdt, dim = flags[-1], u.shape[1]
        args = (u, delta, A.to(cdt), B, C, D, z, delta_bias, mask)
        # Gradients that the parts hold in disjoint slices go straight into full-size buffers.
        sliced = ("u", "delta", "z", "initial_state")
        sliced += ("B", "C") if how == "batch" or (how == "dim" and B.shape[1] > 1) else ()
        sliced += ("A", "D", "delta_bias") if how == "dim" else ()
        full = {"u": u, "delta": delta, "z": z, "B": B, "C": C, "A": A, "D": D, "delta_bias": delta_bias}
        full["initial_state"] = initial_state
        # (A, D, delta_bias accumulate over chunks, so they start at zero)
        new = lambda k: (torch.zeros if k in ("A", "D", "delta_bias") else torch.empty)(
            full[k].shape, dtype=cdt, device=u.device
        )
        g = {k: new(k) for k in sliced if full[k] is not None}
        if len(slices) == 1:
            g = {}  # a single part allocates its own
        items = []
        for sl, bounds in zip(slices, boundaries, strict=True):
            cut = lambda t, sl=sl, axis=1: _cut(t, how, sl, axis)
            into = {k: cut(v, axis=0 if k in ("A", "D", "delta_bias") else 1) for k, v in g.items()}
            if how == "dim" and "B" in g:  # whole groups of B/C: cut by group, not by channel
                per = dim // B.shape[1]
                groups_sl = slice(sl.start // per, sl.stop // per)
                into["B"], into["C"] = g["B"][:, groups_sl], g["C"][:, groups_sl]
            items.append((_part(args, how, sl, flags), bounds, cut(grad_out), cut(grad_last), into))
        parts = _run(_scan_backward, items)
        if len(parts) == 1:
            g = parts[0]
        else:  # the rest are partial sums over the parts
            shared = [k for k in parts[0] if k not in g and full[k] is not None]
            g.update({k: torch.stack([p[k] for p in parts]).sum(0) for k in shared})
        cast = lambda name, like: None if like is None else g[name].to(like.dtype)
        return (
            cast("u", u),
            cast("delta", delta),
            cast("A", A),
            cast("B", B),
            cast("C", C),
            cast("D", D),
            cast("z", z),
            cast("delta_bias", delta_bias),
            cast("initial_state", initial_state),
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
