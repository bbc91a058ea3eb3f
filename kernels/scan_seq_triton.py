"""Sequential-in-time selective scan kernels in Triton, generated per state count N.

Dimensions: b batch, d dim (channels), n N (states), l L (time), g groups of B/C.

Each thread owns one channel and its N fp32 states, kept as N separate register vectors h0 .. h{N-1} (the source is
generated for each N, since Triton has no register arrays). Time advances in register chunks of TR steps (8 for
16-bit inputs, 4 for fp32: one 16-byte load per thread per tensor): (BLOCK_D, TR) tiles of u, delta, z and of the
group's B_n, C_n rows (the same row for every thread, so loads broadcast) are loaded once, softplus and delta * u are
computed once per element, the tiles are split into TR columns in registers (`tl.split`, no data movement), and each
step costs per state one exp2, one multiply and two FMAs. No shuffles and no shared memory in the inner loop.
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
    "s_C_b, s_C_g, s_C_n, s_o_b, s_o_d, s_m_b, "
    "BLOCK_D: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, "
    "SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_H0: tl.constexpr, "
    "SAVE_H: tl.constexpr, WRITE_LAST: tl.constexpr, SAVE_EVERY: tl.constexpr"
)


def _fwd_source(N: int, TR: int) -> tuple[str, str]:
    lv = TR.bit_length() - 1
    name = f"_scan_seq_fwd_n{N}_t{TR}"
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
    w(f"{i1}st_base = (pid_b * dim + offs_d64) * {N}")
    for n in range(N):
        w(f"{i1}a2_{n} = tl.load(A_ptr + offs_d * {N} + {n}, mask=d_ok, other=0.0) * {LOG2E}")
    w(f"{i1}if HAS_H0:")
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
    w(f"{i1}c_first = (n_chunks - 1) if REVERSE else 0")
    w(f"{i1}offs_f = c_first * {TR} + loc")
    w(f"{i1}m_f = d_ok[:, None] & (offs_f < L)[None, :]")
    w(f"{i1}u_nx = tl.load(u_row + offs_f[None, :], mask=m_f, other=0.0)")
    w(f"{i1}dt_nx = tl.load(dl_row + offs_f[None, :], mask=m_f, other=0.0)")
    w(f"{i1}if HAS_Z:")
    w(f"{i2}z_nx = tl.load(z_row + offs_f[None, :], mask=m_f, other=0.0)")
    w(f"{i1}else:")
    w(f"{i2}z_nx = u_nx")
    w(f"{i1}for ci in range(n_chunks):")
    w(f"{i2}if REVERSE:")
    w(f"{i3}c = n_chunks - 1 - ci")
    w(f"{i3}do_save = ((c + 1) % SAVE_EVERY == 0) | (c == n_chunks - 1)")
    w(f"{i2}else:")
    w(f"{i3}c = ci")
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
    for n in range(N):
        w(f"{i2}Bt{n} = tl.load(B_row + {n} * s_B_n + bc_offs, mask=bc_ok, other=0.0).to(tl.float32)")
        Bs.append(_split(L_, f"Bt{n}", f"Bc{n}", lv, i2))
        w(f"{i2}Ct{n} = tl.load(C_row + {n} * s_C_n + bc_offs, mask=bc_ok, other=0.0).to(tl.float32)")
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
    w(f"{i1}if WRITE_LAST:")
    for n in range(N):
        w(f"{i2}tl.store(hlast_ptr + st_base + {n}, h{n}, mask=d_ok)")
    return name, "\n".join(L_) + "\n"


def _compile_source(name: str, src: str):
    """Turn generated source into a Triton kernel (registered in linecache so that Triton can read its source)."""
    filename = f"<seqbackbone-generated {name}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    scope = {"tl": tl, "triton": triton, "_softplus": _softplus}
    exec(compile(src, filename, "exec"), scope)
    return triton.jit(scope[name])


@functools.cache
def fwd_kernel(N: int, TR: int):
    return _compile_source(*_fwd_source(N, TR))
