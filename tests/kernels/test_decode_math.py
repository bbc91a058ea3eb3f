"""The split decoding step's math helpers (decode_triton._fast_exp, _silu, _softplus) against torch's functions: with
the PTX approximations on a GPU, with Triton's own functions under the interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
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
