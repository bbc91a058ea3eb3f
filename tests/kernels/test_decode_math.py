"""The split decoding step's math helpers (decode_triton._fast_exp, _silu, _softplus) against torch's functions: with
the PTX approximations on a GPU, with Triton's own functions under the interpreter; and its greedy steps' argmax keys
(decode_split_triton._argmax_keys) against torch.argmax."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from seqbackbone.kernels.decode_split_triton import _argmax_keys
from seqbackbone.kernels.decode_triton import _fast_exp, _silu, _softplus

DEV = "cuda" if torch.cuda.is_available() else "cpu"

# (helper's number in _apply, torch's function, atol, rtol): the approximations' relative error is ~2^-22, and e^x's
# argument is rounded once more (x * log2(e) in fp32), so over |x| <= 30 its error grows to ~3e-6
_CASES = {"exp": (0, torch.exp, 1e-37, 5e-6), "silu": (1, F.silu, 1e-30, 5e-6), "softplus": (2, F.softplus, 1e-6, 5e-6)}


@triton.jit
def _apply(x_ptr, out_ptr, n, WHICH: tl.constexpr, ASM: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(x_ptr + offs, mask=ok, other=0.0)
    if WHICH == 0:
        y = _fast_exp(x, ASM)
    elif WHICH == 1:
        y = _silu(x, ASM)
    else:
        y = _softplus(x, ASM)
    tl.store(out_ptr + offs, y, mask=ok)


def _inputs() -> torch.Tensor:
    """Every range the step meets and the edges: fine steps over [-30, 30], softplus's threshold 20 and past it, and
    arguments whose e^x is below fp32's normal range (flushed to zero on the GPU path)."""
    edges = torch.tensor([0.0, -0.0, 19.999, 20.0, 20.001, 25.0, 80.0, -87.0, -88.0, -100.0, -104.0])
    return torch.cat([torch.linspace(-30.0, 30.0, 6001), edges]).to(DEV)


def _check(name: str, asm: bool) -> None:
    which, ref_fn, atol, rtol = _CASES[name]
    x = _inputs()
    out = torch.full_like(x, float("nan"))  # poisoned: every element must be written
    _apply[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), WHICH=which, ASM=asm, BLOCK=1024)
    ref = ref_fn(x.double()).float()
    if name == "exp" and asm:
        ref = torch.where(ref < 2.0 ** -126, 0.0, ref)  # ex2.approx.ftz flushes results below the normal range
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)


# silu(-100) takes e^100, inf in fp32 (x / inf is the right -0)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")
@pytest.mark.parametrize("name", sorted(_CASES))
def test_helpers_match_torch_without_ptx(name):
    """ASM=False (the interpreter's path, and any GPU run without PTX): Triton's exp2, exp and log."""
    _check(name, asm=False)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(_CASES))
def test_helpers_match_torch_with_ptx(name):
    """ASM=True: ex2.approx.ftz and lg2.approx, as the split kernel runs them on a GPU."""
    _check(name, asm=True)


@triton.jit
def _argmax_rows(lg_ptr, out_ptr, batch, V, ROWS: tl.constexpr, BLOCK_B: tl.constexpr):
    """Each batch row's argmax by decode_split_triton's keys, over the vocabulary in tiles of ROWS (as the head's
    items), the keys' maximum decoded as the kernel decodes it."""
    offs_b = tl.arange(0, BLOCK_B)
    b_ok = offs_b < batch
    best = tl.full([BLOCK_B], -0x7FFFFFFFFFFFFFFF - 1, tl.int64)
    for start in range(0, V, ROWS):
        rows = start + tl.arange(0, ROWS)
        rows_ok = rows < V
        lg = tl.load(lg_ptr + offs_b[:, None] * V + rows[None, :], mask=b_ok[:, None] & rows_ok[None, :], other=0.0)
        best = tl.maximum(best, tl.max(_argmax_keys(lg, rows, rows_ok, b_ok, V), axis=1))
    tl.store(out_ptr + offs_b, V - 1 - (best & 0xFFFFFFFF), mask=b_ok)


def test_argmax_keys_pick_what_torch_argmax_picks():
    """Ties (the first index wins, across tiles too), -0.0 against 0.0, -inf rows, NaN (torch picks the first NaN) and
    random rows: the keys' maximum is torch.argmax's choice."""
    V = 37
    rows = torch.randn(8, V, generator=torch.Generator().manual_seed(0))
    rows[0, [3, 20, 30]] = 9.0  # a tie across tiles
    rows[1] = 0.0
    rows[1, 5] = -0.0
    rows[1, 2] = -0.0  # -0.0 and 0.0 equal: index 0 wins
    rows[2] = float("-inf")  # all -inf: index 0
    rows[3, [7, 11]] = float("nan")
    rows[4, [9, 12]] = float("-nan")
    rows[5] = -1e-30
    rows[5, 33] = 1e-38
    want = rows.argmax(dim=1)
    lg = rows.to(DEV)
    out = torch.full((8,), -1, dtype=torch.int64, device=DEV)
    _argmax_rows[(1,)](lg, out, 8, V, ROWS=16, BLOCK_B=8)
    assert out.cpu().tolist() == want.tolist()
