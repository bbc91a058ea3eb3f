"""Sequential-in-time selective scan kernels in Triton, generated per state count N.

Dimensions: b batch, d dim (channels), n N (states), l L (time), g groups of B/C.

Each thread owns one channel and its N fp32 states, kept as N separate register vectors h0 .. h{N-1} (the source is
generated for each N, since Triton has no register arrays). Time advances in register chunks of TR steps (8 for
16-bit inputs, 4 for fp32: one 16-byte load per thread per tensor): (BLOCK_D, TR) tiles of u, delta, z and of the
group's B_n, C_n rows (the same row for every thread, so loads broadcast) are loaded once, softplus and delta * u are
computed once per element, the tiles are split into TR columns in registers (`tl.split`, no data movement), and each
step costs per state one exp2, one multiply and two FMAs. No shuffles and no shared memory in the inner loop.

One warp of 32 channels is too little work per SM at batch x dim below ~100k, so both directions split time:
the forward into segments (a pass for each segment's own end state from zero, `_seg_combine_kernel` to chain them,
the main pass from each segment's true entering state), the backward into groups (`bwd_local_kernel` for each
group's own adjoint sum, the same chaining kernel run against the scan order, then the main backward per group).
Each costs one extra pass over the inputs and buys 10-30x more warps.
"""

from __future__ import annotations

import functools
import linecache

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _softplus(x):
    return tl.where(x <= 20.0, tl.log2(1.0 + tl.exp2(x * 1.4426950408889634)) * 0.6931471805599453, x)


# 2^f on [-1/2, 1/2]: relative-error minimax polynomial with c0 = 1, the float32 coefficients nudged by an ulp where
# that lowered the error of Horner's rule with FMAs (1.94 ulp at most against the exact 2^f)
EXP2_POLY = (1.0, 0.6931470036506653, 0.2402224987745285, 0.05550733581185341, 0.009671512991189957,
             0.001326472731307149)


@triton.jit
def _exp2_fma(x):
    """2^x on the FMA and integer units, without the MUFU (whose throughput is 1/8 of the FMAs'): x = j + f with
    j = round(x) (adding 1.5 * 2^23 rounds, and leaves j in the low mantissa bits), 2^f by the polynomial, 2^j added to
    its exponent field. For -126 <= x < 128 within 2 ulp; below -126 (where the ftz MUFU gives 0) a value under 2^-126,
    exactly 0 at x <= -127 and -inf; NaN stays NaN."""
    x = tl.maximum(x, -127.0, propagate_nan=tl.PropagateNan.ALL)
    t = x + 12582912.0
    f = x - (t - 12582912.0)
    p = 0.001326472731307149 * f + 0.009671512991189957
    p = p * f + 0.05550733581185341
    p = p * f + 0.2402224987745285
    p = p * f + 0.6931470036506653
    p = p * f + 1.0
    # (t's bits) << 23 is j << 23: its exponent and the 1.5 of the magic number shift out
    e = p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)
    return e.to(tl.float32, bitcast=True)


def _split(lines: list[str], src: str, name: str, levels: int, ind: str) -> dict[int, str]:
    """Split a (BLOCK_D, 2**levels) tile into columns: returns {t: variable holding column t}."""
    lines.append(f"{ind}{name}_r = tl.reshape({src}, [BLOCK_D{', 2' * levels}])")
    cur = {0: f"{name}_r"}
    for bit in range(levels):
        nxt = {}
        for part, var in cur.items():
            a, b = f"{name}_{bit}_{part}", f"{name}_{bit}_{part + (1 << bit)}"
            lines.append(f"{ind}{a}, {b} = tl.split({var})")
            nxt[part], nxt[part + (1 << bit)] = a, b
        cur = nxt
    return cur


def _join(lines: list[str], cols: dict[int, str], name: str, levels: int, ind: str) -> None:
    """Join columns {t: variable} back into a (BLOCK_D, 2**levels) tile named `name`."""
    cur = dict(cols)
    for bit in reversed(range(levels)):
        nxt = {}
        for t, var in sorted(cur.items()):
            if t & (1 << bit):
                continue
            v = f"{name}_j{bit}_{t}"
            lines.append(f"{ind}{v} = tl.join({var}, {cur[t + (1 << bit)]})")
            nxt[t] = v
        cur = nxt
    lines.append(f"{ind}{name} = tl.reshape({cur[0]}, [BLOCK_D, {1 << levels}])")


_FWD_ARGS = (
    "u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, mask_ptr, h0_ptr, out_ptr, hlast_ptr, hsave_ptr, "
    "dim, L, n_chunks, dim_per_group, s_u_b, s_u_d, s_dl_b, s_dl_d, s_z_b, s_z_d, s_B_b, s_B_g, s_B_n, "
    "s_C_b, s_C_g, s_C_n, s_o_b, s_o_d, s_m_b, sdt_ptr, chunks_per_seg, "
    "BLOCK_D: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, "
    "SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_H0: tl.constexpr, "
    "SAVE_H: tl.constexpr, WRITE_LAST: tl.constexpr, SAVE_EVERY: tl.constexpr, LOCAL: tl.constexpr, PTX: tl.constexpr"
)


