"""Which implementation an op runs on: Triton on CUDA tensors, PyTorch elsewhere.

`SEQBACKBONE_KERNELS=torch` forces the PyTorch path everywhere; `SEQBACKBONE_KERNELS=triton` forces Triton, which on
CPU tensors needs `TRITON_INTERPRET=1` (the interpreter CI uses to check kernels against their PyTorch twins).
"""

from __future__ import annotations

import functools
import os

import torch

_CHOICES = ("torch", "triton")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def interpreting() -> bool:
    """True when Triton kernels run on the CPU through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def forced_backend() -> str | None:
    value = os.environ.get("SEQBACKBONE_KERNELS", "").strip().lower()
    if not value:
        return None
    if value not in _CHOICES:
        raise ValueError(f"SEQBACKBONE_KERNELS must be one of {_CHOICES}, got {value!r}")
    return value


def backend(tensor: torch.Tensor) -> str:
    """The path ops take for `tensor`: 'triton' or 'torch'."""
    forced = forced_backend()
    if forced == "torch":
        return "torch"
    if forced == "triton":
        if not triton_available():
            raise RuntimeError("SEQBACKBONE_KERNELS=triton but triton cannot be imported")
        if tensor.device.type != "cuda" and not interpreting():
            raise RuntimeError(
                f"SEQBACKBONE_KERNELS=triton on a {tensor.device.type} tensor needs TRITON_INTERPRET=1"
            )
        return "triton"
    if tensor.device.type == "cuda" and triton_available():
        return "triton"
    return "torch"
