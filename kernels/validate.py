"""Input checks shared by the public ops: each failure names the argument, what it got and what it expected."""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape_str(shape: tuple[int | None, ...]) -> str:
    """(2, *, 7): the expected shape, * where any size goes."""
    parts = ["*" if e is None else str(e) for e in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def check_tensor(
    name: str,
    value: object,
    shape: Sequence[int | None] | None = None,
    dtypes: Sequence[torch.dtype] | None = FLOAT_DTYPES,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Checks that `value` is a tensor of the given shape (None = any size), dtype and device; returns it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dtypes is not None and value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(value.dtype).replace('torch.', '')}")
    if shape is not None:
        expected = tuple(shape)
        if value.dim() != len(expected) or any(
            e is not None and e != s for e, s in zip(expected, value.shape, strict=True)
        ):
            raise ValueError(f"{name} must have shape {_shape_str(expected)}, got {tuple(value.shape)}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} must be on device {device} (like the first input), got {value.device}")
    return value


def check_optional(name: str, value: object, **kwargs) -> torch.Tensor | None:
    """`check_tensor` for an argument that may be None."""
    return None if value is None else check_tensor(name, value, **kwargs)


def check_mask(mask: object, batch: int, length: int, device: torch.device) -> torch.Tensor | None:
    """mask: bool (batch, L), True = real token."""
    return check_optional("mask", mask, shape=(batch, length), dtypes=(torch.bool,), device=device)


def grouped(name: str, value: object, batch: int, dim: int, length: int | None, device: torch.device) -> torch.Tensor:
    """B or C of the scan as (batch, groups, N, L) (or (batch, groups, N) when `length` is None).

    Accepts the shared form (batch, N, L) and the grouped form (batch, groups, N, L) with dim % groups == 0.
    """
    tail = () if length is None else (length,)
    check_tensor(name, value, shape=None, device=device)
    assert isinstance(value, torch.Tensor)
    shared_ndim = 2 + len(tail)
    if value.dim() == shared_ndim:
        check_tensor(name, value, shape=(batch, None, *tail))
        return value.unsqueeze(1)
    if value.dim() == shared_ndim + 1:
        check_tensor(name, value, shape=(batch, None, None, *tail))
        groups = value.shape[1]
        if groups == 0 or dim % groups != 0:
            raise ValueError(f"{name} has {groups} groups (shape {tuple(value.shape)}); dim {dim} must be a multiple")
        return value
    tail_s = ", L" if length is not None else ""
    raise ValueError(
        f"{name} must have shape (batch, N{tail_s}) or (batch, groups, N{tail_s}), got {tuple(value.shape)}"
    )


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """fp64 when any input is fp64 (gradcheck), else fp32: the dtype of the state and of the arithmetic."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def check_scan(
    u: object,
    delta: object,
    A: object,
    B: object,
    C: object,
    D: object = None,
    z: object = None,
    delta_bias: object = None,
    mask: object = None,
    initial_state: object = None,
) -> tuple[torch.Tensor, ...]:
    """Validates the selective scan's inputs; returns them with B, C as (batch, groups, N, L).

    u, delta, z: (batch, dim, L); A: (dim, N) real; B, C: (batch, N, L) or (batch, groups, N, L);
    D, delta_bias: (dim,); mask: bool (batch, L); initial_state: (batch, dim, N).
    """
    u = check_tensor("u", u, shape=(None, None, None))
    batch, dim, length = u.shape
    dev = u.device
    delta = check_tensor("delta", delta, shape=(batch, dim, length), device=dev)
    if isinstance(A, torch.Tensor) and A.is_complex():
        raise TypeError(f"A must be real (dim, N); complex A is not supported, got {A.dtype}")
    A = check_tensor("A", A, shape=(dim, None), device=dev)
    n_state = A.shape[1]
    B = grouped("B", B, batch, dim, length, dev)
    C = grouped("C", C, batch, dim, length, dev)
    if B.shape[2] != n_state:
        raise ValueError(f"B must have N = {n_state} states (A is {tuple(A.shape)}), got shape {tuple(B.shape)}")
    if C.shape[2] != n_state:
        raise ValueError(f"C must have N = {n_state} states (A is {tuple(A.shape)}), got shape {tuple(C.shape)}")
    D = check_optional("D", D, shape=(dim,), device=dev)
    z = check_optional("z", z, shape=(batch, dim, length), device=dev)
    delta_bias = check_optional("delta_bias", delta_bias, shape=(dim,), device=dev)
    mask = check_mask(mask, batch, length, dev)
    initial_state = check_optional("initial_state", initial_state, shape=(batch, dim, n_state), device=dev)
    return u, delta, A, B, C, D, z, delta_bias, mask, initial_state