def _fwd_source(N: int, TR: int, variant: str = "base") -> tuple[str, str]:
    if variant not in BWD_VARIANTS:
        raise ValueError(f"fwd_kernel: variant is {variant!r}; expected one of {BWD_VARIANTS}")
    chain = variant != "base"
    lv = TR.bit_length() - 1
    name = f"_scan_seq_fwd_n{N}_t{TR}_{variant}"
    L_ = []
    w = L_.append
    w(f"def {name}({_FWD_ARGS}):")
    i1, i2, i3 = "    ", "        ", "            "
    w(f"{i1}pid_b = tl.program_id(0).to(tl.int64)")
    w(f"{i1}pid_d = tl.program_id(1)")
    w(f"{i1}offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)")
    w(f"{i1}d_ok = offs_d < dim")
    w(f"{i1}offs_d64 = offs_d.to(tl.int64)")
    w(f"{i1}grp = ((pid_d * BLOCK_D) // dim_per_group).to(tl.int64)")
    w(f"{i1}loc = tl.arange(0, {TR})")
    w(f"{i1}zero_d = tl.zeros([BLOCK_D, {TR}], dtype=tl.int32)")
    # time segments (grid axis 2): each program scans chunks [c_lo, c_lo + n_loc); h0 / the last state are per segment
    w(f"{i1}pid_s = tl.program_id(2)")
    w(f"{i1}n_seg = tl.num_programs(2)")
    w(f"{i1}c_lo = pid_s * chunks_per_seg")
    w(f"{i1}n_loc = tl.minimum(chunks_per_seg, n_chunks - c_lo)")
    w(f"{i1}st_base = ((pid_b * n_seg + pid_s) * dim + offs_d64) * {N}")
    w(f"{i1}dsum = tl.zeros([BLOCK_D], dtype=tl.float32)")
    for n in range(N):
        w(f"{i1}a2_{n} = tl.load(A_ptr + offs_d * {N} + {n}, mask=d_ok, other=0.0) * {LOG2E}")
    w(f"{i1}if HAS_H0 and not LOCAL:")
    for n in range(N):
        w(f"{i2}h{n} = tl.load(h0_ptr + st_base + {n}, mask=d_ok, other=0.0).to(tl.float32)")
    w(f"{i1}else:")
    for n in range(N):
        w(f"{i2}h{n} = tl.zeros([BLOCK_D], dtype=tl.float32)")
    w(f"{i1}if HAS_BIAS:")
    w(f"{i2}bias = tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)")
    w(f"{i1}if HAS_D:")
    w(f"{i2}Dv = tl.load(D_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)")
    w(f"{i1}u_row = u_ptr + pid_b * s_u_b + offs_d64[:, None] * s_u_d")
    w(f"{i1}dl_row = delta_ptr + pid_b * s_dl_b + offs_d64[:, None] * s_dl_d")
    w(f"{i1}z_row = z_ptr + pid_b * s_z_b + offs_d64[:, None] * s_z_d")
    w(f"{i1}o_row = out_ptr + pid_b * s_o_b + offs_d64[:, None] * s_o_d")
    w(f"{i1}B_row = B_ptr + pid_b * s_B_b + grp * s_B_g")
    w(f"{i1}C_row = C_ptr + pid_b * s_C_b + grp * s_C_g")
    w(f"{i1}n_saved = (n_chunks + SAVE_EVERY - 1) // SAVE_EVERY")
    # the next chunk's u, delta, z are loaded one chunk ahead: few warps per SM, so their latency must overlap work
    w(f"{i1}c_first = (c_lo + n_loc - 1) if REVERSE else c_lo")
    w(f"{i1}offs_f = c_first * {TR} + loc")
    w(f"{i1}m_f = d_ok[:, None] & (offs_f < L)[None, :]")
    w(f"{i1}u_nx = tl.load(u_row + offs_f[None, :], mask=m_f, other=0.0)")
    w(f"{i1}dt_nx = tl.load(dl_row + offs_f[None, :], mask=m_f, other=0.0)")
    w(f"{i1}if HAS_Z:")
    w(f"{i2}z_nx = tl.load(z_row + offs_f[None, :], mask=m_f, other=0.0)")
    w(f"{i1}else:")
    w(f"{i2}z_nx = u_nx")
    w(f"{i1}for ci in range(n_loc):")
    w(f"{i2}if REVERSE:")
    w(f"{i3}c = c_lo + n_loc - 1 - ci")
    w(f"{i3}do_save = ((c + 1) % SAVE_EVERY == 0) | (c == n_chunks - 1)")
    w(f"{i2}else:")
    w(f"{i3}c = c_lo + ci")
    w(f"{i3}do_save = c % SAVE_EVERY == 0")
    w(f"{i2}if SAVE_H:")
    w(f"{i3}if do_save:")
    w(f"{i3}    sv = ((pid_b * n_saved + c // SAVE_EVERY) * dim + offs_d64) * {N}")
    for n in range(N):
        w(f"{i3}    tl.store(hsave_ptr + sv + {n}, h{n}, mask=d_ok)")
    w(f"{i2}offs_t = c * {TR} + loc")
    w(f"{i2}u_cur = u_nx")
    w(f"{i2}dt_cur = dt_nx")
    w(f"{i2}z_cur = z_nx")
    w(f"{i2}if REVERSE:")
    w(f"{i3}offs_x = offs_t - {TR}")
    w(f"{i2}else:")
    w(f"{i3}offs_x = offs_t + {TR}")
    w(f"{i2}m_x = d_ok[:, None] & ((offs_x >= 0) & (offs_x < L))[None, :]")
    w(f"{i2}u_nx = tl.load(u_row + offs_x[None, :], mask=m_x, other=0.0)")
    w(f"{i2}dt_nx = tl.load(dl_row + offs_x[None, :], mask=m_x, other=0.0)")
    w(f"{i2}if HAS_Z:")
    w(f"{i3}z_nx = tl.load(z_row + offs_x[None, :], mask=m_x, other=0.0)")
    w(f"{i2}t_ok = offs_t < L")
    w(f"{i2}valid = t_ok")
    w(f"{i2}if HAS_MASK:")
    w(f"{i3}valid = valid & (tl.load(mask_ptr + pid_b * s_m_b + offs_t, mask=t_ok, other=0) != 0)")
    w(f"{i2}m2 = d_ok[:, None] & t_ok[None, :]")
    w(f"{i2}ok2 = d_ok[:, None] & valid[None, :]")
    w(f"{i2}bc_ok = valid[None, :] & (zero_d == 0)")
    w(f"{i2}u = u_cur.to(tl.float32)")
    w(f"{i2}dt = dt_cur.to(tl.float32)")
    w(f"{i2}if HAS_BIAS:")
    w(f"{i3}dt = dt + bias[:, None]")
    w(f"{i2}if SOFTPLUS:")
    w(f"{i3}dt = _softplus(dt)")
    w(f"{i2}dt = tl.where(ok2, dt, 0.0)")
    w(f"{i2}u = tl.where(ok2, u, 0.0)")
    w(f"{i2}du = dt * u")
    dts = _split(L_, "dt", "dtc", lv, i2)
    dus = _split(L_, "du", "duc", lv, i2)
    # B, C rows of the group: the same addresses for every thread (broadcast loads), split into columns
    w(f"{i2}bc_offs = offs_t[None, :] + zero_d")
    Bs, Cs = [], []
    if chain:
        _opaque_strides(w, i2, ("B", "C"))
        w(f"{i2}bp = B_row + bc_offs")
        w(f"{i2}cp = C_row + bc_offs")
    for n in range(N):
        L_.extend(_bc_rows(i2, n, (("B", f"Bt{n}"), ("C", f"Ct{n}")), chain))
        Bs.append(_split(L_, f"Bt{n}", f"Bc{n}", lv, i2))
        Cs.append(_split(L_, f"Ct{n}", f"Cc{n}", lv, i2))

    def steps(order, ind):
        ys = {}
        for t in order:
            for n in range(N):
                w(f"{ind}h{n} = tl.exp2({dts[t]} * a2_{n}) * h{n} + {dus[t]} * {Bs[n][t]}")
                if n == 0:
                    w(f"{ind}y{t} = h{n} * {Cs[n][t]}")
                else:
                    w(f"{ind}y{t} += h{n} * {Cs[n][t]}")
            ys[t] = f"y{t}"
        _join(L_, ys, "y", lv, ind)

    def local_steps(order, ind):
        for t in order:
            for n in range(N):
                w(f"{ind}h{n} = tl.exp2({dts[t]} * a2_{n}) * h{n} + {dus[t]} * {Bs[n][t]}")

    w(f"{i2}if LOCAL:")
    # the segment's own end state from zero and its delta sum (the decay across it is exp(A sum delta))
    w(f"{i3}dsum += tl.sum(dt, axis=1)")
    w(f"{i3}if REVERSE:")
    local_steps(range(TR - 1, -1, -1), i3 + "    ")
    w(f"{i3}else:")
    local_steps(range(TR), i3 + "    ")
    w(f"{i2}else:")
    i2_, i3_ = i2, i3
    i2, i3 = i3, i3 + "    "
    w(f"{i2}if REVERSE:")
    steps(range(TR - 1, -1, -1), i3)
    w(f"{i2}else:")
    steps(range(TR), i3)
    w(f"{i2}if HAS_D:")
    w(f"{i3}y += Dv[:, None] * u")
    w(f"{i2}if HAS_Z:")
    w(f"{i3}zz = tl.where(ok2, z_cur.to(tl.float32), 0.0)")
    w(f"{i3}y = y * zz / (1.0 + tl.exp2(-zz * {LOG2E}))")
    w(f"{i2}y = tl.where(ok2, y, 0.0)")
    w(f"{i2}tl.store(o_row + offs_t[None, :], y.to(out_ptr.dtype.element_ty), mask=m2)")
    i2, i3 = i2_, i3_
    w(f"{i1}if LOCAL:")
    w(f"{i2}tl.store(sdt_ptr + (pid_b * n_seg + pid_s) * dim + offs_d64, dsum, mask=d_ok)")
    w(f"{i1}if WRITE_LAST:")
    for n in range(N):
        w(f"{i2}tl.store(hlast_ptr + st_base + {n}, h{n}, mask=d_ok)")
    return name, "\n".join(L_) + "\n"


def _compile_source(name: str, src: str):
    """Turn generated source into a Triton kernel (registered in linecache so that Triton can read its source)."""
    filename = f"<seqbackbone-generated {name}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    # a module name, which Triton reads when one generated function calls another
    scope = {"__name__": __name__, "tl": tl, "triton": triton, "_softplus": _softplus, "_exp2_fma": _exp2_fma, **_SHFL}
    exec(compile(src, filename, "exec"), scope)
    return triton.jit(scope[name])


@triton.jit
def _seg_combine_kernel(S_ptr, sdt_ptr, A_ptr, h0_ptr, init_ptr, hlast_ptr, dim, n_seg,
                        N: tl.constexpr, N_P2: tl.constexpr, BLOCK_D: tl.constexpr,
                        HAS_H0: tl.constexpr, REVERSE: tl.constexpr):
    """States entering each time segment, from each segment's own end state S (from zero) and its decay
    exp(A sum delta): init[s] = H; H = exp(A sdt[s]) H + S[s], in scan order."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, N_P2)
    d_ok = offs_d < dim
    ok = d_ok[:, None] & (offs_n < N)[None, :]
    dn = offs_d.to(tl.int64)[:, None] * N + offs_n[None, :]
    A2 = tl.load(A_ptr + dn, mask=ok, other=0.0) * 1.4426950408889634
    if HAS_H0:
        H = tl.load(h0_ptr + pid_b * dim * N + dn, mask=ok, other=0.0)
    else:
        H = tl.zeros([BLOCK_D, N_P2], dtype=tl.float32)
    for si in range(n_seg):
        if REVERSE:
            sg = n_seg - 1 - si
        else:
            sg = si
        base = (pid_b * n_seg + sg) * dim * N
        tl.store(init_ptr + base + dn, H, mask=ok)
        sdt = tl.load(sdt_ptr + (pid_b * n_seg + sg) * dim + offs_d, mask=d_ok, other=0.0)
        H = tl.exp2(A2 * sdt[:, None]) * H + tl.load(S_ptr + base + dn, mask=ok, other=0.0)
    tl.store(hlast_ptr + pid_b * dim * N + dn, H, mask=ok)


@functools.cache
def fwd_kernel(N: int, TR: int, variant: str = "base"):
    return _compile_source(*_fwd_source(N, TR, variant))


_BWD_ARGS = (
    "u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, mask_ptr, hsave_ptr, dout_ptr, dlast_ptr, "
    "du_ptr, ddelta_ptr, dz_ptr, dBp_ptr, dCp_ptr, dAp_ptr, dDp_ptr, dbiasp_ptr, dh0_ptr, scratch_ptr, gin_ptr, "
    "dim, L, n_seg, dim_per_group, n_dblocks, segs_per_prog, s_u_b, s_u_d, s_dl_b, s_dl_d, s_z_b, s_z_d, "
    "s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_do_b, s_do_d, s_m_b, "
    "BLOCK_D: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, "
    "SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DLAST: tl.constexpr, "
    "HAS_GIN: tl.constexpr, K: tl.constexpr, USE_SHFL: tl.constexpr, PTX: tl.constexpr"
)


def _bwd_chunk_raw(w, ind: str, TR: int, chunk: str, sfx: str, guard: str = "True", with_u: bool = True) -> None:
    """Emit loads of register chunk `chunk`'s delta, u (with_u), dout, z tiles as stored (names dtr_, u_, do_, z_ +
    sfx; 0 past L or where `guard` is false), for `_bwd_chunk_inputs(raw=sfx)` a register chunk later."""
    w(f"{ind}offs_p = ({chunk}) * {TR} + loc")
    w(f"{ind}m_p = d_ok[:, None] & (offs_p < L)[None, :] & ({guard})")
    w(f"{ind}dtr_{sfx} = tl.load(dl_row + offs_p[None, :], mask=m_p, other=0.0)")
    if with_u:
        w(f"{ind}u_{sfx} = tl.load(u_row + offs_p[None, :], mask=m_p, other=0.0)")
    w(f"{ind}do_{sfx} = tl.load(do_row + offs_p[None, :], mask=m_p, other=0.0)")
    w(f"{ind}if HAS_Z:")
    w(f"{ind}    z_{sfx} = tl.load(z_row + offs_p[None, :], mask=m_p, other=0.0)")
    w(f"{ind}else:")
    w(f"{ind}    z_{sfx} = do_{sfx}")


def _bwd_chunk_inputs(w, ind: str, TR: int, chunk: str, with_u: bool, full: bool, raw: str | None = None) -> None:
    """Emit the inputs of register chunk `chunk` (an expression) for the backward kernels: offs_t and masks, the dt
    tile (bias, softplus; 0 on padded steps), with_u: u and du = dt u, full: dout, the gate's sigmoid, dy (the
    gradient at the scan's output) and dzf (dz / y). raw: the delta, u, dout, z tiles come from `_bwd_chunk_raw`'s
    names with this suffix (loaded earlier) instead of loads here (with_u and full only)."""
    if raw is not None:
        assert full
        ld = {x: f"{x}_{raw}.to(tl.float32)" for x in ("dtr", "u", "do", "z")}
    else:
        ld = {x: f"tl.load({r} + offs_t[None, :], mask=ok2, other=0.0).to(tl.float32)"
              for x, r in (("dtr", "dl_row"), ("u", "u_row"), ("do", "do_row"), ("z", "z_row"))}
    w(f"{ind}offs_t = ({chunk}) * {TR} + loc")
    w(f"{ind}t_ok = offs_t < L")
    w(f"{ind}valid = t_ok")
    w(f"{ind}if HAS_MASK:")
    w(f"{ind}    valid = valid & (tl.load(mask_ptr + pid_b * s_m_b + offs_t, mask=t_ok, other=0) != 0)")
    w(f"{ind}m2 = d_ok[:, None] & t_ok[None, :]")
    w(f"{ind}ok2 = d_ok[:, None] & valid[None, :]")
    w(f"{ind}bc_ok = valid[None, :] & (zero_d == 0)")
    w(f"{ind}bc_offs = offs_t[None, :] + zero_d")
    w(f"{ind}dtr = {ld['dtr']}")
    w(f"{ind}if HAS_BIAS:")
    w(f"{ind}    dtr = dtr + bias[:, None]")
    w(f"{ind}if SOFTPLUS:")
    w(f"{ind}    dt = _softplus(dtr)")
    w(f"{ind}else:")
    w(f"{ind}    dt = dtr")
    w(f"{ind}dt = tl.where(ok2, dt, 0.0)")
    if with_u:
        w(f"{ind}u = {ld['u']}")
        if raw is not None:
            # loaded without the padding mask: padded steps count as u = dout = z = 0, as the masked loads give
            w(f"{ind}if HAS_MASK:")
            w(f"{ind}    u = tl.where(ok2, u, 0.0)")
        w(f"{ind}du = dt * u")
    if full:
        w(f"{ind}dout = {ld['do']}")
        if raw is not None:
            w(f"{ind}if HAS_MASK:")
            w(f"{ind}    dout = tl.where(ok2, dout, 0.0)")
        w(f"{ind}if HAS_Z:")
        w(f"{ind}    zz = {ld['z']}")
        if raw is not None:
            w(f"{ind}    if HAS_MASK:")
            w(f"{ind}        zz = tl.where(ok2, zz, 0.0)")
        w(f"{ind}    sig = 1.0 / (1.0 + tl.exp2(-zz * {LOG2E}))")
        w(f"{ind}    dy = dout * zz * sig")
        w(f"{ind}    dzf = dout * sig * (1.0 + zz * (1.0 - sig))")
        w(f"{ind}else:")
        w(f"{ind}    dy = dout")


def _bwd_source(N: int, TR: int, variant: str = "base") -> tuple[str, str]:
    """Backward over segments of K register chunks (the forward saved the state entering each segment).

    Per segment: phase 1 runs the recurrence forward from the saved state and writes the state entering each register
    chunk to a per-program scratch buffer (each thread reads back only what it wrote); phase 2 walks the register
    chunks against the scan order, recomputes h and a = exp2(delta A log2 e) within the chunk, and runs the adjoint
    g_t = dy_t C_t + a_{t+1} g_{t+1}. a_t h_{t-1} = h_t - b_t gives dA and ddelta. dB and dC are summed over the
    program's channels (a warp reduction) and written as partials per channel block.

    Grid axis 2 splits time into groups of `segs_per_prog` segments, so that enough warps run: each group starts from
    the adjoint entering it from later steps (gin, chained from `bwd_local_kernel`'s per-group sums) and writes its own
    dA / dD / dbias partials. With USE_SHFL (one warp of 32 channels, compiled GPU code only) the 2 x TR sums per state
    and register chunk (dB and dC at each step) are reduced together by a transposing butterfly of warp shuffles:
    9 shuffles for 8 sums instead of 5 per sum.
    """
    if variant not in BWD_VARIANTS:
        raise ValueError(f"bwd_kernel: variant is {variant!r}; expected one of {BWD_VARIANTS}")
    chain = variant != "base"
    # lean: A_n log2 e per state read back from the scratch rows after the chunk states (not 16 registers held), and
    # phase 1 state by state (one B tile live, not 16)
    lean = variant == "lean"
    # fuse / ilp / ilp4 / fusep / ilpp: phase 2 with fewer instructions per (step, state) (`_p2_fused`), see _WIDTH
    fused = variant in _WIDTH
    lv = TR.bit_length() - 1
    name = f"_scan_seq_bwd_n{N}_t{TR}_{variant}"
    L_ = []
    w = L_.append
    i1, i2, i3, i4 = "    ", "        ", "            ", "                "
    w(f"def {name}({_BWD_ARGS}):")
    w(f"{i1}pid_b = tl.program_id(0).to(tl.int64)")
    w(f"{i1}pid_d = tl.program_id(1)")
    w(f"{i1}offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)")
    w(f"{i1}d_ok = offs_d < dim")
    w(f"{i1}offs_d64 = offs_d.to(tl.int64)")
    w(f"{i1}grp = ((pid_d * BLOCK_D) // dim_per_group).to(tl.int64)")
    w(f"{i1}loc = tl.arange(0, {TR})")
    w(f"{i1}zero_d = tl.zeros([BLOCK_D, {TR}], dtype=tl.int32)")
    w(f"{i1}pid_q = tl.program_id(2)")
    w(f"{i1}n_q = tl.num_programs(2)")
    w(f"{i1}q_lo = pid_q * segs_per_prog")
    w(f"{i1}n_loc = tl.minimum(segs_per_prog, n_seg - q_lo)")
    w(f"{i1}st_base = (pid_b * dim + offs_d64) * {N}")
    # per-group partials of dA, dD, dbias and the adjoint entering the group
    w(f"{i1}qd = (pid_b * n_q + pid_q) * dim + offs_d64")
    w(f"{i1}ar_d = tl.arange(0, BLOCK_D)")
    # per-program scratch: the state entering each register chunk
    w(f"{i1}scr = scratch_ptr + ((pid_b * n_dblocks + pid_d) * n_q + pid_q) * ((K + 1) * {N} * BLOCK_D) + ar_d")
    w(f"{i1}part = (pid_b * n_dblocks + pid_d) * {N} * L")
    # the transposing warp reduction: lane l ends with the sum of value l >> SH; lanes with l % 2**SH == 0 store it
    levels = (2 * TR).bit_length() - 1
    w(f"{i1}lane = tl.arange(0, BLOCK_D)")
    w(f"{i1}red_v = lane >> {5 - levels}")
    w(f"{i1}red_store = (lane & {(1 << (5 - levels)) - 1}) == 0")
    w(f"{i1}red_is_b = red_v < {TR}")
    w(f"{i1}red_t = red_v % {TR}")
    for n in range(N):
        w(f"{i1}a2_{n} = tl.load(A_ptr + offs_d * {N} + {n}, mask=d_ok, other=0.0) * {LOG2E}")
        w(f"{i1}dA{n} = tl.zeros([BLOCK_D], dtype=tl.float32)")
        if lean:
            w(f"{i1}tl.store(scr + (K * {N} + {n}) * BLOCK_D, a2_{n})")
    a2 = (lambda n: "a2n") if lean else (lambda n: f"a2_{n}")
    w(f"{i1}if HAS_GIN:")
    for n in range(N):
        w(f"{i2}G{n} = tl.load(gin_ptr + qd * {N} + {n}, mask=d_ok, other=0.0)")
    w(f"{i1}elif HAS_DLAST:")
    for n in range(N):
        w(f"{i2}G{n} = tl.load(dlast_ptr + st_base + {n}, mask=d_ok, other=0.0).to(tl.float32)")
    w(f"{i1}else:")
    for n in range(N):
        w(f"{i2}G{n} = tl.zeros([BLOCK_D], dtype=tl.float32)")
    w(f"{i1}if HAS_BIAS:")
    w(f"{i2}bias = tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)")
    w(f"{i1}if HAS_D:")
    w(f"{i2}Dv = tl.load(D_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)")
    w(f"{i1}dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)")
    w(f"{i1}dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)")
    w(f"{i1}u_row = u_ptr + pid_b * s_u_b + offs_d64[:, None] * s_u_d")
    w(f"{i1}dl_row = delta_ptr + pid_b * s_dl_b + offs_d64[:, None] * s_dl_d")
    w(f"{i1}z_row = z_ptr + pid_b * s_z_b + offs_d64[:, None] * s_z_d")
    w(f"{i1}do_row = dout_ptr + pid_b * s_do_b + offs_d64[:, None] * s_do_d")
    w(f"{i1}g_row = (pid_b * dim + offs_d64)[:, None] * L")
    w(f"{i1}B_row = B_ptr + pid_b * s_B_b + grp * s_B_g")
    w(f"{i1}C_row = C_ptr + pid_b * s_C_b + grp * s_C_g")

    # ---- segments, against the scan order
    w(f"{i1}for si in range(n_loc):")
    w(f"{i2}if REVERSE:")
    w(f"{i3}seg = q_lo + si")
    w(f"{i2}else:")
    w(f"{i3}seg = q_lo + n_loc - 1 - si")
    w(f"{i2}sv = ((pid_b * n_seg + seg) * dim + offs_d64) * {N}")
    for n in range(N):
        w(f"{i2}h{n} = tl.load(hsave_ptr + sv + {n}, mask=d_ok, other=0.0)")
    # phase 1
    w(f"{i2}for kk in range(K):")
    w(f"{i3}if REVERSE:")
    w(f"{i4}k = K - 1 - kk")
    w(f"{i3}else:")
    w(f"{i4}k = kk")
    for n in range(N):
        w(f"{i3}tl.store(scr + (k * {N} + {n}) * BLOCK_D, h{n})")
    _bwd_chunk_inputs(w, i3, TR, "seg * K + k", with_u=True, full=False)
    dts = _split(L_, "dt", "p1dt", lv, i3)
    dus = _split(L_, "du", "p1du", lv, i3)
    Bs = []
    if chain:
        _opaque_strides(w, i3, ("B",))
        w(f"{i3}bp = B_row + bc_offs")
    for n in range(N if not lean else 0):
        L_.extend(_bc_rows(i3, n, (("B", f"Bt{n}"),), chain))
        Bs.append(_split(L_, f"Bt{n}", f"p1B{n}", lv, i3))

    def p1_steps(order, ind):
        if lean:
            for n in range(N):
                w(f"{ind}a2n = tl.load(scr + (K * {N} + {n}) * BLOCK_D)")
                L_.extend(_bc_rows(ind, n, (("B", "Bt"),), chain=True))
                Bc = _split(L_, "Bt", f"p1B{n}", lv, ind)
                for t in order:
                    w(f"{ind}h{n} = tl.exp2({dts[t]} * a2n) * h{n} + {dus[t]} * {Bc[t]}")
            return
        for t in order:
            for n in range(N):
                w(f"{ind}h{n} = tl.exp2({dts[t]} * a2_{n}) * h{n} + {dus[t]} * {Bs[n][t]}")

    w(f"{i3}if REVERSE:")
    p1_steps(range(TR - 1, -1, -1), i4)
    w(f"{i3}else:")
    p1_steps(range(TR), i4)
    w(f"{i2}tl.debug_barrier()")
    # phase 2
    pre = fused and _WIDTH[variant][1]
    if pre:
        # the next register chunk's inputs are loaded a chunk ahead (latency hidden behind a chunk's work)
        w(f"{i2}if REVERSE:")
        w(f"{i3}kn = 0")
        w(f"{i2}else:")
        w(f"{i3}kn = K - 1")
        _bwd_chunk_raw(w, i2, TR, "seg * K + kn", "nx")
    w(f"{i2}for kk in range(K):")
    w(f"{i3}if REVERSE:")
    w(f"{i4}k = kk")
    if pre:
        w(f"{i4}kn = k + 1")
    w(f"{i3}else:")
    w(f"{i4}k = K - 1 - kk")
    if pre:
        w(f"{i4}kn = k - 1")
    if pre:
        for x in ("dtr", "u", "do", "z"):
            w(f"{i3}{x}_c = {x}_nx")
        _bwd_chunk_raw(w, i3, TR, "seg * K + kn", "nx", "kk + 1 < K")
    _bwd_chunk_inputs(w, i3, TR, "seg * K + k", with_u=True, full=True, raw="c" if pre else None)
    dts = _split(L_, "dt", "dtc", lv, i3)
    dus = _split(L_, "du", "duc", lv, i3)
    dys = _split(L_, "dy", "dyc", lv, i3)
    if chain:
        _opaque_strides(w, i3)
        w(f"{i3}bp = B_row + bc_offs")
        w(f"{i3}cp = C_row + bc_offs")
        w(f"{i3}red_t_abs = (seg * K + k) * {TR} + red_t")
        w(f"{i3}red_ptr = tl.where(red_is_b, dBp_ptr, dCp_ptr) + part + red_t_abs")
        w(f"{i3}red_m = red_store & (red_t_abs < L)")

    def p2(order, ind):
        fwd_order = list(order)
        rev_order = fwd_order[::-1]
        ys, accs, dds = {}, {}, {}
        for n in range(N):
            w(f"{ind}hh = tl.load(scr + (k * {N} + {n}) * BLOCK_D)")
            if lean:
                w(f"{ind}a2n = tl.load(scr + (K * {N} + {n}) * BLOCK_D)")
            L_.extend(_bc_rows(ind, n, (("B", "Bt"), ("C", "Ct")), chain))
            Bc = _split(L_, "Bt", f"B{n}", lv, ind)
            Cc = _split(L_, "Ct", f"C{n}", lv, ind)
            for t in fwd_order:
                w(f"{ind}a{t} = tl.exp2({dts[t]} * {a2(n)})")
                w(f"{ind}b{t} = {dus[t]} * {Bc[t]}")
                w(f"{ind}hh = a{t} * hh + b{t}")
                w(f"{ind}hv{t} = hh")
                if n == 0:
                    w(f"{ind}y{t} = hh * {Cc[t]}")
                else:
                    w(f"{ind}y{t} += hh * {Cc[t]}")
                ys[t] = f"y{t}"
            w(f"{ind}g = G{n}")
            dB, dC = {}, {}
            for t in rev_order:
                w(f"{ind}g = g + {dys[t]} * {Cc[t]}")
                w(f"{ind}dBc{t} = g * {dus[t]}")
                w(f"{ind}dCc{t} = {dys[t]} * hv{t}")
                dB[t], dC[t] = f"dBc{t}", f"dCc{t}"
                w(f"{ind}hb = (hv{t} - b{t}) * g")
                if n == 0:
                    w(f"{ind}acc{t} = g * {Bc[t]}")
                    w(f"{ind}dda{t} = hb * {a2(n)}")
                else:
                    w(f"{ind}acc{t} += g * {Bc[t]}")
                    w(f"{ind}dda{t} += hb * {a2(n)}")
                accs[t], dds[t] = f"acc{t}", f"dda{t}"
                w(f"{ind}dA{n} += hb * {dts[t]}")
                w(f"{ind}g = a{t} * g")
            w(f"{ind}G{n} = g")
            w(f"{ind}if USE_SHFL:")
            vals = [dB[t] for t in range(TR)] + [dC[t] for t in range(TR)]
            red = _shfl_reduce(L_, vals, f"r{n}", ind + "    ")
            if chain:
                w(f"{ind}    tl.store(red_ptr, {red}, mask=red_m)")
                w(f"{ind}    red_ptr += sL")
            else:
                w(f"{ind}    red_t_abs = (seg * K + k) * {TR} + red_t")
                w(f"{ind}    red_ptr = tl.where(red_is_b, dBp_ptr, dCp_ptr) + part + {n} * L + red_t_abs")
                w(f"{ind}    tl.store(red_ptr, {red}, mask=red_store & (red_t_abs < L))")
            w(f"{ind}else:")
            _join(L_, dB, "dBt", lv, ind + "    ")
            _join(L_, dC, "dCt", lv, ind + "    ")
            w(f"{ind}    tl.store(dBp_ptr + part + {n} * L + offs_t, tl.sum(dBt, axis=0), mask=t_ok)")
            w(f"{ind}    tl.store(dCp_ptr + part + {n} * L + offs_t, tl.sum(dCt, axis=0), mask=t_ok)")
        _join(L_, ys, "y", lv, ind)
        _join(L_, accs, "acc", lv, ind)
        _join(L_, dds, "dda", lv, ind)

    if fused:
        p2 = functools.partial(_p2_fused, L_, N, TR, lv, dts, dus, dys, width=_WIDTH[variant][0],
                               prefetch=_WIDTH[variant][1])
    w(f"{i3}if REVERSE:")
    p2(range(TR - 1, -1, -1), i4)
    w(f"{i3}else:")
    p2(range(TR), i4)
    # dda holds sum_n hb A_n log2(e): back to A_n
    w(f"{i3}ddt = acc * u + dda * 0.6931471805599453")
    w(f"{i3}dug = acc * dt")
    w(f"{i3}if HAS_D:")
    w(f"{i4}dug += dy * Dv[:, None]")
    w(f"{i4}dD_acc += tl.sum(dy * u, axis=1)")
    w(f"{i4}y += Dv[:, None] * u")
    w(f"{i3}if SOFTPLUS:")
    w(f"{i4}ddt = ddt / (1.0 + tl.exp2(-dtr * {LOG2E}))")
    w(f"{i3}ddt = tl.where(ok2, ddt, 0.0)")
    w(f"{i3}dug = tl.where(ok2, dug, 0.0)")
    w(f"{i3}if HAS_BIAS:")
    w(f"{i4}dbias_acc += tl.sum(ddt, axis=1)")
    w(f"{i3}tl.store(du_ptr + g_row + offs_t[None, :], dug.to(du_ptr.dtype.element_ty), mask=m2)")
    w(f"{i3}tl.store(ddelta_ptr + g_row + offs_t[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)")
    w(f"{i3}if HAS_Z:")
    w(f"{i4}tl.store(dz_ptr + g_row + offs_t[None, :], (dzf * y).to(dz_ptr.dtype.element_ty), mask=m2)")
    w(f"{i2}tl.debug_barrier()")
    for n in range(N):
        w(f"{i1}tl.store(dAp_ptr + qd * {N} + {n}, dA{n}, mask=d_ok)")
    # with several groups the chain of per-group sums gives the initial state's gradient
    w(f"{i1}if not HAS_GIN:")
    for n in range(N):
        w(f"{i2}tl.store(dh0_ptr + st_base + {n}, G{n}, mask=d_ok)")
    w(f"{i1}if HAS_D:")
    w(f"{i2}tl.store(dDp_ptr + qd, dD_acc, mask=d_ok)")
    w(f"{i1}if HAS_BIAS:")
    w(f"{i2}tl.store(dbiasp_ptr + qd, dbias_acc, mask=d_ok)")
    return name, "\n".join(L_) + "\n"


def _p2_fused(lines: list[str], N: int, TR: int, lv: int, dts: dict, dus: dict, dys: dict, order, ind: str,
              width: int = 1, prefetch: bool = False) -> None:
    """Phase 2 of the main backward (one register chunk, every state), with a_t h_(t-1) g_t taken as
    h_(t-1) (a_t g_t): the product a_t g_t is the adjoint's next value anyway and h_(t-1) the previous recomputed state
    (or the state entering the chunk), so hb costs one multiply and no subtraction, and b_t = du_t B_t is not kept.
    Per (step, state): exp2 (a multiply and MUFU), FMAs h and y, FMA g += dy C, multiplies dB, dC, FMA acc += g B,
    multiplies a g and h_(t-1) (a g), FMAs dda, dA. With `width` > 1 that many states' code is interleaved statement by
    statement (recomputation, adjoint, warp reductions), so that each dependent step of one state's chains has the
    others' independent work beside it. With `prefetch` each group's loads (scratch state, B / C rows) are emitted
    before the previous group's work. Per-state values carry the state's index in their names."""
    fwd_order = list(order)
    rev_order = fwd_order[::-1]
    groups = [list(range(n, min(n + width, N))) for n in range(0, N, width)]
    per_group = []
    for grp in groups:
        per = {}
        for n in grp:
            ld: list[str] = []
            ld.append(f"{ind}hv_{n}_i = tl.load(scr + (k * {N} + {n}) * BLOCK_D)")
            ld.extend(_bc_rows(ind, n, (("B", f"Bt_{n}"), ("C", f"Ct_{n}")), chain=True))
            Bc = _split(ld, f"Bt_{n}", f"B{n}", lv, ind)
            Cc = _split(ld, f"Ct_{n}", f"C{n}", lv, ind)
            op = "=" if n == 0 else "+="
            F: list[str] = []
            prev = f"hv_{n}_i"
            hprev = {}
            for t in fwd_order:
                hprev[t] = prev
                F.append(f"{ind}ea{t}_{n} = tl.exp2({dts[t]} * a2_{n})")
                F.append(f"{ind}hv{t}_{n} = ea{t}_{n} * {prev} + {dus[t]} * {Bc[t]}")
                F.append(f"{ind}y{t} {op} hv{t}_{n} * {Cc[t]}")
                prev = f"hv{t}_{n}"
            R: list[str] = [f"{ind}g_{n} = G{n}"]
            for t in rev_order:
                R.append(f"{ind}g_{n} = g_{n} + {dys[t]} * {Cc[t]}")
                R.append(f"{ind}dBc{t}_{n} = g_{n} * {dus[t]}")
                R.append(f"{ind}dCc{t}_{n} = {dys[t]} * hv{t}_{n}")
                R.append(f"{ind}acc{t} {op} g_{n} * {Bc[t]}")
                R.append(f"{ind}g_{n} = ea{t}_{n} * g_{n}")
                R.append(f"{ind}hb{t}_{n} = {hprev[t]} * g_{n}")
                R.append(f"{ind}dda{t} {op} hb{t}_{n} * a2_{n}")
                R.append(f"{ind}dA{n} += hb{t}_{n} * {dts[t]}")
            R.append(f"{ind}G{n} = g_{n}")
            red: list[str] = []
            vals = [f"dBc{t}_{n}" for t in range(TR)] + [f"dCc{t}_{n}" for t in range(TR)]
            red_v = _shfl_reduce(red, vals, f"r{n}", ind + "    ")
            per[n] = dict(load=ld, F=F, R=R, red=red, red_v=red_v)
        per_group.append((grp, per))
    for gi, (grp, per) in enumerate(per_group):
        # loads in state order (they advance the row pointers); with prefetch, group gi + 1's loads before group gi's
        # work, so that their latency overlaps it
        if gi == 0:
            for n in grp:
                lines.extend(per[n]["load"])
        if prefetch and gi + 1 < len(per_group):
            for n in per_group[gi + 1][0]:
                lines.extend(per_group[gi + 1][1][n]["load"])
        if not prefetch and gi > 0:
            for n in grp:
                lines.extend(per[n]["load"])
        for key in ("F", "R"):
            lines.extend(_interleave([per[n][key] for n in grp]))
        lines.append(f"{ind}if USE_SHFL:")
        lines.extend(_interleave([per[n]["red"] for n in grp]))
        for n in grp:
            lines.append(f"{ind}    tl.store(red_ptr, {per[n]['red_v']}, mask=red_m)")
            lines.append(f"{ind}    red_ptr += sL")
        lines.append(f"{ind}else:")
        for n in grp:
            _join(lines, {t: f"dBc{t}_{n}" for t in range(TR)}, f"dBt{n}", lv, ind + "    ")
            _join(lines, {t: f"dCc{t}_{n}" for t in range(TR)}, f"dCt{n}", lv, ind + "    ")
            lines.append(f"{ind}    tl.store(dBp_ptr + part + {n} * L + offs_t, tl.sum(dBt{n}, axis=0), mask=t_ok)")
            lines.append(f"{ind}    tl.store(dCp_ptr + part + {n} * L + offs_t, tl.sum(dCt{n}, axis=0), mask=t_ok)")
    for name in ("y", "acc", "dda"):
        _join(lines, {t: f"{name}{t}" for t in range(TR)}, name, lv, ind)


# phase 2 of the fused backward shapes: states interleaved, and whether the next group of states' loads come first
_WIDTH = {"fuse": (1, False), "ilp": (2, False), "ilp4": (4, False), "fusep": (1, True), "ilpp": (2, True)}


def _interleave(parts: list[list[str]]) -> list[str]:
    """Lines of several independent code streams, one line of each in turn."""
    out = []
    for i in range(max(len(p) for p in parts)):
        out.extend(p[i] for p in parts if i < len(p))
    return out


def _bc_rows(ind: str, n: int, loads: tuple[tuple[str, str], ...], chain: bool) -> list[str]:
    """Source lines loading state n's row of B and / or C as fp32: `loads` holds (matrix "B" or "C", variable) pairs.
    Under `chain` each row comes from its walking pointer (bp / cp), advanced after all the loads; otherwise from the
    row start plus n times the state stride."""
    lines = []
    for m, var in loads:
        src = f"{m.lower()}p" if chain else f"{m}_row + {n} * s_{m}_n + bc_offs"
        lines.append(f"{ind}{var} = tl.load({src}, mask=bc_ok, other=0.0).to(tl.float32)")
    if chain:
        lines += [f"{ind}{m.lower()}p += s{m}n" for m, _ in loads]
    return lines


def _opaque_strides(w, ind: str, which: tuple[str, ...] = ("B", "C", "L")) -> None:
    """Per register chunk, the row strides of B, C and of the dB / dC partials as values the compiler cannot trace
    to the kernel's arguments (with PTX): otherwise it hoists the 16 states' row pointers out of the time loop,
    3 x 16 64-bit registers held through the whole loop."""
    names = {"B": ("sBn", "s_B_n"), "C": ("sCn", "s_C_n"), "L": ("sL", "L")}
    w(f"{ind}if PTX:")
    # + 16 x (a zero): the strides keep the divisibility that vectorises the loads
    w(f"{ind}    zq = 16 * _opaque_zero(L)")
    for x in which:
        w(f"{ind}    {names[x][0]} = {names[x][1]} + zq")
    w(f"{ind}else:")
    for x in which:
        w(f"{ind}    {names[x][0]} = {names[x][1]}")


def _shfl_reduce(lines: list[str], vals: list[str], name: str, ind: str) -> str:
    """Sum each of len(vals) (a power of two, <= 32) per-lane vectors over the 32 lanes of a warp with a transposing
    butterfly: at each level a lane keeps half of its values and receives the partner's sums for them. Lane l ends
    with the full sum of value l >> (5 - levels). Returns the name of the result vector."""
    cur = list(vals)
    bit = 16
    k = 0
    while len(cur) > 1:
        half = len(cur) // 2
        lines.append(f"{ind}{name}_hi{k} = (lane & {bit}) != 0")
        nxt = []
        for j in range(half):
            lo_v, hi_v = cur[j], cur[j + half]
            lines.append(f"{ind}{name}_s{k}_{j} = tl.where({name}_hi{k}, {lo_v}, {hi_v})")
            lines.append(f"{ind}{name}_k{k}_{j} = tl.where({name}_hi{k}, {hi_v}, {lo_v}) + "
                         f"_shfl_xor_{bit}({name}_s{k}_{j})")
            nxt.append(f"{name}_k{k}_{j}")
        cur = nxt
        bit //= 2
        k += 1
    out = cur[0]
    while bit >= 1:
        lines.append(f"{ind}{name}_a{bit} = {out} + _shfl_xor_{bit}({out})")
        out = f"{name}_a{bit}"
        bit //= 2
    return out


def _shfl_source(mask: int) -> tuple[str, str]:
    # butterfly exchange with lane ^ mask (inline PTX: Triton has no warp-shuffle primitive)
    name = f"_shfl_xor_{mask}"
    src = (
        f"def {name}(x):\n"
        f"    xi = x.to(tl.int32, bitcast=True)\n"
        f"    yi = tl.inline_asm_elementwise('shfl.sync.bfly.b32 $0, $1, {mask}, 0x1f, 0xffffffff;', '=r,r', [xi],\n"
        f"                                   dtype=tl.int32, is_pure=True, pack=1)\n"
        f"    return yi.to(tl.float32, bitcast=True)\n"
    )
    return name, src


_SHFL: dict = {}
for _m in (16, 8, 4, 2, 1):
    _SHFL[f"_shfl_xor_{_m}"] = _compile_source(*_shfl_source(_m))
# an int32 zero that the compiler cannot treat as a constant or move (not pure: it stays where it is written)
_SHFL["_opaque_zero"] = _compile_source("_opaque_zero", (
    "def _opaque_zero(x):\n"
    "    return tl.inline_asm_elementwise('mov.b32 $0, 0;', '=r,r', [x], dtype=tl.int32, is_pure=False, pack=1)\n"
))

# code shapes of the sequential kernels: "base" indexes each state's B / C rows from the kernel's arguments; "chain"
# walks them with a pointer advanced by an opaque stride per state (fewer registers, see `_opaque_strides`); "lean"
# (the main backward; elsewhere as "chain") also keeps A log2 e in memory and runs phase 1 state by state; "fuse"
# (main backward) is "chain" with phase 2's a_t h_(t-1) g_t from products it holds anyway (`_p2_fused`), "ilp" the same
# with two states' statements interleaved, "ilp4" with four; "fusep" / "ilpp" also load the next group of states'
# B / C rows and the next register chunk's inputs ahead (their latency behind work)
BWD_VARIANTS = ("base", "chain", "lean", "fuse", "ilp", "ilp4", "fusep", "ilpp")


@functools.cache
def bwd_kernel(N: int, TR: int, variant: str = "base"):
    return _compile_source(*_bwd_source(N, TR, variant))


_BWD_LOCAL_ARGS = (
    "delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, mask_ptr, dout_ptr, gloc_ptr, sdt_ptr, "
    "dim, L, n_seg, dim_per_group, segs_per_prog, s_dl_b, s_dl_d, s_z_b, s_z_d, s_C_b, s_C_g, s_C_n, "
    "s_do_b, s_do_d, s_m_b, "
    "BLOCK_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, "
    "REVERSE: tl.constexpr, HAS_MASK: tl.constexpr, K: tl.constexpr, PTX: tl.constexpr"
)


def _bwd_local_source(N: int, TR: int, variant: str = "base", sw_exp2: int = 0) -> tuple[str, str]:
    """Each time group's own contribution to the adjoint entering it, from zero at its far end:
    g <- a_t (g + dy_t C_t) over its steps against the scan order, and its delta sum (the decay across the group is
    exp(A sum delta)). Chained by `_seg_combine_kernel`, these give every group of the backward its starting adjoint.
    sw_exp2 of the N states (spread evenly) take exp2 from `_exp2_fma` instead of the MUFU, whose throughput bounds
    this pass (per step and state it is one MUFU against three FMA-unit instructions). The prefetching shapes
    ("fusep", "ilpp") load each register chunk's delta, dout, z one chunk ahead."""
    if variant not in BWD_VARIANTS:
        raise ValueError(f"bwd_local_kernel: variant is {variant!r}; expected one of {BWD_VARIANTS}")
    if not 0 <= sw_exp2 <= N:
        raise ValueError(f"bwd_local_kernel: sw_exp2 is {sw_exp2}; expected 0 to N = {N}")
    sw = {n for n in range(N) if (n * sw_exp2) // N != ((n + 1) * sw_exp2) // N}
    chain = variant != "base"
    lv = TR.bit_length() - 1
    name = f"_scan_seq_bwd_local_n{N}_t{TR}_{variant}" + (f"_sw{sw_exp2}" if sw_exp2 else "")
    L_ = []
    w = L_.append
    i1, i2, i3 = "    ", "        ", "            "
    w(f"def {name}({_BWD_LOCAL_ARGS}):")
    w(f"{i1}pid_b = tl.program_id(0).to(tl.int64)")
    w(f"{i1}pid_d = tl.program_id(1)")
    w(f"{i1}pid_q = tl.program_id(2)")
    w(f"{i1}n_q = tl.num_programs(2)")
    w(f"{i1}offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)")
    w(f"{i1}d_ok = offs_d < dim")
    w(f"{i1}offs_d64 = offs_d.to(tl.int64)")
    w(f"{i1}grp = ((pid_d * BLOCK_D) // dim_per_group).to(tl.int64)")
    w(f"{i1}loc = tl.arange(0, {TR})")
    w(f"{i1}zero_d = tl.zeros([BLOCK_D, {TR}], dtype=tl.int32)")
    w(f"{i1}q_lo = pid_q * segs_per_prog")
    w(f"{i1}n_loc = tl.minimum(segs_per_prog, n_seg - q_lo)")
    w(f"{i1}qd = (pid_b * n_q + pid_q) * dim + offs_d64")
    for n in range(N):
        w(f"{i1}a2_{n} = tl.load(A_ptr + offs_d * {N} + {n}, mask=d_ok, other=0.0) * {LOG2E}")
        w(f"{i1}g{n} = tl.zeros([BLOCK_D], dtype=tl.float32)")
    w(f"{i1}dsum = tl.zeros([BLOCK_D], dtype=tl.float32)")
    w(f"{i1}if HAS_BIAS:")
    w(f"{i2}bias = tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)")
    w(f"{i1}dl_row = delta_ptr + pid_b * s_dl_b + offs_d64[:, None] * s_dl_d")
    w(f"{i1}z_row = z_ptr + pid_b * s_z_b + offs_d64[:, None] * s_z_d")
    w(f"{i1}do_row = dout_ptr + pid_b * s_do_b + offs_d64[:, None] * s_do_d")
    w(f"{i1}C_row = C_ptr + pid_b * s_C_b + grp * s_C_g")
    pre = variant in _WIDTH and _WIDTH[variant][1]

    def raw_loads(ind, chunk, guard):
        # the register chunk's delta, dout, z tiles as stored (no padding mask); not the C rows: carried over the
        # loop, their 16 tiles cost a register move each per chunk (sm_90 offline: 69 moves, 196 registers)
        _bwd_chunk_raw(w, ind, TR, chunk, "nx", guard, with_u=False)

    if pre:
        # prefetch: the next register chunk's inputs are loaded a chunk ahead (latency hidden behind a chunk's work)
        w(f"{i1}if REVERSE:")
        w(f"{i2}rcn = q_lo * K")
        w(f"{i1}else:")
        w(f"{i2}rcn = (q_lo + n_loc) * K - 1")
        raw_loads(i1, "rcn", "True")
    w(f"{i1}for si in range(n_loc * K):")
    w(f"{i2}if REVERSE:")
    w(f"{i3}rc = q_lo * K + si")
    if pre:
        w(f"{i3}rcn = rc + 1")
    w(f"{i2}else:")
    w(f"{i3}rc = (q_lo + n_loc) * K - 1 - si")
    if pre:
        w(f"{i3}rcn = rc - 1")
        for x in ("dtr", "do", "z"):
            w(f"{i2}{x}_c = {x}_nx")
        raw_loads(i2, "rcn", "si + 1 < n_loc * K")
    _bwd_chunk_inputs(w, i2, TR, "rc", with_u=False, full=True, raw="c" if pre else None)
    w(f"{i2}dsum += tl.sum(dt, axis=1)")
    dts = _split(L_, "dt", "dtc", lv, i2)
    dys = _split(L_, "dy", "dyc", lv, i2)
    Cs = []
    if chain:
        _opaque_strides(w, i2, ("C",))
        w(f"{i2}cp = C_row + bc_offs")
    for n in range(N):
        L_.extend(_bc_rows(i2, n, (("C", f"Ct{n}"),), chain))
        Cs.append(_split(L_, f"Ct{n}", f"Cc{n}", lv, i2))

    def steps(order, ind):
        for t in order:
            for n in range(N):
                ex = "_exp2_fma" if n in sw else "tl.exp2"
                w(f"{ind}g{n} = {ex}({dts[t]} * a2_{n}) * (g{n} + {dys[t]} * {Cs[n][t]})")

    w(f"{i2}if REVERSE:")
    steps(range(TR), i3)
    w(f"{i2}else:")
    steps(range(TR - 1, -1, -1), i3)
    for n in range(N):
        w(f"{i1}tl.store(gloc_ptr + qd * {N} + {n}, g{n}, mask=d_ok)")
    w(f"{i1}tl.store(sdt_ptr + qd, dsum, mask=d_ok)")
    return name, "\n".join(L_) + "\n"


@functools.cache
def bwd_local_kernel(N: int, TR: int, variant: str = "base", sw_exp2: int = 0):
    return _compile_source(*_bwd_local_source(N, TR, variant, sw_exp2))
